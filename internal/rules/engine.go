package rules

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/rules/jsonpath"
	"github.com/outpost-edge/outpost/internal/sink/webhook"
)

// Options configure an Engine. Zero values are documented defaults.
type Options struct {
	Env        Env
	Partitions int          // lock stripes keyed by device; default 64
	Log        *slog.Logger // nil: discard
	Metrics    *metrics.Set // nil: a private set
	Now        func() time.Time
	// Tick is how often processing-time windows are checked for closing
	// (default 50ms).
	Tick time.Duration
	// Idle is the idle timeout of event-time windows (default 5s, negative:
	// never): once a rule with TIMESTAMP BY has received no message for
	// Idle, its watermark advances with the wall clock from the newest event
	// time seen, so the windows of silent devices still close.
	Idle time.Duration
	// MaxHops bounds how many times a message may pass through REPUBLISH
	// actions (counted in the HopsProperty user property), default 8: a
	// message that arrives with MaxHops hops is not evaluated (counted as
	// reason "loop"), so a loop through rules and forwarding clients stops.
	MaxHops int
	// Webhook builds WEBHOOK action sinks (default: internal/sink/webhook).
	Webhook func(webhook.Config) (message.Sink, error)
	// Selectors are configured device selectors by "name@version" (see
	// CompileOptions.Selectors).
	Selectors map[string]string
	// DeviceID resolves the device of a message whose DeviceID is empty
	// (nil: the client id). The input message is not modified.
	DeviceID func(*message.Message) string
}

// Engine evaluates rules against messages. Process is safe for concurrent
// use; see the package doc for ordering and reload guarantees.
type Engine struct {
	env     Env
	log     *slog.Logger
	set     *metrics.Set
	now     func() time.Time
	webhook func(webhook.Config) (message.Sink, error)
	// durable: the Env has durable targets (uplink lanes), so the engine's
	// sink is Durable and a QoS 1 publish waits for the rules' outputs.
	durable bool

	// Settings a config reload changes on the live engine (Set...): read
	// per message or per tick without a lock.
	idle      atomic.Int64 // time.Duration
	maxHops   atomic.Int32
	devID     atomic.Pointer[func(*message.Message) string]
	selectors atomic.Pointer[map[string]string]

	// parts is replaced as a whole by SetPartitions; Process re-checks it
	// after taking a partition lock (see lockPartition).
	parts atomic.Pointer[[]partition]
	cur   atomic.Pointer[ruleset]

	mu       sync.Mutex // serializes Apply, Snapshot, Restore, Tick bookkeeping
	restored map[string]*savedState
	hooks    map[string]*webhookRef
	tickCtx  evalCtx
	tick     time.Duration
	ticker   *time.Ticker // while started
	stopTick context.CancelFunc
	tickDone chan struct{}

	ck checkpointer

	mMessages  *metrics.Counter
	mReloads   *metrics.Counter
	mReloadDur *metrics.Histogram
	mDiscarded *metrics.Counter
}

type webhookRef struct {
	sink message.Sink
	used bool
}

// partition is a lock stripe: messages of one device always use the same
// partition, so per-device order and per-device state updates are serial.
type partition struct {
	mu   sync.Mutex
	c    evalCtx
	copy message.Message
	n    uint32
	_    [64]byte // keep stripes on separate cache lines
}

// entry is a rule within one ruleset (with its version group).
type entry struct {
	r *Rule
	g *versionGroup
}

// versionGroup is every loaded version of one rule name, newest first.
type versionGroup struct {
	name     string
	versions []*Rule
	simple   bool // one version without selector
}

type ruleset struct {
	trie   trie
	rules  []*Rule
	groups map[string]*versionGroup
}

// ruleState is the state of a rule that survives reloads when compatible.
// Its parts carry their own locks (sharded), so a new version may share
// one part with the old while the other starts empty.
type ruleState struct {
	win *windowState
	dev *devStates
}

// devStates is a rule's per-device state, sharded by device so that
// devices do not contend.
type devStates struct {
	shards [stateShards]devShard
}

type devShard struct {
	mu sync.Mutex
	m  map[string]*devState
	_  [64]byte // keep shards on separate cache lines
}

func newDevStates() *devStates {
	d := &devStates{}
	for i := range d.shards {
		d.shards[i].m = map[string]*devState{}
	}
	return d
}

func (d *devStates) shard(id string) *devShard {
	return &d.shards[hashString(id)%stateShards]
}

// get returns the state of device id; the caller holds the shard lock.
func (s *devShard) get(id string, slots int) *devState {
	d := s.m[id]
	if d == nil {
		d = &devState{Slots: make([]stateSlot, slots)}
		s.m[strings.Clone(id)] = d
	}
	return d
}

