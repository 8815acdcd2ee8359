package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"sync"

	"github.com/VictoriaMetrics/metrics"

	"github.com/outpost-edge/outpost/internal/broker"
	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/module"
	"github.com/outpost-edge/outpost/internal/queue"
	"github.com/outpost-edge/outpost/internal/uplink"
)

// LaneSinkPrefix names the pipeline sink of an uplink lane: routes send data
// to the cloud with `to: ["uplink:telemetry"]`.
const LaneSinkPrefix = "uplink:"

// lanes is the module that owns the durable queue of every uplink lane. It
// starts before the pipeline and the uplink (both use the queues) and stops
// after them, so nothing is appended to or read from a closed queue, and the
// last appends are fsynced before the process exits.
type lanes struct {
	log *slog.Logger
	set *metrics.Set

	mu     sync.Mutex
	cfg    []uplink.LaneConfig
	queues map[string]*queue.Disk
	sinks  map[string]*laneSink
}

func newLanes(log *slog.Logger, set *metrics.Set) *lanes {
	return &lanes{log: log, set: set, queues: map[string]*queue.Disk{}, sinks: map[string]*laneSink{}}
}

func (l *lanes) Name() string { return "lanes" }

func (l *lanes) Init(_ context.Context, c *[]uplink.LaneConfig) error {
	l.mu.Lock()
	l.cfg = *c
	l.mu.Unlock()
	return nil
}

// Start opens every lane's queue (recovering it after a crash).
func (l *lanes) Start(context.Context) error {
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
			l.sinks[lc.Name] = &laneSink{name: LaneSinkPrefix + lc.Name, q: q}
		}
	}
	return nil
}

// Stop closes the queues; everything appended is already durable per the
// lane's fsync policy, Close flushes the rest.
func (l *lanes) Stop(context.Context) error {
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

func (l *lanes) Health() module.Status {
	l.mu.Lock()
	defer l.mu.Unlock()
	for name, q := range l.queues {
		if err := q.Err(); err != nil {
			return module.Status{State: module.StateFailed, Detail: fmt.Sprintf("lane %s: %v", name, err)}
		}
	}
	return module.Status{State: module.StateReady, Detail: fmt.Sprintf("%d lane(s)", len(l.queues))}
}

// queue returns a lane's queue for the uplink.
func (l *lanes) queue(lc uplink.LaneConfig) (uplink.Queue, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	q, ok := l.queues[lc.Name]
	if !ok {
		return nil, fmt.Errorf("%w %s", uplink.ErrNoQueue, lc.Name)
	}
	return q, nil
}

// sinkMap returns the lane sinks for the pipeline.
func (l *lanes) sinkMap() map[string]message.Sink {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := make(map[string]message.Sink, len(l.sinks))
	for _, s := range l.sinks {
		m[s.name] = s
	}
	return m
}

func (l *lanes) sink(lane string) (*laneSink, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, ok := l.sinks[lane]
	return s, ok
}

// Stats returns every lane's queue statistics.
func (l *lanes) Stats() map[string]queue.Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]queue.Stats, len(l.queues))
	for name, q := range l.queues {
		out[name] = q.Stats()
	}
	return out
}

// laneSink appends messages to a lane's durable queue. Deliver returns only
// once the record is durable per the lane's fsync policy, which is what lets
// the broker PUBACK a QoS 1 publish.
type laneSink struct {
	name string
	mu   sync.RWMutex
	q    *queue.Disk
	pool sync.Pool
}

var _ message.AsyncDurable = (*laneSink)(nil)

func (s *laneSink) set(q *queue.Disk) { s.mu.Lock(); s.q = q; s.mu.Unlock() }

func (s *laneSink) Name() string  { return s.name }
func (s *laneSink) Durable() bool { return true }

func (s *laneSink) Deliver(ctx context.Context, m *message.Message) error {
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
func (s *laneSink) DeliverAsync(m *message.Message, done func(error)) {
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

// downlink republishes cloud commands on the local broker.
type downlink struct{ b *broker.Broker }

func (d downlink) Deliver(_ context.Context, m *message.Message) error {
	return d.b.PublishMessage(m)
}

// laneDirs fills each lane's queue directory default.
func laneDefaults(dataDir string, ls []uplink.LaneConfig) {
	for i := range ls {
		if ls[i].Queue.Dir == "" {
			ls[i].Queue.Dir = filepath.Join(dataDir, "queue", ls[i].Name)
		}
		ls[i].Queue.SetDefaults()
	}
}

// queueStatusHandler serves GET /api/v1/queue: per-lane depth, bytes,
// oldest age, drops by reason and drain progress, for `outpost queue status`.
func (a *Agent) queueStatusHandler(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/queue", func(w http.ResponseWriter, _ *http.Request) {
		out := map[string]any{"lanes": a.lanes.Stats()}
		if a.Uplink != nil {
			out["uplink"] = a.Uplink.Status()
		}
		writeJSON(w, out)
	})
}
