// Package twinsync is the gateway side of device twins (docs/twins.md):
// devices read and update their twin over MQTT topics on the embedded
// broker, in the spirit of AWS IoT shadow topics; the gateway answers from
// its durable local copy (also when the fleet server is unreachable),
// queues reported updates durably and sends them to the server when it can.
//
// Topics (DEVICE is one topic level, 1-128 letters, digits, _ . -):
//
//	$outpost/twin/DEVICE/get                  device -> gateway (payload: {} or {"clientToken":"..."})
//	$outpost/twin/DEVICE/get/accepted         the twin document
//	$outpost/twin/DEVICE/get/rejected         {"code":404,"message":...}
//	$outpost/twin/DEVICE/update               device -> gateway: {"state":{"reported":{...}},"reportedVersion":N,"desiredVersion":M,"clientToken":"..."}
//	$outpost/twin/DEVICE/update/accepted      the applied patch and the new versions
//	$outpost/twin/DEVICE/update/rejected      {"code":400|409|503,"message":...}
//	$outpost/twin/DEVICE/update/delta         desired keys reported does not show yet (after every desired change)
//
// Invariants:
//   - update/accepted is published only after the update is in the durable
//     queue (fsync: always): a crash after it loses nothing;
//   - the local reported version only grows; the server applies an update
//     only if its version is newer than what it has, so resending after a
//     crash or reconnect is harmless;
//   - a queue record is acknowledged (removed) only after the snapshot file
//     holding its effect is durable, so a restart rebuilds the same state:
//     snapshot, then the records still in the queue.
package twinsync

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/outpost-edge/outpost/internal/fleet/twin"
	"github.com/outpost-edge/outpost/internal/queue"
)

// TopicPrefix is the root of the twin topics.
const TopicPrefix = "$outpost/twin/"

// Broker is what the service needs of the embedded broker.
type Broker interface {
	Publish(topic string, payload []byte, retain bool, qos byte) error
	Subscribe(filter string, fn func(topic string, payload []byte)) (cancel func(), err error)
}

// Uplink sends reported updates to the fleet server.
type Uplink interface {
	PostReported(ctx context.Context, ups []twin.Reported) error
}

// Seeder is what an Uplink also implements when the gateway can read its
// twins back from the server (GET /api/v1/agent/twins): a gateway that
// lost its twin state re-seeds from it before accepting updates, so its
// reported versions continue above the server's instead of starting at 0
// (which the server would ignore as replays).
type Seeder interface {
	ListTwins(ctx context.Context) ([]twin.Twin, error)
}

// Options configure a Service.
type Options struct {
	Dir     string // DATA_DIR/fleet/twins: state.json and queue/
	Gateway string // this gateway's id
	Broker  Broker
	Uplink  Uplink // nil: updates wait in the queue
	Logger  *slog.Logger
	Metrics *metrics.Set
	Now     func() time.Time
	// RetryMax caps the back-off between failed sends (default 30s).
	RetryMax time.Duration
}

// state is one device's twin on the gateway.
type state struct {
	Desired         json.RawMessage  `json:"desired"`
	DesiredVersion  int64            `json:"desiredVersion"`
	DesiredMeta     map[string]int64 `json:"desiredMeta,omitempty"`
	Reported        json.RawMessage  `json:"reported"`
	ReportedVersion int64            `json:"reportedVersion"`
	ReportedMeta    map[string]int64 `json:"reportedMeta,omitempty"`
}

type snapshot struct {
	Twins map[string]*state `json:"twins"`
	// Deleted holds, per twin deleted on the server, its reported version
	// at the delete: queued updates up to it are dropped, not sent (they
	// would create the twin again), and a new twin of that device counts
	// on from it.
	Deleted map[string]int64 `json:"deleted,omitempty"`
}

// Service serves the twin topics. Open, then Start; Close at the end.
type Service struct {
	opt Options
	log *slog.Logger
	q   *queue.Disk

	mu      sync.Mutex
	twins   map[string]*state
	deleted map[string]int64 // see snapshot.Deleted
	dirty   bool
	// seeded is false from Open until the twins were read back from the
	// server, when the gateway started without state.json (a lost or new
	// twin directory) and its Uplink is a Seeder; updates get 503 until.
	seeded bool

	saveMu sync.Mutex // one snapshot write at a time

	work   chan request
	cancel context.CancelFunc
	wg     sync.WaitGroup
	unsubs []func()

	accepted, rejected, sent *metrics.Counter
}

