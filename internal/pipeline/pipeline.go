// Package pipeline moves every publish accepted by the broker to the sinks
// its routes name: local republish, JSON-lines files, and (through the same
// message.Sink contract) the durable uplink lanes, the rule engine and
// webhooks.
//
// # Flow
//
// The broker calls Submit from the publishing client's read loop. Submit
// resolves the device id, finds the matching routes and, if any match, hands
// the message to one of N partitions chosen by a hash of the device id (the
// topic when there is none). Each partition is a bounded queue drained by one
// worker goroutine, so each device's messages reach the sinks (and the rule
// engine, whose windows and state are per device) in the order the broker
// accepted them.
//
// # Backpressure and guarantees
//
//   - QoS 0: enqueued without waiting; when the partition is full the message
//     is shed and counted (outpost_pipeline_dropped_total{reason="overload"}).
//   - QoS 1/2: Submit waits for room in the partition (backpressure reaches
//     the device through TCP), and if any target sink is Durable it waits
//     until every durable sink has accepted the message. Only then does the
//     broker send PUBACK. A durable sink's refusal (e.g. a full queue with
//     on_full: reject_new) is returned and becomes a negative PUBACK.
//   - Non-durable sink errors are counted per sink and logged, never retried
//     here (sinks that need retries, like webhooks, do them themselves).
//
// Stop stops accepting, drains every queued message to the sinks, then
// closes the sinks the pipeline opened.
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/module"
	"github.com/outpost-edge/outpost/internal/sink"
	"github.com/outpost-edge/outpost/internal/sink/republish"
	"github.com/outpost-edge/outpost/internal/topic"
)

// Errors returned by Submit.
var (
	// ErrStopped is returned while the pipeline is not running.
	ErrStopped = errors.New("pipeline: not running")
	// ErrOverload is returned for a QoS 0 message shed because its partition
	// was full.
	ErrOverload = errors.New("pipeline: overloaded, message shed")
)

// Options are the pipeline's dependencies.
type Options struct {
	Logger  *slog.Logger
	Metrics *metrics.Set
	// Publisher is the broker, for republish sinks.
	Publisher republish.Publisher
	// Sinks builds the configured sinks and resolves every route target
	// that is not one of them (uplink lanes, the rule engine, functions:
	// sink.Registry). Resolved sinks are not closed by the pipeline. nil =
	// a registry with only the Publisher.
	Sinks *sink.Registry
}

// Pipeline is the routing module.
type Pipeline struct {
	opts  Options
	log   *slog.Logger
	m     *pmetrics
	sinks *sink.Registry

	mu      sync.Mutex // lifecycle
	cfg     *Config
	table   atomic.Pointer[table]
	parts   []*partition
	running atomic.Bool
	gate    sync.RWMutex // Submit holds it shared; Stop exclusively
	seed    maphash.Seed
	wg      sync.WaitGroup
}

var _ module.Typed[Config] = (*Pipeline)(nil)
var _ module.TypedReconfigurable[Config] = (*Pipeline)(nil)

// New returns an unstarted pipeline.
func New(opts Options) *Pipeline {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Metrics == nil {
		opts.Metrics = metrics.NewSet()
	}
	p := &Pipeline{opts: opts, log: opts.Logger, seed: maphash.MakeSeed(), sinks: opts.Sinks}
	if p.sinks == nil {
		p.sinks = sink.New(sink.Options{Publisher: opts.Publisher, Logger: opts.Logger, Metrics: opts.Metrics})
	}
	p.m = newMetrics(opts.Metrics, p)
	return p
}

// Name implements module.Typed.
func (p *Pipeline) Name() string { return "pipeline" }

// DependsOn implements module.Deps: republish needs the broker.
func (p *Pipeline) DependsOn() []string { return nil }

// table is an immutable routing table; swapped atomically on reload.
type table struct {
	routes   []compiledRoute
	sinks    map[string]message.Sink
	owned    []io.Closer // sinks this table opened (closed when retired)
	deviceID func(*message.Message) string
}

type compiledRoute struct {
	name    string
	filters []string
	sinks   []message.Sink
}

