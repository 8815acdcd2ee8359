package uplink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"

	"github.com/VictoriaMetrics/metrics"

	"github.com/outpost-edge/outpost/internal/config"
	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/module"
	"github.com/outpost-edge/outpost/internal/queue"
)

// SinkPrefix names the sink of a lane: routes send data to the cloud with
// `to: ["uplink:telemetry"]`, rules with `DO UPLINK 'telemetry'`.
const SinkPrefix = "uplink:"

// Lanes is the module ("lanes") that owns the durable queue of every lane
// and the sinks that append to them. It starts before the producers (the
// pipeline, the rule engine) and the Uplink that drains the queues, and
// stops after them, so nothing is appended to or read from a closed queue
// and the last appends are fsynced before the process exits.
//
// Its section is Config.Lanes; a lane's Queue settings are read here, the
// rest of LaneConfig by the Uplink.
type Lanes struct {
	log *slog.Logger
	set *metrics.Set

	mu     sync.Mutex
	cfg    []LaneConfig
	queues map[string]*queue.Disk
	sinks  map[string]*LaneSink
}

var _ module.Typed[[]LaneConfig] = (*Lanes)(nil)

// NewLanes returns the lanes module; Init configures it. log and set may
// be nil.
func NewLanes(log *slog.Logger, set *metrics.Set) *Lanes {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if set == nil {
		set = metrics.NewSet()
	}
	return &Lanes{log: log, set: set, queues: map[string]*queue.Disk{}, sinks: map[string]*LaneSink{}}
}

// SetLaneDefaults fills every lane's queue defaults; the queue directory
// defaults to <dataDir>/queue/<lane>.
func SetLaneDefaults(dataDir string, ls []LaneConfig) {
	for i := range ls {
		if ls[i].Queue.Dir == "" {
			ls[i].Queue.Dir = filepath.Join(dataDir, "queue", ls[i].Name)
		}
		ls[i].Queue.SetDefaults()
	}
}

// ValidateLaneQueues checks every lane's queue settings; errors carry the
// path lanes[i].queue.<field>.
func ValidateLaneQueues(ls []LaneConfig) error {
	var errs []error
	for i, l := range ls {
		errs = append(errs, config.Section(fmt.Sprintf("lanes[%d].queue", i), l.Queue.Validate()))
	}
	return errors.Join(errs...)
}

// Name implements module.Typed.
func (l *Lanes) Name() string { return "lanes" }

// Init implements module.Typed.
func (l *Lanes) Init(_ context.Context, c *[]LaneConfig) error {
	l.mu.Lock()
	l.cfg = *c
	l.mu.Unlock()
	return nil
}

// Start opens every lane's queue (recovering it after a crash).
func (l *Lanes) Start(context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, lc := range l.cfg {
		q, err := queue.Open(lc.Queue, queue.Options{Name: lc.Name, Logger: l.log, Metrics: l.set})
		if err != nil {
			for _, o := range l.queues {
				o.Close()
			}
			clear(l.queues)
			return fmt.Errorf("lane %s: %w", lc.Name, err)
		}
		l.queues[lc.Name] = q
		if s, ok := l.sinks[lc.Name]; ok {
			s.set(q)
		} else {
			l.sinks[lc.Name] = &LaneSink{name: SinkPrefix + lc.Name, q: q}
		}
	}
	return nil
}

// Stop closes the queues; everything appended is already durable per the
// lane's fsync policy, Close flushes the rest.
func (l *Lanes) Stop(context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var errs []error
	for name, q := range l.queues {
		if err := q.Close(); err != nil {
			errs = append(errs, fmt.Errorf("lane %s: %w", name, err))
		}
		delete(l.queues, name)
	}
	return errors.Join(errs...)
}

// Health implements module.Typed: failed when a queue has failed.
func (l *Lanes) Health() module.Status {
	l.mu.Lock()
	defer l.mu.Unlock()
	for name, q := range l.queues {
		if err := q.Err(); err != nil {
			return module.Status{State: module.StateFailed, Detail: fmt.Sprintf("lane %s: %v", name, err)}
		}
	}
	return module.Status{State: module.StateReady, Detail: fmt.Sprintf("%d lane(s)", len(l.queues))}
}

// Queue returns a lane's queue, for Options.Queues.
func (l *Lanes) Queue(lc LaneConfig) (Queue, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	q, ok := l.queues[lc.Name]
	if !ok {
		return nil, fmt.Errorf("%w %s", ErrNoQueue, lc.Name)
	}
	return q, nil
}

// Sinks returns every lane's sink by its name (SinkPrefix + lane).
func (l *Lanes) Sinks() map[string]message.Sink {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := make(map[string]message.Sink, len(l.sinks))
	for _, s := range l.sinks {
		m[s.name] = s
	}
	return m
}

// Sink returns the sink of the lane named lane (without SinkPrefix).
func (l *Lanes) Sink(lane string) (*LaneSink, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, ok := l.sinks[lane]
	return s, ok
}

// Stats returns every lane's queue statistics.
func (l *Lanes) Stats() map[string]queue.Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]queue.Stats, len(l.queues))
	for name, q := range l.queues {
		out[name] = q.Stats()
	}
	return out
}

// LaneSink appends messages to a lane's durable queue. It is what decides
// when a device gets its PUBACK: Deliver returns, and DeliverAsync's done
// runs, only once the record is durable per the lane's fsync policy, which
// is what lets the broker acknowledge a QoS 1 publish. A full queue that
// refuses the record (on_full: reject) is message.ErrRejected.
type LaneSink struct {
	name string
	mu   sync.RWMutex
	q    *queue.Disk
	pool sync.Pool
}

var _ message.AsyncDurable = (*LaneSink)(nil)

func (s *LaneSink) set(q *queue.Disk) { s.mu.Lock(); s.q = q; s.mu.Unlock() }

// Name is SinkPrefix + the lane's name.
func (s *LaneSink) Name() string { return s.name }

// Durable implements message.AsyncDurable: a nil Deliver means on disk.
func (s *LaneSink) Durable() bool { return true }

// Deliver appends m and returns once it is durable.
func (s *LaneSink) Deliver(ctx context.Context, m *message.Message) error {
	s.mu.RLock()
	q := s.q
	s.mu.RUnlock()
	bp, _ := s.pool.Get().(*[]byte)
	if bp == nil {
		b := make([]byte, 0, 512)
		bp = &b
	}
	buf := message.AppendEncode((*bp)[:0], m)
	_, err := q.Append(ctx, buf)
	*bp = buf
	s.pool.Put(bp)
	if errors.Is(err, queue.ErrFull) {
		return fmt.Errorf("%s: %w: %w", s.name, message.ErrRejected, err)
	}
	return err
}

// DeliverAsync appends without waiting; done runs on the queue's committer
// once the record is durable per the lane's fsync policy (in append order).
func (s *LaneSink) DeliverAsync(m *message.Message, done func(error)) {
	s.mu.RLock()
	q := s.q
	s.mu.RUnlock()
	bp, _ := s.pool.Get().(*[]byte)
	if bp == nil {
		b := make([]byte, 0, 512)
		bp = &b
	}
	buf := message.AppendEncode((*bp)[:0], m)
	q.AppendAsync(buf, func(_ uint64, err error) {
		if errors.Is(err, queue.ErrFull) {
			err = fmt.Errorf("%s: %w: %w", s.name, message.ErrRejected, err)
		}
		done(err)
	})
	*bp = buf // AppendAsync copied the bytes
	s.pool.Put(bp)
}