type request struct {
	device, op string // op: get | update
	payload    []byte
}

func (s *Service) statePath() string { return filepath.Join(s.opt.Dir, "state.json") }

// Open loads the snapshot and replays the queued updates it does not hold
// yet (what was accepted before a crash).
func Open(opt Options) (*Service, error) {
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.Metrics == nil {
		opt.Metrics = metrics.NewSet()
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.RetryMax <= 0 {
		opt.RetryMax = 30 * time.Second
	}
	if err := os.MkdirAll(opt.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("twinsync: %w", err)
	}
	s := &Service{opt: opt, log: opt.Logger, twins: map[string]*state{}, deleted: map[string]int64{}, seeded: true, work: make(chan request, 1024),
		accepted: opt.Metrics.GetOrCreateCounter(`outpost_twin_updates_total{result="accepted"}`),
		rejected: opt.Metrics.GetOrCreateCounter(`outpost_twin_updates_total{result="rejected"}`),
		sent:     opt.Metrics.GetOrCreateCounter(`outpost_twin_reported_sent_total`)}
	b, err := os.ReadFile(s.statePath())
	switch {
	case errors.Is(err, os.ErrNotExist):
		if _, ok := opt.Uplink.(Seeder); ok {
			s.seeded = false
		}
	case err != nil:
		return nil, fmt.Errorf("twinsync: %w", err)
	default:
		var snap snapshot
		if err := json.Unmarshal(b, &snap); err != nil {
			return nil, fmt.Errorf("twinsync: %s: %w", s.statePath(), err)
		}
		if snap.Twins != nil {
			s.twins = snap.Twins
		}
		if snap.Deleted != nil {
			s.deleted = snap.Deleted
		}
	}
	s.q, err = queue.Open(queue.Config{Dir: filepath.Join(opt.Dir, "queue"), Fsync: queue.FsyncAlways, MaxBytes: 64 << 20},
		queue.Options{Name: "twins", Logger: opt.Logger, Metrics: opt.Metrics})
	if err != nil {
		return nil, fmt.Errorf("twinsync: %w", err)
	}
	if err := s.replay(); err != nil {
		s.q.Close()
		return nil, err
	}
	return s, nil
}

// replay applies the queued updates newer than the snapshot, then rewinds
// the queue so that the sender sends them all.
func (s *Service) replay() error {
	n := 0
	for {
		st := s.q.Stats()
		if uint64(st.Inflight) >= st.Depth {
			break
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		rec, err := s.q.Next(ctx)
		cancel()
		if err != nil {
			break // records lost to corruption are counted by the queue
		}
		var u twin.Reported
		if json.Unmarshal(rec.Data, &u) != nil {
			continue
		}
		if u.Version <= s.deleted[u.Device] {
			continue // from before the twin was deleted
		}
		t := s.twinLocked(u.Device)
		if u.Version > t.ReportedVersion {
			doc, keys, err := twin.Merge(t.Reported, u.Patch)
			if err != nil {
				continue
			}
			t.Reported, t.ReportedVersion = doc, u.Version
			t.ReportedMeta = twin.Stamp(t.ReportedMeta, u.Patch, keys, u.Time)
			s.dirty = true
			n++
		}
	}
	s.q.Rewind()
	if n > 0 {
		s.log.Info("twins: replayed queued reported updates", "count", n)
	}
	return nil
}

func (s *Service) twinLocked(dev string) *state {
	t := s.twins[dev]
	if t == nil {
		t = &state{Desired: json.RawMessage("{}"), Reported: json.RawMessage("{}"), ReportedVersion: s.deleted[dev]}
		s.twins[dev] = t
	}
	return t
}

// Start subscribes to the device topics and starts the worker and the
// sender.
func (s *Service) Start(ctx context.Context) error {
	ctx, s.cancel = context.WithCancel(ctx)
	for _, f := range []string{TopicPrefix + "+/get", TopicPrefix + "+/update"} {
		cancel, err := s.opt.Broker.Subscribe(f, s.onPublish)
		if err != nil {
			s.Close()
			return fmt.Errorf("twinsync: %w", err)
		}
		s.unsubs = append(s.unsubs, cancel)
	}
	s.wg.Add(2)
	go func() { defer s.wg.Done(); s.worker(ctx) }()
	go func() { defer s.wg.Done(); s.sender(ctx) }()
	return nil
}

// Close stops serving, writes the snapshot and closes the queue.
func (s *Service) Close() error {
	for _, u := range s.unsubs {
		u()
	}
	s.unsubs = nil
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
	err := s.save()
	if cerr := s.q.Close(); err == nil {
		err = cerr
	}
	return err
}

// onPublish runs on the publisher's goroutine: hand over, never block.
func (s *Service) onPublish(topic string, payload []byte) {
	rest := strings.TrimPrefix(topic, TopicPrefix)
	dev, op, ok := strings.Cut(rest, "/")
	if !ok || !twin.ValidDevice(dev) {
		return
	}
	select {
	case s.work <- request{device: dev, op: op, payload: append([]byte(nil), payload...)}:
	default:
		s.reject(dev, op, 503, "the gateway is busy: try again", "")
	}
}

func (s *Service) worker(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-s.work:
			switch r.op {
			case "get":
				s.get(r)
			case "update":
				s.update(ctx, r)
			}
		}
	}
}