// Init implements module.Typed.
func (p *Pipeline) Init(_ context.Context, c *Config) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cfg = c
	return nil
}

func (p *Pipeline) build(c *Config) (*table, error) {
	t := &table{sinks: map[string]message.Sink{}, deviceID: deviceIDFunc(c.DeviceID)}
	fail := func(err error) (*table, error) {
		for _, o := range t.owned {
			o.Close()
		}
		return nil, err
	}
	for _, sc := range c.Sinks {
		var s message.Sink
		switch sc.Type {
		case SinkRepublish:
			rs, err := p.sinks.Republish(sc.Name, sc.Republish)
			if err != nil {
				return fail(fmt.Errorf("pipeline: %w", err))
			}
			s = rs
		case SinkFile:
			fs, err := p.sinks.File(sc.Name, sc.File)
			if err != nil {
				return fail(fmt.Errorf("pipeline: %w", err))
			}
			t.owned = append(t.owned, fs)
			s = fs
		default:
			return fail(fmt.Errorf("pipeline: sink %s: unknown type %q", sc.Name, sc.Type))
		}
		t.sinks[sc.Name] = s
	}
	for _, r := range c.Routes {
		cr := compiledRoute{name: r.Name, filters: r.From}
		for _, to := range r.To {
			s, ok := t.sinks[to]
			if !ok {
				// Not configured here: a module's sink (Config.Validate
				// refuses a configured name that a module uses).
				var err error
				if s, err = p.sinks.Resolve(to); err != nil {
					return fail(fmt.Errorf("pipeline: route %s: unknown sink %q: %w", r.Name, to, err))
				}
				t.sinks[to] = s
			}
			cr.sinks = append(cr.sinks, s)
		}
		t.routes = append(t.routes, cr)
	}
	return t, nil
}

// Start implements module.Typed.
func (p *Pipeline) Start(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cfg == nil {
		return errors.New("pipeline: Start before Init")
	}
	t, err := p.build(p.cfg)
	if err != nil {
		return err
	}
	p.table.Store(t)
	p.parts = make([]*partition, p.cfg.Partitions)
	for i := range p.parts {
		p.parts[i] = &partition{ch: make(chan *item, p.cfg.QueueSize)}
		p.wg.Add(1)
		go p.work(p.parts[i])
	}
	p.running.Store(true)
	return nil
}

// Health implements module.Typed.
func (p *Pipeline) Health() module.Status {
	if !p.running.Load() {
		return module.Status{State: module.StateStopped}
	}
	depth, capacity := p.depth()
	if capacity > 0 && depth*10 >= capacity*9 {
		return module.Status{State: module.StateDegraded, Detail: fmt.Sprintf("queues %d/%d full: sinks are slower than input", depth, capacity)}
	}
	return module.Status{State: module.StateReady, Detail: fmt.Sprintf("%d routes, %d partitions", len(p.table.Load().routes), len(p.parts))}
}

func (p *Pipeline) depth() (depth, capacity int) {
	for _, pt := range p.parts {
		depth += len(pt.ch)
		capacity += cap(pt.ch)
	}
	return
}

// item is one message on its way through a partition.
type item struct {
	m     *message.Message
	sinks []message.Sink
	done  chan error // non-nil when the submitter waits for durable sinks
	// doneFn, when set, is called instead once every durable sink accepted
	// the message (SubmitAsync).
	doneFn func(error)
	// barrier items carry no message; the worker closes done when it
	// reaches them (used to retire a routing table).
	barrier bool
}

type partition struct {
	ch chan *item
}

// Submit routes m. See the package doc for what it waits for.
func (p *Pipeline) Submit(m *message.Message) error {
	p.gate.RLock()
	defer p.gate.RUnlock()
	it, pt, err := p.prepare(m)
	if it == nil {
		return err
	}
	if it.durable() {
		it.done = make(chan error, 1)
	}
	if err := p.enqueue(pt, it); err != nil {
		return err
	}
	if it.done != nil {
		return <-it.done
	}
	return nil
}