func (d *devStates) put(id string, st *devState) {
	sh := d.shard(id)
	sh.mu.Lock()
	sh.m[id] = st
	sh.mu.Unlock()
}

func (d *devStates) lockAll() {
	for i := range d.shards {
		d.shards[i].mu.Lock()
	}
}

func (d *devStates) unlockAll() {
	for i := range d.shards {
		d.shards[i].mu.Unlock()
	}
}

// all returns every device's state; the caller holds every shard lock.
func (d *devStates) all() map[string]*devState {
	out := map[string]*devState{}
	for i := range d.shards {
		for id, st := range d.shards[i].m {
			out[id] = st
		}
	}
	return out
}

// ruleMetrics are a rule version's counters.
type ruleMetrics struct {
	matched *metrics.Counter
	emitted *metrics.Counter
	errors  [numReasons]*metrics.Counter
	eval    *metrics.Histogram
	names   []string // every series above, to unregister when the version goes
}

// New returns an engine with no rules.
func New(opts Options) *Engine {
	if opts.Partitions <= 0 {
		opts.Partitions = 64
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Metrics == nil {
		opts.Metrics = metrics.NewSet()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Tick <= 0 {
		opts.Tick = 50 * time.Millisecond
	}
	if opts.Idle == 0 {
		opts.Idle = DefaultIdle
	}
	if opts.MaxHops <= 0 {
		opts.MaxHops = DefaultMaxHops
	}
	e := &Engine{
		env: opts.Env, log: opts.Log.With("module", "rules"), set: opts.Metrics, now: opts.Now, tick: opts.Tick,
		webhook:  opts.Webhook,
		restored: map[string]*savedState{},
		hooks:    map[string]*webhookRef{},
	}
	e.SetIdle(opts.Idle)
	e.SetMaxHops(opts.MaxHops)
	e.SetDeviceID(opts.DeviceID)
	e.SetSelectors(opts.Selectors)
	e.parts.Store(e.newPartitions(opts.Partitions))
	if e.webhook == nil {
		e.webhook = func(cfg webhook.Config) (message.Sink, error) { return webhook.New(cfg, e.log, e.set) }
	}
	e.tickCtx.env = e.env
	e.durable = e.env != nil && len(e.env.Lanes()) > 0
	e.mMessages = e.set.GetOrCreateCounter("outpost_rules_messages_total")
	e.mReloads = e.set.GetOrCreateCounter("outpost_rules_reloads_total")
	e.mReloadDur = e.set.GetOrCreateHistogram("outpost_rules_reload_duration_seconds")
	e.mDiscarded = e.set.GetOrCreateCounter("outpost_rules_window_groups_discarded_total")
	e.set.GetOrCreateGauge("outpost_rules_active", func() float64 {
		if rs := e.cur.Load(); rs != nil {
			return float64(len(rs.rules))
		}
		return 0
	})
	e.cur.Store(&ruleset{groups: map[string]*versionGroup{}})
	return e
}

func (e *Engine) newPartitions(n int) *[]partition {
	parts := make([]partition, n)
	for i := range parts {
		parts[i].c.env = e.env
	}
	return &parts
}

// Live settings. A config reload applies them to the running engine, so
// the pipeline keeps feeding the same engine and no rule, window or device
// state is rebuilt.

// SetIdle sets the idle timeout of event-time windows (Options.Idle); it
// applies from the next timer tick.
func (e *Engine) SetIdle(d time.Duration) {
	if d == 0 {
		d = DefaultIdle
	}
	e.idle.Store(int64(d))
}

// SetMaxHops sets Options.MaxHops for the next message.
func (e *Engine) SetMaxHops(n int) {
	if n <= 0 {
		n = DefaultMaxHops
	}
	e.maxHops.Store(int32(n))
}

// SetDeviceID sets Options.DeviceID for the next message.
func (e *Engine) SetDeviceID(f func(*message.Message) string) {
	if f == nil {
		f = func(m *message.Message) string { return m.ClientID }
	}
	e.devID.Store(&f)
}

// SetSelectors sets the configured device selectors (Options.Selectors)
// used by the next Compile; rules already compiled keep theirs, so the
// caller recompiles them (Store.Recompile).
func (e *Engine) SetSelectors(sel map[string]string) {
	e.selectors.Store(&sel)
}

// SetTick changes how often the window timer runs (Options.Tick), at once
// when it is running.
func (e *Engine) SetTick(d time.Duration) {
	if d <= 0 {
		d = 50 * time.Millisecond
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.tick = d
	if e.ticker != nil {
		e.ticker.Reset(d)
	}
}

// SetPartitions changes the number of device lock stripes. It waits until
// no message is being evaluated, then switches: a message either finished
// on the old stripes or runs on the new ones, so per-device order holds.
func (e *Engine) SetPartitions(n int) {
	if n <= 0 {
		n = 64
	}
	old := e.parts.Load()
	if len(*old) == n {
		return
	}
	for i := range *old {
		(*old)[i].mu.Lock()
	}
	e.parts.Store(e.newPartitions(n))
	for i := range *old {
		(*old)[i].mu.Unlock()
	}
}

// lockPartition locks and returns the stripe of key, retrying when
// SetPartitions replaced the stripes while this call waited for the lock.
func (e *Engine) lockPartition(key string) *partition {
	for {
		parts := e.parts.Load()
		p := &(*parts)[hashString(key)%uint32(len(*parts))]
		p.mu.Lock()
		if e.parts.Load() == parts {
			return p
		}
		p.mu.Unlock()
	}
}

// CompileOptions returns the options to compile rules for this engine
// (its Env; webhook sinks shared between rule versions with the same
// configuration).
func (e *Engine) CompileOptions() CompileOptions {
	return CompileOptions{Env: e.env, Webhook: e.sharedWebhook, Selectors: *e.selectors.Load()}
}

func (e *Engine) sharedWebhook(cfg webhook.Config) (message.Sink, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if h := e.hooks[cfg.Key()]; h != nil {
		return h.sink, nil
	}
	s, err := e.webhook(cfg)
	if err != nil {
		return nil, err
	}
	e.hooks[cfg.Key()] = &webhookRef{sink: s}
	return s, nil
}

// Compile compiles a rule file for this engine.
func (e *Engine) Compile(file, src string) ([]*Rule, error) {
	return Compile(file, src, e.CompileOptions())
}

// Rules returns the active rules sorted by name and version.
func (e *Engine) Rules() []*Rule {
	return append([]*Rule(nil), e.cur.Load().rules...)
}

func hashString(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}

// Process evaluates every matching rule against m and runs their actions.
// It returns the first action error (wrapped) so that a caller can refuse a
// QoS 1 publish; run-time evaluation errors are only counted. m and its
// payload are not retained.
func (e *Engine) Process(ctx context.Context, m *message.Message) error {
	return e.process(ctx, m, nil)
}

// ProcessAsync is Process for a caller that must know when the outputs
// the message caused are durable (the pipeline, before the broker
// acknowledges a QoS 1 publish). It evaluates m before it returns (so the
// caller's per-device order holds), delivering to durable action targets
// (uplink lanes) without waiting for their fsync; done is called exactly
// once, when every durable output of m is durable (window outputs that m
// closed are delivered synchronously, so they are durable before
// ProcessAsync returns) and, for a QoS 1/2 message that changed the window
// or per-device state of a rule with a durable action, once a checkpoint
// holding that change is on disk (see SetCheckpointDir); it gets the first
// durable output's or the checkpoint's error (nil if none). Errors of non-durable actions (republish, webhook, file) are
// counted and logged only, as a retry of the input would duplicate the
// outputs that did succeed. done may run before ProcessAsync returns or on a
// sink's goroutine; completions of different messages may come in any
// order.
func (e *Engine) ProcessAsync(m *message.Message, done func(error)) {
	if !e.durable { // no durable target: nothing to wait for
		e.process(context.Background(), m, nil)
		done(nil)
		return
	}
	w := &asyncWait{pending: 1, done: done}
	e.process(context.Background(), m, w)
	if w.state && m.QoS > 0 {
		// m changed the state of a rule with durable outputs: complete
		// once a checkpoint taken after the change is on disk (QoS 0 is
		// not acknowledged, so it does not cause a checkpoint)
		w.add()
		e.ck.await(w.complete)
	}
	w.complete(nil)
}

// asyncWait counts the durable outputs of one message still outstanding
// (plus one for the evaluation itself).
type asyncWait struct {
	mu      sync.Mutex
	pending int
	err     error
	done    func(error)
	state   bool // the message changed a durableState rule's state (partition goroutine only)
}

func (w *asyncWait) add() {
	w.mu.Lock()
	w.pending++
	w.mu.Unlock()
}

func (w *asyncWait) fail(err error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.mu.Unlock()
}

func (w *asyncWait) complete(err error) {
	w.mu.Lock()
	if err != nil && w.err == nil {
		w.err = err
	}
	w.pending--
	last := w.pending == 0
	err = w.err
	w.mu.Unlock()
	if last {
		w.done(err)
	}
}

func (e *Engine) process(ctx context.Context, m *message.Message, w *asyncWait) error {
	key := m.DeviceID
	if key == "" {
		key = m.ClientID
	}
	p := e.lockPartition(key)
	defer p.mu.Unlock()
	if m.DeviceID == "" {
		p.copy = *m
		p.copy.DeviceID = (*e.devID.Load())(m)
		m = &p.copy
	}
	rs := e.cur.Load() // the reload boundary: one ruleset per message
	e.mMessages.Inc()
	c := &p.c
	c.msg, c.labelsOK, c.now, c.async = m, false, time.Time{}, w
	defer func() { c.async = nil }()
	c.matched = rs.trie.match(m.Topic, c.matched[:0])
	if len(c.matched) == 0 {
		return nil
	}
	p.n++
	sample := p.n&15 == 0
	c.hops = messageHops(m)
	maxHops := int(e.maxHops.Load())
	var first error
	for _, en := range c.matched {
		r := en.r
		if !en.g.simple && e.pick(c, en.g) != r {
			continue
		}
		if c.hops >= maxHops {
			e.refuseLoop(r, m, maxHops)
			continue
		}
		var t0 time.Time
		if sample {
			t0 = time.Now()
		}
		if err := e.runRule(ctx, c, r); err != nil && first == nil {
			first = fmt.Errorf("rules: rule %s: %w", r.Name, err)
		}
		if sample {
			r.m.eval.Update(time.Since(t0).Seconds())
		}
	}
	c.msg = nil
	return first
}

// HopsProperty is the MQTT 5 user property in which REPUBLISH actions count
// how many rule republishes a message went through (the input's count plus
// one). A client that forwards messages back into the broker keeping user
// properties thus carries the count around a loop, and the engine stops
// evaluating a message at Options.MaxHops.
const HopsProperty = "outpost-hops"

// DefaultMaxHops is the default of Options.MaxHops.
const DefaultMaxHops = 8

var hopStrings = func() (s [65]string) {
	for i := range s {
		s[i] = strconv.Itoa(i)
	}
	return s
}()

func hopString(n int) string {
	if n >= 0 && n < len(hopStrings) {
		return hopStrings[n]
	}
	return strconv.Itoa(n)
}

// messageHops reads HopsProperty (0 when absent or not a number).
func messageHops(m *message.Message) int {
	for _, u := range m.Props.User {
		if u.Key == HopsProperty {
			n, err := strconv.Atoi(u.Value)
			if err != nil || n < 0 {
				return 0
			}
			return n
		}
	}
	return 0
}

// refuseLoop counts a message that reached MaxHops for rule r (and logs
// the first of each rule version).
func (e *Engine) refuseLoop(r *Rule, m *message.Message, maxHops int) {
	r.m.matched.Inc()
	r.m.errors[reasonLoop].Inc()
	if r.loopLogged.CompareAndSwap(false, true) {
		e.log.Warn("rule loop: message not evaluated, it went through too many republishes",
			"rule", r.Name, "version", r.Version, "topic", m.Topic, "hops", messageHops(m), "max_hops", maxHops,
			"property", HopsProperty)
	}
}

// pick returns the version of g that applies to the current device: the
// newest whose FOR DEVICES selector matches.
func (e *Engine) pick(c *evalCtx, g *versionGroup) *Rule {
	for _, r := range g.versions {
		if r.selector == nil || r.selector(c).truthy() {
			return r
		}
	}
	return nil
}

func (c *evalCtx) clock(e *Engine) time.Time {
	if c.now.IsZero() {
		c.now = e.now()
	}
	return c.now
}

func (e *Engine) runRule(ctx context.Context, c *evalCtx, r *Rule) (err error) {
	r.m.matched.Inc()
	if r.durableState && c.async != nil {
		c.async.state = true
	}
	c.rule, c.errs = r, 0
	c.payload = c.msg.Payload
	if r.usesNow {
		c.clock(e)
	}
	decoded := true
	if r.format != nil {
		js, derr := r.format.ToJSON(c.payload)
		if derr != nil {
			c.fail(reasonDecode)
			decoded = false
		}
		c.payload = js
	}
	if r.nFields > 0 {
		if cap(c.res) < r.nFields {
			c.res = make([]jsonpath.Result, r.nFields)
		}
		c.res = c.res[:r.nFields]
		if r.ast.Format == "raw" || !decoded {
			clear(c.res)
		} else {
			r.fields.GetAll(c.payload, c.res)
		}
	}
	if decoded {
		var ds *devShard
		if r.slots > 0 {
			ds = r.state.dev.shard(c.msg.DeviceID)
			ds.mu.Lock()
			c.dev = ds.get(c.msg.DeviceID, r.slots)
		}
		err = e.evalLocked(ctx, c, r)
		if ds != nil {
			c.dev = nil
			ds.mu.Unlock()
		}
	}
	e.countErrors(c, r)
	return err
}

func (e *Engine) countErrors(c *evalCtx, r *Rule) {
	if c.errs == 0 {
		return
	}
	for i := 0; i < numReasons; i++ {
		if c.errs&(1<<i) != 0 {
			r.m.errors[i].Inc()
		}
	}
	c.errs = 0
}

func (e *Engine) evalLocked(ctx context.Context, c *evalCtx, r *Rule) error {
	if r.win != nil || r.slots > 0 {
		if !e.eventTime(c, r) {
			return nil
		}
	}
	if r.where != nil && !r.where(c).truthy() {
		return nil
	}
	if r.win != nil {
		return r.windowAdd(ctx, e, c)
	}
	return e.emitRow(ctx, c, r)
}

// eventTime sets c.evTime; false when TIMESTAMP BY did not yield a time.
func (e *Engine) eventTime(c *evalCtx, r *Rule) bool {
	if r.tsBy == nil {
		if r.win == nil && !c.msg.Received.IsZero() {
			c.evTime = c.msg.Received.UnixNano()
		} else {
			c.evTime = c.clock(e).UnixNano()
		}
		return true
	}
	v := r.tsBy(c)
	switch v.K {
	case KNum:
		c.evTime = int64(v.N * 1e6) // milliseconds since the epoch
		return true
	case KStr:
		t, err := time.Parse(time.RFC3339Nano, v.S)
		if err == nil {
			c.evTime = t.UnixNano()
			return true
		}
	}
	c.fail(reasonBadTimestamp)
	return false
}

// emitRow projects the current message and runs the actions.
func (e *Engine) emitRow(ctx context.Context, c *evalCtx, r *Rule) error {
	payload := r.project(c)
	if payload == nil {
		return nil
	}
	m := c.msg
	var first error
	for _, ac := range r.actions {
		if err := e.deliver(ctx, c, r, ac, payload, m.Topic, int(m.QoS), m.ClientID, m.DeviceID, m.Received); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// project evaluates the columns into c.row and renders the output payload.
func (r *Rule) project(c *evalCtx) []byte {
	if r.starOnly {
		return c.msg.Payload
	}
	c.row = c.row[:0]
	for _, col := range r.cols {
		c.row = append(c.row, col.f(c))
	}
	out := c.out[:0]
	if r.star {
		body := trimSpace(c.payload)
		if len(body) < 2 || body[0] != '{' || body[len(body)-1] != '}' {
			c.fail(reasonTypeMismatch)
			out = append(out, '{')
		} else {
			out = append(out, body[:len(body)-1]...)
			if len(trimSpace(body[1:len(body)-1])) > 0 && len(r.cols) > 0 {
				out = append(out, ',')
			}
		}
	} else {
		out = append(out, '{')
	}
	for i, col := range r.cols {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, col.prefix...)
		out = appendJSON(out, c.row[i])
	}
	out = append(out, '}')
	c.out = out
	return out
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\n' || b[0] == '\t' || b[0] == '\r') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\n' || b[len(b)-1] == '\t' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

func (e *Engine) deliver(ctx context.Context, c *evalCtx, r *Rule, ac *action, payload []byte, inTopic string, inQoS int, client, device string, received time.Time) error {
	topic := inTopic
	if ac.topic != nil {
		topic = ac.topic.render(c)
	}
	qos := inQoS
	if ac.qos >= 0 {
		qos = ac.qos
	}
	om := &c.outMsg
	*om = message.Message{Topic: topic, Payload: payload, QoS: byte(qos), Retain: ac.retain,
		ClientID: client, DeviceID: device, Received: received}
	if ac.hops {
		c.hopProp[0] = message.UserProperty{Key: HopsProperty, Value: hopString(c.hops + 1)}
		om.Props.User = c.hopProp[:]
	}
	if w := c.async; w != nil && ac.durable {
		if ad, ok := ac.sink.(message.AsyncDurable); ok {
			// the caller's completion waits for this output's fsync
			w.add()
			rm, sent, kind := r.m, ac.sent, ac.kind
			ad.DeliverAsync(om, func(err error) {
				if err != nil {
					rm.errors[reasonAction].Inc()
					e.log.Warn("rule action failed", "rule", r.Name, "action", kind, "topic", topic, "err", err)
					err = fmt.Errorf("rules: rule %s: %s: %w", r.Name, kind, err)
				} else {
					rm.emitted.Inc()
					sent.Inc()
				}
				w.complete(err)
			})
			om.Payload = nil
			return nil
		}
	}
	err := ac.sink.Deliver(ctx, om)
	om.Payload = nil
	if err != nil {
		c.fail(reasonAction)
		e.log.Warn("rule action failed", "rule", r.Name, "action", ac.kind, "topic", topic, "err", err)
		err = fmt.Errorf("%s: %w", ac.kind, err)
		if c.async != nil && ac.durable {
			c.async.fail(fmt.Errorf("rules: rule %s: %w", r.Name, err))
		}
		return err
	}
	r.m.emitted.Inc()
	ac.sent.Inc()
	return nil
}

// emitGroup evaluates HAVING and the columns for a window group and runs
// the actions. The caller holds the rule state lock.
func (e *Engine) emitGroup(ctx context.Context, r *Rule, c *evalCtx, g *group, aggs []aggState, b winBounds) error {
	// A window output is delivered synchronously, also during ProcessAsync:
	// the group leaves the window state (and so the next checkpoint) only
	// once its output is durable, so a crash loses neither.
	saveAggs, saveWin, saveHops, saveAsync := c.aggs, c.win, c.hops, c.async
	c.aggs, c.win, c.hops, c.async = aggs, b, g.Hops, nil
	defer func() { c.aggs, c.win, c.hops, c.async = saveAggs, saveWin, saveHops, saveAsync }()
	if r.having != nil && !r.having(c).truthy() {
		return nil
	}
	c.row = c.row[:0]
	for _, col := range r.cols {
		c.row = append(c.row, col.f(c).clone())
	}
	out := append(c.out[:0], '{')
	for i, col := range r.cols {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, col.prefix...)
		out = appendJSON(out, c.row[i])
	}
	out = append(out, '}')
	c.out = out
	// deliver may re-enter templates that use c.tmp; payload is c.out
	var first error
	now := c.clock(e)
	for _, ac := range r.actions {
		if err := e.deliver(ctx, c, r, ac, out, g.Topic, 0, g.Client, g.Device, now); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Apply replaces the active rules with rules (compiled by this engine). It
// returns once the new set is active: every message processed afterwards
// sees the new set, every message in flight finishes with the old one.
// State of a rule (same name) carries over when its window layout and
// state functions are unchanged; otherwise it starts empty (counted in
// outpost_rules_window_groups_discarded_total).
func (e *Engine) Apply(rules []*Rule) {
	t0 := time.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	old := e.cur.Load()
	oldBy := map[string][]*Rule{}
	for _, o := range old.rules {
		oldBy[o.Name] = append(oldBy[o.Name], o)
	}
	newIDs := map[string]bool{}
	for _, r := range rules {
		newIDs[ruleID(r)] = true
	}
	carried := map[*windowState]bool{}
	for _, r := range rules {
		if r.m == nil {
			e.attachMetrics(r)
		}
		if r.state == nil && (r.win != nil || r.slots > 0) {
			r.state = e.inheritState(r, oldBy[r.Name], newIDs)
		}
		if r.state != nil && r.state.win != nil {
			carried[r.state.win] = true
		}
	}
	for _, o := range old.rules {
		if o.state != nil && o.state.win != nil && !carried[o.state.win] {
			n := o.state.openGroups()
			if n > 0 {
				e.mDiscarded.Add(n)
				e.log.Info("rule window state reset", "rule", o.Name, "version", o.Version, "groups", n)
			}
		}
	}
	rs := &ruleset{groups: map[string]*versionGroup{}, rules: append([]*Rule(nil), rules...)}
	sort.Slice(rs.rules, func(i, j int) bool {
		if rs.rules[i].Name != rs.rules[j].Name {
			return rs.rules[i].Name < rs.rules[j].Name
		}
		return rs.rules[i].Version > rs.rules[j].Version
	})
	for _, r := range rs.rules {
		g := rs.groups[r.Name]
		if g == nil {
			g = &versionGroup{name: r.Name}
			rs.groups[r.Name] = g
		}
		g.versions = append(g.versions, r)
	}
	for _, g := range rs.groups {
		g.simple = len(g.versions) == 1 && g.versions[0].selector == nil
	}
	for _, r := range rs.rules {
		en := &entry{r: r, g: rs.groups[r.Name]}
		for _, f := range r.Filters {
			rs.trie.add(f, en)
		}
	}
	e.cur.Store(rs)
	e.unregisterMetrics(old, rs)
	e.pruneWebhooks(rs)
	e.mReloads.Inc()
	e.mReloadDur.UpdateDuration(t0)
}

func ruleID(r *Rule) string { return r.Name + "@" + strconv.Itoa(r.Version) }

func (s *ruleState) openGroups() int {
	if s.win == nil {
		return 0
	}
	return int(s.win.nGroups.Load())
}

// inheritState finds the state r continues: the same version, else the
// newest old version of the same name that is being replaced.
func (e *Engine) inheritState(r *Rule, olds []*Rule, newIDs map[string]bool) *ruleState {
	var from *Rule
	for _, o := range olds {
		if o.Version == r.Version && o.state != nil {
			from = o
		}
	}
	if from == nil {
		for _, o := range olds {
			if !newIDs[ruleID(o)] && o.state != nil && (from == nil || o.Version > from.Version) {
				from = o
			}
		}
	}
	if from == nil {
		if s := e.restoredState(r); s != nil {
			return s
		}
		return newState(r)
	}
	if from.winSig == r.winSig && from.devSig == r.devSig {
		return from.state
	}
	st := newState(r)
	if from.winSig == r.winSig && r.win != nil {
		st.win = from.state.win
	}
	if from.devSig == r.devSig && r.slots > 0 {
		st.dev = from.state.dev
	}
	return st
}

func newState(r *Rule) *ruleState {
	s := &ruleState{}
	if r.win != nil {
		s.win = newWindowState()
	}
	if r.slots > 0 {
		s.dev = newDevStates()
	}
	return s
}

func (e *Engine) attachMetrics(r *Rule) {
	lbl := fmt.Sprintf(`rule=%q,version="%d"`, r.Name, r.Version)
	m := &ruleMetrics{}
	counter := func(name string) *metrics.Counter {
		m.names = append(m.names, name)
		return e.set.GetOrCreateCounter(name)
	}
	m.matched = counter("outpost_rules_matched_total{" + lbl + "}")
	m.emitted = counter("outpost_rules_emitted_total{" + lbl + "}")
	evalName := "outpost_rules_eval_duration_seconds{" + lbl + "}"
	m.names = append(m.names, evalName)
	m.eval = e.set.GetOrCreateHistogram(evalName)
	for i := range m.errors {
		m.errors[i] = counter(fmt.Sprintf(`outpost_rules_errors_total{%s,reason=%q}`, lbl, reasonNames[i]))
	}
	for _, ac := range r.actions {
		ac.sent = counter(fmt.Sprintf(`outpost_rules_action_sent_total{%s,action=%q}`, lbl, ac.kind))
	}
	r.m = m
}

// unregisterMetrics removes the series of the rules of old that no rule of
// cur uses any more (a removed version, an action dropped from a version),
// so /metrics does not list removed rules forever. A message still in
// flight with old may count into a detached series; that count is lost
// with the version.
func (e *Engine) unregisterMetrics(old, cur *ruleset) {
	used := map[string]bool{}
	for _, r := range cur.rules {
		for _, n := range r.m.names {
			used[n] = true
		}
	}
	for _, r := range old.rules {
		if r.m == nil {
			continue
		}
		for _, n := range r.m.names {
			if !used[n] {
				e.set.UnregisterMetric(n)
				used[n] = true // once
			}
		}
	}
}

func (e *Engine) pruneWebhooks(rs *ruleset) {
	used := map[string]bool{}
	for _, r := range rs.rules {
		for _, k := range r.webhookKeys {
			used[k] = true
		}
	}
	for k, h := range e.hooks {
		if used[k] {
			h.used = true
			continue
		}
		if !h.used {
			continue // compiled but not yet applied
		}
		delete(e.hooks, k)
		if cl, ok := h.sink.(interface{ Close(context.Context) error }); ok {
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				cl.Close(ctx)
			}()
		}
	}
}

// ErrorCounts returns a rule version's run-time error counters by reason
// (for the HTTP API and tests).
func (r *Rule) ErrorCounts() map[string]uint64 {
	out := map[string]uint64{}
	if r.m == nil {
		return out
	}
	for i, c := range r.m.errors {
		if n := c.Get(); n > 0 {
			out[reasonNames[i]] = n
		}
	}
	return out
}

// Counts returns matched and emitted counters.
func (r *Rule) Counts() (matched, emitted uint64) {
	if r.m == nil {
		return 0, 0
	}
	return r.m.matched.Get(), r.m.emitted.Get()
}

// DefaultIdle is the default idle timeout of event-time windows
// (Options.Idle).
const DefaultIdle = 5 * time.Second

// Tick closes processing-time windows that are due, evicts expired
// sliding-window events and advances the watermark of idle event-time
// rules (Options.Idle). Start calls it every Options.Tick.
func (e *Engine) Tick(ctx context.Context) {
	rs := e.cur.Load()
	now := e.now()
	e.mu.Lock()
	defer e.mu.Unlock()
	c := &e.tickCtx
	for _, r := range rs.rules {
		if r.win == nil || r.win.kind == "count" {
			continue
		}
		c.now, c.msg, c.rule, c.errs = now, nil, r, 0
		if wm := e.tickWatermark(r, now.UnixNano()); wm >= r.state.win.nextClose.Load() || r.win.kind == "sliding" {
			e.closeWindows(ctx, r, c, wm)
		}
		e.countErrors(c, r)
	}
}

// tickWatermark is the watermark a timer tick moves rule r to: the clock
// for processing time; for event time the watermark, or, once no message
// arrived for the idle timeout, the newest event time plus the wall-clock
// time since it arrived, minus the lateness.
func (e *Engine) tickWatermark(r *Rule, now int64) int64 {
	if !r.win.eventTime {
		return now
	}
	w := r.state.win
	wm := w.wm.Load()
	idle := e.idle.Load()
	if idle < 0 || w.maxEvent.Load() == 0 {
		return wm
	}
	arrival := w.arrival.Load()
	if arrival == 0 { // restored from a snapshot: start the idle clock now
		w.arrival.CompareAndSwap(0, now)
		return wm
	}
	since := now - arrival
	if since < idle {
		return wm
	}
	return max(wm, w.maxEvent.Load()+since-r.win.lateness)
}

// Flush closes every open time window (tumbling, hopping, session) now,
// whatever the clock. `rules test` calls it at the end of its input.
func (e *Engine) Flush(ctx context.Context) {
	rs := e.cur.Load()
	e.mu.Lock()
	defer e.mu.Unlock()
	c := &e.tickCtx
	for _, r := range rs.rules {
		if r.win == nil {
			continue
		}
		c.now, c.msg, c.rule, c.errs = e.now(), nil, r, 0
		e.flushAll(ctx, r, c)
		e.countErrors(c, r)
	}
}

// Start runs the window timer until Stop.
func (e *Engine) Start(ctx context.Context) {
	e.mu.Lock()
	if e.stopTick != nil {
		e.mu.Unlock()
		return
	}
	tctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	e.stopTick = cancel
	e.tickDone = make(chan struct{})
	t := time.NewTicker(e.tick)
	e.ticker = t
	e.mu.Unlock()
	e.ck.start(e)
	go func() {
		defer close(e.tickDone)
		defer t.Stop()
		for {
			select {
			case <-tctx.Done():
				return
			case <-t.C:
				e.Tick(tctx)
			}
		}
	}()
}

// Stop stops the window timer and closes webhook sinks (draining their
// queues until ctx ends). Window state stays in memory (Snapshot saves it).
func (e *Engine) Stop(ctx context.Context) error {
	e.mu.Lock()
	cancel, done := e.stopTick, e.tickDone
	e.stopTick, e.ticker = nil, nil
	hooks := e.hooks
	e.hooks = map[string]*webhookRef{}
	e.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
	e.ck.stop()
	var first error
	for _, h := range hooks {
		if cl, ok := h.sink.(interface{ Close(context.Context) error }); ok {
			if err := cl.Close(ctx); err != nil && first == nil {
				first = err
			}
		}
	}
	return first
}

// engineSink adapts the engine to message.Sink. When the Env has durable
// targets (uplink lanes) it is an AsyncDurable sink, so the pipeline
// acknowledges a QoS 1 publish routed to the rules only once every durable
// output the message caused is fsynced (ProcessAsync). Unlike other
// AsyncDurable sinks its completions may come out of order (a message
// without durable outputs completes at once); the broker orders PUBACKs.
type engineSink struct{ e *Engine }

var _ message.AsyncDurable = engineSink{}

func (s engineSink) Name() string { return "rules" }
func (s engineSink) Deliver(ctx context.Context, m *message.Message) error {
	return s.e.Process(ctx, m)
}

// Durable reports whether the rules can deliver to a durable target.
func (s engineSink) Durable() bool { return s.e.durable }

func (s engineSink) DeliverAsync(m *message.Message, done func(error)) {
	s.e.ProcessAsync(m, done)
}

// Sink returns the engine as a pipeline stage (Deliver = Process,
// DeliverAsync = ProcessAsync).
func (e *Engine) Sink() message.Sink { return engineSink{e} }