func (s *Service) publish(topic string, v any) {
	b, _ := json.Marshal(v)
	if err := s.opt.Broker.Publish(topic, b, false, 1); err != nil {
		s.log.Warn("twins: publish", "topic", topic, "err", err)
	}
}

// Rejection is the payload of .../rejected.
type Rejection struct {
	Code        int    `json:"code"`
	Message     string `json:"message"`
	ClientToken string `json:"clientToken,omitempty"`
	Timestamp   int64  `json:"timestamp"`
}

func (s *Service) reject(dev, op string, code int, msg, token string) {
	s.rejected.Inc()
	s.publish(TopicPrefix+dev+"/"+op+"/rejected", Rejection{Code: code, Message: msg, ClientToken: token, Timestamp: s.opt.Now().UnixMilli()})
}

// Document is the payload of get/accepted.
type Document struct {
	State struct {
		Desired  json.RawMessage `json:"desired"`
		Reported json.RawMessage `json:"reported"`
		Delta    json.RawMessage `json:"delta,omitempty"`
	} `json:"state"`
	Metadata struct {
		Desired  map[string]int64 `json:"desired,omitempty"`
		Reported map[string]int64 `json:"reported,omitempty"`
	} `json:"metadata"`
	DesiredVersion  int64  `json:"desiredVersion"`
	ReportedVersion int64  `json:"reportedVersion"`
	ClientToken     string `json:"clientToken,omitempty"`
	Timestamp       int64  `json:"timestamp"`
}

func clientToken(payload []byte) string {
	var v struct {
		ClientToken string `json:"clientToken"`
	}
	if len(payload) <= twin.MaxPayload && json.Unmarshal(payload, &v) == nil && len(v.ClientToken) <= twin.MaxClientToken {
		return v.ClientToken
	}
	return ""
}

func (s *Service) get(r request) {
	tok := clientToken(r.payload)
	s.mu.Lock()
	t := s.twins[r.device]
	if t == nil {
		s.mu.Unlock()
		s.reject(r.device, "get", 404, "no twin for device "+r.device+" on this gateway", tok)
		return
	}
	var d Document
	d.State.Desired, d.State.Reported = t.Desired, t.Reported
	d.State.Delta = twin.Delta(t.Desired, t.Reported)
	d.Metadata.Desired, d.Metadata.Reported = t.DesiredMeta, t.ReportedMeta
	d.DesiredVersion, d.ReportedVersion = t.DesiredVersion, t.ReportedVersion
	s.mu.Unlock()
	d.ClientToken, d.Timestamp = tok, s.opt.Now().UnixMilli()
	s.publish(TopicPrefix+r.device+"/get/accepted", d)
}

// Accepted is the payload of update/accepted.
type Accepted struct {
	State struct {
		Reported json.RawMessage `json:"reported"`
	} `json:"state"`
	ReportedVersion int64  `json:"reportedVersion"`
	DesiredVersion  int64  `json:"desiredVersion"`
	ClientToken     string `json:"clientToken,omitempty"`
	Timestamp       int64  `json:"timestamp"`
}