// SubmitAsync is Submit without waiting: done is called exactly once, with
// nil once the message is enqueued (and, for QoS 1/2 messages routed to
// durable sinks, once every durable sink has accepted it), or with the error
// that refused it. done may run before SubmitAsync returns (unrouted, shed,
// not durable) or later on a pipeline or sink goroutine; for one device,
// completions come in submission order. SubmitAsync still blocks while the
// partition is full (backpressure).
func (p *Pipeline) SubmitAsync(m *message.Message, done func(error)) {
	p.gate.RLock()
	defer p.gate.RUnlock()
	it, pt, err := p.prepare(m)
	if it == nil {
		done(err)
		return
	}
	durable := it.durable()
	if durable {
		it.doneFn = done
	}
	if err := p.enqueue(pt, it); err != nil {
		done(err)
		return
	}
	if !durable {
		done(nil)
	}
}

// prepare resolves the device id and routes; a nil item means there is
// nothing to enqueue (unrouted: err nil; stopped: ErrStopped).
func (p *Pipeline) prepare(m *message.Message) (*item, *partition, error) {
	if !p.running.Load() {
		return nil, nil, ErrStopped
	}
	t := p.table.Load()
	if t.deviceID != nil && m.DeviceID == "" {
		m.DeviceID = t.deviceID(m)
	}
	sinks := t.match(m.Topic)
	if len(sinks) == 0 {
		p.m.unrouted.Inc()
		return nil, nil, nil
	}
	key := m.DeviceID
	if key == "" {
		key = m.Topic
	}
	return &item{m: m, sinks: sinks}, p.parts[maphash.String(p.seed, key)%uint64(len(p.parts))], nil
}

// durable reports whether the submitter must wait for durable sinks.
func (it *item) durable() bool {
	if it.m.QoS == 0 {
		return false
	}
	for _, s := range it.sinks {
		if d, ok := s.(message.Durable); ok && d.Durable() {
			return true
		}
	}
	return false
}

// enqueue hands it to its partition: QoS 0 is shed when full, QoS 1/2 waits.
func (p *Pipeline) enqueue(pt *partition, it *item) error {
	if it.m.QoS == 0 {
		select {
		case pt.ch <- it:
		default:
			p.m.shed.Inc()
			return ErrOverload
		}
	} else {
		select {
		case pt.ch <- it:
		default:
			p.m.waits.Inc()
			pt.ch <- it // backpressure: the client's read loop waits
		}
	}
	p.m.routed.Inc()
	return nil
}

// match returns the distinct sinks of every route whose filters match topic.
func (t *table) match(name string) []message.Sink {
	var out []message.Sink
	for i := range t.routes {
		r := &t.routes[i]
		for _, f := range r.filters {
			if topic.Match(f, name) {
				for _, s := range r.sinks {
					if !containsSink(out, s) {
						out = append(out, s)
					}
				}
				break
			}
		}
	}
	return out
}

func containsSink(ss []message.Sink, s message.Sink) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func (p *Pipeline) work(pt *partition) {
	defer p.wg.Done()
	ctx := context.Background()
	for it := range pt.ch {
		if it.barrier {
			close(it.done)
			continue
		}
		// pending counts durable acceptances still outstanding, plus one
		// for this loop, so finish runs exactly once after both.
		var (
			mu         sync.Mutex
			durableErr error
			pending    = 1
		)
		finish := func(err error) {
			mu.Lock()
			durableErr = errors.Join(durableErr, err)
			pending--
			last := pending == 0
			mu.Unlock()
			if !last {
				return
			}
			switch {
			case it.doneFn != nil:
				it.doneFn(durableErr)
			case it.done != nil:
				it.done <- durableErr
			}
		}
		for _, s := range it.sinks {
			sm := p.m.sink(s.Name())
			// Async sinks (the durable lanes) never block the partition; a
			// QoS 0 message's completion is simply not waited for.
			if ad, ok := s.(message.AsyncDurable); ok {
				mu.Lock()
				pending++
				mu.Unlock()
				t0 := time.Now()
				ad.DeliverAsync(it.m, func(err error) {
					sm.latency.UpdateDuration(t0)
					if err != nil {
						sm.errors.Inc()
						if p.m.logOnce(ad.Name()) {
							p.log.Warn("pipeline: sink delivery failed", "sink", ad.Name(), "topic", it.m.Topic, "err", err)
						}
					} else {
						sm.delivered.Inc()
					}
					finish(err)
				})
				continue
			}
			t0 := time.Now()
			err := s.Deliver(ctx, it.m)
			sm.latency.UpdateDuration(t0)
			if err != nil {
				sm.errors.Inc()
				if d, ok := s.(message.Durable); ok && d.Durable() {
					mu.Lock()
					durableErr = errors.Join(durableErr, err)
					mu.Unlock()
				}
				if p.m.logOnce(s.Name()) {
					p.log.Warn("pipeline: sink delivery failed", "sink", s.Name(), "topic", it.m.Topic, "err", err)
				}
				continue
			}
			sm.delivered.Inc()
		}
		finish(nil)
	}
}