func (s *Service) update(ctx context.Context, r request) {
	u, err := twin.ParseUpdate(r.payload)
	if err != nil {
		s.reject(r.device, "update", 400, strings.TrimPrefix(err.Error(), twin.ErrInvalid.Error()+": "), clientToken(r.payload))
		return
	}
	now := s.opt.Now()
	s.mu.Lock()
	if !s.seeded {
		s.mu.Unlock()
		s.reject(r.device, "update", 503, "the gateway is reading its twins back from the fleet server (its twin state was lost): try again", u.ClientToken)
		return
	}
	t := s.twinLocked(r.device)
	if u.ReportedVersion != nil && *u.ReportedVersion != t.ReportedVersion {
		cur := t.ReportedVersion
		s.mu.Unlock()
		s.reject(r.device, "update", 409, fmt.Sprintf("reportedVersion %d is stale: the twin's reported version is %d", *u.ReportedVersion, cur), u.ClientToken)
		return
	}
	if u.DesiredVersion != nil && *u.DesiredVersion != t.DesiredVersion {
		cur := t.DesiredVersion
		s.mu.Unlock()
		s.reject(r.device, "update", 409, fmt.Sprintf("desiredVersion %d is stale: the desired state is at version %d (see update/delta)", *u.DesiredVersion, cur), u.ClientToken)
		return
	}
	doc, keys, err := twin.Merge(t.Reported, u.State.Reported)
	if err != nil {
		s.mu.Unlock()
		s.reject(r.device, "update", 400, "state.reported: "+err.Error(), u.ClientToken)
		return
	}
	rep := twin.Reported{Gateway: s.opt.Gateway, Device: r.device, Patch: u.State.Reported, Version: t.ReportedVersion + 1, Time: now.UTC()}
	rec, _ := json.Marshal(rep)
	// Durable before anything else: the queue append (fsync) comes first.
	// Under s.mu so the sender never sends a version the state lacks.
	if _, err := s.q.Append(ctx, rec); err != nil {
		s.mu.Unlock()
		code, msg := 503, "the gateway could not store the update: try again"
		if errors.Is(err, queue.ErrFull) {
			msg = "the gateway's twin queue is full (the fleet server has been unreachable): try again later"
		}
		s.log.Warn("twins: queue", "err", err)
		s.reject(r.device, "update", code, msg, u.ClientToken)
		return
	}
	t.Reported, t.ReportedVersion = doc, rep.Version
	t.ReportedMeta = twin.Stamp(t.ReportedMeta, u.State.Reported, keys, now)
	s.dirty = true
	var a Accepted
	a.State.Reported = u.State.Reported
	a.ReportedVersion, a.DesiredVersion, a.ClientToken, a.Timestamp = t.ReportedVersion, t.DesiredVersion, u.ClientToken, now.UnixMilli()
	s.mu.Unlock()
	s.accepted.Inc()
	s.publish(TopicPrefix+r.device+"/update/accepted", a)
}

// Delta is the payload of update/delta.
type Delta struct {
	State          json.RawMessage  `json:"state"`
	Metadata       map[string]int64 `json:"metadata,omitempty"`
	DesiredVersion int64            `json:"desiredVersion"`
	Timestamp      int64            `json:"timestamp"`
}

// SetDesired stores the desired state the server sent for device (the
// spec of its twin object) durably, then publishes the delta. A spec older
// than what the gateway has is ignored.
func (s *Service) SetDesired(device string, spec twin.Spec) error {
	if !twin.ValidDevice(device) {
		return fmt.Errorf("twin %q: not a valid device id", device)
	}
	s.mu.Lock()
	t := s.twinLocked(device)
	if spec.Version < t.DesiredVersion {
		s.mu.Unlock()
		return nil
	}
	t.Desired, t.DesiredVersion, t.DesiredMeta = spec.Desired, spec.Version, spec.Metadata
	if len(t.Desired) == 0 {
		t.Desired = json.RawMessage("{}")
	}
	s.dirty = true
	delta := twin.Delta(t.Desired, t.Reported)
	d := Delta{State: delta, Metadata: t.DesiredMeta, DesiredVersion: t.DesiredVersion, Timestamp: s.opt.Now().UnixMilli()}
	s.mu.Unlock()
	if err := s.save(); err != nil {
		return err
	}
	if delta != nil {
		s.publish(TopicPrefix+device+"/update/delta", d)
	}
	return nil
}

// Delete drops the gateway's copy of device's twin (deleted on the
// server). Its reported version is kept as a tombstone: queued updates up
// to it are not sent, and if the device reports again its new twin counts
// on from there.
func (s *Service) Delete(device string) error {
	s.mu.Lock()
	t := s.twins[device]
	if t == nil {
		s.mu.Unlock()
		return nil
	}
	s.deleted[device] = t.ReportedVersion
	delete(s.twins, device)
	s.dirty = true
	s.mu.Unlock()
	return s.save()
}

// seed reads the gateway's twins back from the server and takes every
// side the server has newer than the local copy, then makes that durable
// before updates are accepted.
func (s *Service) seed(ctx context.Context, sd Seeder) error {
	ts, err := sd.ListTwins(ctx)
	if err != nil {
		return err
	}
	s.mu.Lock()
	for _, st := range ts {
		if !twin.ValidDevice(st.Device) {
			continue
		}
		t := s.twinLocked(st.Device)
		if st.ReportedVersion > t.ReportedVersion {
			t.Reported, t.ReportedVersion, t.ReportedMeta = st.Reported, st.ReportedVersion, st.Metadata.Reported
			if len(t.Reported) == 0 {
				t.Reported = json.RawMessage("{}")
			}
		}
		if st.DesiredVersion > t.DesiredVersion {
			t.Desired, t.DesiredVersion, t.DesiredMeta = st.Desired, st.DesiredVersion, st.Metadata.Desired
			if len(t.Desired) == 0 {
				t.Desired = json.RawMessage("{}")
			}
		}
	}
	s.dirty = true
	s.mu.Unlock()
	if err := s.save(); err != nil {
		return err
	}
	s.mu.Lock()
	s.seeded = true
	s.mu.Unlock()
	s.log.Info("twins: re-seeded from the fleet server (no local twin state)", "twins", len(ts))
	return nil
}

// save writes the snapshot atomically (temp file, fsync, rename, fsync of
// the directory) when something changed.
func (s *Service) save() error {
	s.saveMu.Lock()
	defer s.saveMu.Unlock()
	s.mu.Lock()
	if !s.dirty {
		s.mu.Unlock()
		return nil
	}
	b, err := json.Marshal(snapshot{Twins: s.twins, Deleted: s.deleted})
	s.dirty = false
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("twinsync: snapshot: %w", err)
	}
	if err := writeAtomic(s.statePath(), b); err != nil {
		s.mu.Lock()
		s.dirty = true
		s.mu.Unlock()
		return fmt.Errorf("twinsync: snapshot: %w", err)
	}
	return nil
}

func writeAtomic(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".state-*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Pending is the number of reported updates not yet acknowledged by the
// server.
func (s *Service) Pending() uint64 { return s.q.Stats().Depth }

// sender sends queued updates in batches; a batch is acknowledged in the
// queue only after the server took it and the snapshot holding it is
// durable.
func (s *Service) sender(ctx context.Context) {
	backoff := 500 * time.Millisecond
	s.mu.Lock()
	seeded := s.seeded
	s.mu.Unlock()
	for !seeded {
		err := errors.New("not connected to a fleet server")
		if sd, ok := s.opt.Uplink.(Seeder); ok {
			err = s.seed(ctx, sd)
		}
		if err == nil {
			break
		}
		s.log.Debug("twins: not re-seeded yet", "err", err)
		wait := backoff/2 + rand.N(backoff/2+1)
		backoff = min(backoff*2, s.opt.RetryMax)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
	backoff = 500 * time.Millisecond
	for {
		rec, err := s.q.Next(ctx)
		if err != nil {
			return
		}
		recs := []queue.Record{rec}
		for len(recs) < 500 {
			st := s.q.Stats()
			if uint64(st.Inflight) >= st.Depth {
				break
			}
			r, err := s.q.Next(ctx)
			if err != nil {
				return
			}
			recs = append(recs, r)
		}
		ups := make([]twin.Reported, 0, len(recs))
		s.mu.Lock()
		for _, r := range recs {
			var u twin.Reported
			if json.Unmarshal(r.Data, &u) == nil && u.Version > s.deleted[u.Device] {
				u.Gateway = "" // the server takes it from the certificate
				ups = append(ups, u)
			}
		}
		s.mu.Unlock()
		err = errors.New("not connected to a fleet server")
		if len(ups) == 0 {
			err = nil // every record was for a deleted twin
		} else if s.opt.Uplink != nil {
			err = s.opt.Uplink.PostReported(ctx, ups)
		}
		if err == nil {
			err = s.save()
		}
		if err != nil {
			s.log.Debug("twins: reported updates not sent yet", "err", err, "pending", len(recs))
			s.q.Rewind()
			wait := backoff/2 + rand.N(backoff/2+1)
			backoff = min(backoff*2, s.opt.RetryMax)
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			continue
		}
		backoff = 500 * time.Millisecond
		for _, r := range recs {
			s.q.Ack(r.Seq)
		}
		s.sent.Add(len(recs))
	}
}