// barrier waits until every partition has processed what was queued before
// the call.
func (p *Pipeline) barrier(ctx context.Context) error {
	var dones []chan error
	for _, pt := range p.parts {
		b := &item{barrier: true, done: make(chan error)}
		select {
		case pt.ch <- b:
		case <-ctx.Done():
			return ctx.Err()
		}
		dones = append(dones, b.done)
	}
	for _, d := range dones {
		select {
		case <-d:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// Stop implements module.Typed: stop accepting, drain, close owned sinks.
func (p *Pipeline) Stop(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.running.Swap(false) {
		return nil
	}
	// Submit calls that passed the running check finish enqueueing before
	// the queues close; later ones see running == false.
	p.gate.Lock()
	for _, pt := range p.parts {
		close(pt.ch)
	}
	p.gate.Unlock()
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("pipeline: drain: %w", ctx.Err())
	}
	var errs []error
	if t := p.table.Load(); t != nil {
		for _, o := range t.owned {
			if err := o.Close(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// Reconfigure implements module.TypedReconfigurable: the new routing table takes
// effect for the next message; messages already queued finish with the old
// one; then the old table's sinks are closed. A partition count or queue size
// change restarts the pipeline (after draining).
func (p *Pipeline) Reconfigure(ctx context.Context, c *Config) error {
	p.mu.Lock()
	old := p.cfg
	p.mu.Unlock()
	if old == nil || old.Partitions != c.Partitions || old.QueueSize != c.QueueSize {
		if err := p.Stop(ctx); err != nil {
			return err
		}
		if err := p.Init(ctx, c); err != nil {
			return err
		}
		return p.Start(ctx)
	}
	t, err := p.build(c)
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.cfg = c
	prev := p.table.Swap(t)
	p.mu.Unlock()
	if err := p.barrier(ctx); err != nil {
		return err
	}
	for _, o := range prev.owned {
		o.Close()
	}
	p.log.Info("pipeline: routes reloaded", "routes", len(c.Routes), "sinks", len(c.Sinks))
	return nil
}

// Sink returns the running sink of that name.
func (p *Pipeline) Sink(name string) (message.Sink, bool) {
	t := p.table.Load()
	if t == nil {
		return nil, false
	}
	s, ok := t.sinks[name]
	return s, ok
}

// Refresh rebuilds the routing table with the current config, picking up
// sinks that other modules added or removed (Options.Sinks).
func (p *Pipeline) Refresh(ctx context.Context) error {
	p.mu.Lock()
	c := p.cfg
	p.mu.Unlock()
	if c == nil || !p.running.Load() {
		return nil
	}
	return p.Reconfigure(ctx, c)
}

// deviceIDFunc resolves a message's device id per config.
func deviceIDFunc(c DeviceID) func(*message.Message) string {
	switch c.From {
	case DeviceFromTopic:
		level := c.Level
		return func(m *message.Message) string {
			parts := strings.SplitN(m.Topic, "/", level+1)
			if len(parts) < level {
				return m.ClientID
			}
			return parts[level-1]
		}
	default:
		return func(m *message.Message) string { return m.ClientID }
	}
}
