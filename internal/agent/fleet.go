package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/outpost-edge/outpost/internal/buildinfo"
	"github.com/outpost-edge/outpost/internal/fleet/client"
	"github.com/outpost-edge/outpost/internal/fleet/proto"
	"github.com/outpost-edge/outpost/internal/fleet/twin"
	"github.com/outpost-edge/outpost/internal/fleet/twinsync"
	"github.com/outpost-edge/outpost/internal/module"
)

// fleetModule keeps the gateway in sync with outpost-server (docs/fleet.md):
// the desired state streamed by the server is applied through the agent's
// own reload paths, rule sets as files in rules.dir. Built only when the
// config has a `fleet:` section, so a gateway without it pays nothing.
type fleetModule struct {
	a       *Agent
	mu      sync.Mutex
	cfg     client.Config
	syncer  *client.Syncer
	cancel  context.CancelFunc
	done    chan struct{}
	started time.Time
	err     error
	twins   *twinsync.Service
	// lastRecv and lastAt are the broker's received count at the last
	// live() call, for the message rate.
	lastRecv uint64
	lastAt   time.Time
}

func (a *Agent) newFleet() module.Typed[client.Config] { return &fleetModule{a: a} }

func (m *fleetModule) Name() string { return "fleet" }

func (m *fleetModule) Init(_ context.Context, c *client.Config) error {
	m.mu.Lock()
	m.cfg = *c
	m.mu.Unlock()
	return nil
}

// Start loads the identity and the cached desired state (applied at once,
// offline) and starts syncing. A gateway that is not enrolled runs
// degraded: it is not an error to start before `outpost enroll`.
func (m *fleetModule) Start(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.started = time.Now()
	if _, err := client.LoadIdentity(m.cfg.Dir); errors.Is(err, client.ErrNotEnrolled) {
		m.err = err
		m.a.log.Warn("fleet: not enrolled; running without the fleet server", "module", "fleet", "dir", m.cfg.Dir)
		return nil
	} else if err != nil {
		return err
	}
	// Device twins first: the cached desired state applied by client.New
	// includes the twins' desired side.
	tw, err := twinsync.Open(twinsync.Options{Dir: filepath.Join(m.cfg.Dir, "twins"), Gateway: m.a.Config().NodeID, Broker: m.a.Broker,
		Uplink: syncerUplink{m}, Logger: m.a.log.With("module", "fleet"), Metrics: m.a.metrics, RetryMax: m.cfg.ReconnectMax.D()})
	if err != nil {
		return err
	}
	if err := tw.Start(context.Background()); err != nil {
		tw.Close()
		return err
	}
	m.twins = tw
	m.err = errors.New("starting: waiting for the other modules")
	runCtx, cancel := context.WithCancel(context.Background())
	m.cancel, m.done = cancel, make(chan struct{})
	cfg := m.cfg
	// The cached desired state is applied once every module runs: a
	// config fragment reconfigures modules, which must have started.
	go func() {
		defer close(m.done)
		select {
		case <-m.a.Ready:
		case <-runCtx.Done():
			return
		}
		fleetApplier{a: m.a}.restoreAgentVersion()
		s, err := client.New(runCtx, client.Options{Dir: cfg.Dir, Server: cfg.Server, Servers: cfg.Servers, Applier: fleetApplier{a: m.a, twins: tw},
			Logger: m.a.log.With("module", "fleet"), Facts: m.facts, ReconnectMax: cfg.ReconnectMax.D(),
			Live: m.live, LiveEvery: cfg.StatusEvery.D()})
		m.mu.Lock()
		if err != nil || runCtx.Err() != nil {
			m.err = err
			m.mu.Unlock()
			if err != nil {
				m.a.log.Error("fleet: not syncing", "module", "fleet", "err", err)
			}
			return
		}
		m.syncer, m.err = s, nil
		m.mu.Unlock()
		s.Run(runCtx)
	}()
	return nil
}

func (m *fleetModule) Stop(ctx context.Context) error {
	m.mu.Lock()
	cancel, done, tw := m.cancel, m.done, m.twins
	m.cancel, m.syncer, m.twins = nil, nil, nil
	m.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	return tw.Close()
}

// syncerUplink sends reported twin updates through the running syncer.
type syncerUplink struct{ m *fleetModule }

func (u syncerUplink) PostReported(ctx context.Context, ups []twin.Reported) error {
	u.m.mu.Lock()
	s := u.m.syncer
	u.m.mu.Unlock()
	if s == nil {
		return errors.New("not connected to a fleet server")
	}
	return s.PostReported(ctx, ups)
}

// ListTwins reads the gateway's twins back from the server (twinsync
// re-seeds from it when its state was lost).
func (u syncerUplink) ListTwins(ctx context.Context) ([]twin.Twin, error) {
	u.m.mu.Lock()
	s := u.m.syncer
	u.m.mu.Unlock()
	if s == nil {
		return nil, errors.New("not connected to a fleet server")
	}
	return s.ListTwins(ctx)
}

func (m *fleetModule) Health() module.Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.syncer == nil {
		if m.err != nil {
			return module.Status{State: module.StateDegraded, Detail: m.err.Error()}
		}
		return module.Status{State: module.StateStopped}
	}
	st := m.syncer.State()
	if st.RenewErr != nil {
		return module.Status{State: module.StateDegraded, Detail: "certificate renewal failing: " + st.RenewErr.Error()}
	}
	if st.Connected {
		return module.Status{State: module.StateReady, Detail: fmt.Sprintf("in sync (resourceVersion %d)", st.ResourceVersion)}
	}
	d := fmt.Sprintf("offline, running the cached desired state (resourceVersion %d)", st.ResourceVersion)
	if st.Err != nil {
		d += ": " + st.Err.Error()
	}
	return module.Status{State: module.StateDegraded, Detail: d}
}

// facts are reported to the server with every status.
func (m *fleetModule) facts() map[string]string {
	f := map[string]string{"arch": runtime.GOARCH, "os": runtime.GOOS, "version": buildinfo.Read().Version,
		"node_id": m.a.Config().NodeID, "uptime": time.Since(m.started).Round(time.Second).String()}
	if h, err := os.Hostname(); err == nil {
		f["hostname"] = h
	}
	var st syscall.Statfs_t
	if syscall.Statfs(m.a.Config().DataDir, &st) == nil {
		f["free_disk_bytes"] = fmt.Sprint(st.Bavail * uint64(st.Bsize))
	}
	return f
}

// live is the gateway's live figures for the fleet: msg_rate (messages
// per second the broker accepted since the last call) and queue_depth
// (uplink backlog), both to two significant digits so that a steady
// gateway does not report on every poll.
func (m *fleetModule) live() map[string]string {
	now, n := time.Now(), m.a.Broker.Received()
	m.mu.Lock()
	last, at := m.lastRecv, m.lastAt
	m.lastRecv, m.lastAt = n, now
	m.mu.Unlock()
	out := map[string]string{"queue_depth": strconv.FormatInt(twoDigits(fleetApplier{a: m.a}.backlog()), 10)}
	if !at.IsZero() && n >= last {
		rate := float64(n-last) / now.Sub(at).Seconds()
		out["msg_rate"] = strconv.FormatFloat(float64(twoDigits(int64(rate*10+0.5)))/10, 'f', -1, 64)
	}
	return out
}

// twoDigits rounds n to two significant digits.
func twoDigits(n int64) int64 {
	p := int64(1)
	for n/p >= 100 {
		p *= 10
	}
	return (n + p/2) / p * p
}

// fleetApplier applies desired objects through the agent's reload paths.
type fleetApplier struct {
	a     *Agent
	twins *twinsync.Service
}

// fleetRuleFile is the rules.dir file of a fleet rule set.
func fleetRuleFile(name string) string { return "fleet-" + name + ".sql" }

func (f fleetApplier) rulesDir() (string, error) {
	if f.a.Rules == nil || f.a.Rules.Store() == nil {
		return "", errors.New("the rule engine is not enabled on this gateway (no rules: section)")
	}
	dir := f.a.Rules.Store().Dir()
	if dir == "" {
		return "", errors.New("the rule engine has no rules.dir on this gateway")
	}
	return dir, nil
}

// Apply validates first and changes nothing on error. What the slot runs
// is measured from here on (Measure).
func (f fleetApplier) Apply(ctx context.Context, d proto.Desired) error {
	if err := f.apply(ctx, d); err != nil {
		return err
	}
	b := fleetBaseline{queue: f.backlog()}
	if d.Kind == proto.KindRuleSet {
		b.errors = f.ruleErrors(d.Name)
	}
	f.a.fleetBase.Store(d.Key(), b)
	return nil
}

// fleetBaseline is what a slot's figures were when it was applied.
type fleetBaseline struct {
	errors uint64
	queue  int64
}

// Measure implements client.Measurer: a fleet rule set's run-time errors
// since it was applied (its rules' evaluation and action errors), and the
// uplink backlog now and when the slot was applied (-1 when this process
// did not apply it: after a restart the reported value stays).
func (f fleetApplier) Measure(kind, name string) (errs, queue, queueStart int64, ok bool) {
	queueStart = -1
	var base fleetBaseline
	if v, found := f.a.fleetBase.Load(kind + "/" + name); found {
		base = v.(fleetBaseline)
		queueStart = base.queue
	}
	if kind == proto.KindRuleSet {
		if n := f.ruleErrors(name); n > base.errors {
			errs = int64(n - base.errors)
		}
	}
	return errs, f.backlog(), queueStart, true
}

// ruleErrors sums the error counters of the rules loaded from a fleet
// rule set's file.
func (f fleetApplier) ruleErrors(slot string) uint64 {
	if f.a.Rules == nil || f.a.Rules.Engine() == nil {
		return 0
	}
	file := fleetRuleFile(slot)
	var n uint64
	for _, r := range f.a.Rules.Engine().Rules() {
		if filepath.Base(r.File) != file {
			continue
		}
		for _, c := range r.ErrorCounts() {
			n += c
		}
	}
	return n
}

// backlog is the records waiting in every uplink lane.
func (f fleetApplier) backlog() int64 {
	if f.a.Uplink == nil {
		return 0
	}
	var n int64
	for _, l := range f.a.Uplink.Status().Lanes {
		n += l.Backlog
	}
	return n
}

func (f fleetApplier) apply(ctx context.Context, d proto.Desired) error {
	switch d.Kind {
	case proto.KindRuleSet:
		var spec struct {
			SQL string `json:"sql"`
		}
		if err := json.Unmarshal(d.Spec, &spec); err != nil {
			return fmt.Errorf("spec: %w", err)
		}
		dir, err := f.rulesDir()
		if err != nil {
			return err
		}
		file := fleetRuleFile(d.Name)
		if _, err := f.a.Rules.Engine().Compile(file, spec.SQL); err != nil {
			return err // file:line:col per error
		}
		path := filepath.Join(dir, file)
		old, oldErr := os.ReadFile(path)
		if err := writeFileAtomic(path, []byte(spec.SQL)); err != nil {
			return err
		}
		f.a.Rules.Store().Reload()
		if errs := f.fileErrors(file); len(errs) > 0 {
			// Compiled alone but rejected with the others (a duplicate rule
			// version): put the previous file back.
			if oldErr == nil {
				writeFileAtomic(path, old)
			} else {
				os.Remove(path)
			}
			f.a.Rules.Store().Reload()
			return errors.New(strings.Join(errs, "; "))
		}
		return nil
	case proto.KindComponent:
		return f.applyComponent(ctx, d)
	case proto.KindAgentVersion:
		return f.applyAgentVersion(ctx, d)
	case proto.KindFunction:
		return f.applyFunction(ctx, d)
	case proto.KindConfig:
		data, err := parseFragmentSpec(d.Name, d.Spec)
		if err != nil {
			return err
		}
		return f.a.applyFragment(ctx, d.Name, data)
	case proto.KindNetpol:
		return f.a.applyNetpolObject(ctx, d.Name, d.Spec)
	case proto.KindTwin:
		if f.twins == nil {
			return errors.New("device twins are not running on this gateway")
		}
		var spec twin.Spec
		if err := json.Unmarshal(d.Spec, &spec); err != nil {
			return fmt.Errorf("spec: %w", err)
		}
		return f.twins.SetDesired(d.Name, spec)
	}
	return fmt.Errorf("kind %q is not supported by this agent version", d.Kind)
}

// ReapplyAtStart: config fragments and netpol objects live in the agent's
// memory only (merged over the config file), so after a restart the
// cached ones are applied again although the cache says they were.
func (f fleetApplier) ReapplyAtStart(kind string) bool {
	return kind == proto.KindConfig || kind == proto.KindNetpol
}

func (f fleetApplier) fileErrors(file string) []string {
	for _, st := range f.a.Rules.Store().Status() {
		if st.File == file {
			return st.Errors
		}
	}
	return nil
}

func (f fleetApplier) Remove(ctx context.Context, kind, name string) error {
	f.a.fleetBase.Delete(kind + "/" + name)
	switch kind {
	case proto.KindConfig:
		return f.a.applyFragment(ctx, name, nil)
	case proto.KindNetpol:
		return f.a.applyFragment(ctx, netpolFragment(name), nil)
	case proto.KindComponent:
		return f.removeComponent(ctx, name)
	case proto.KindAgentVersion:
		return f.removeAgentVersion()
	case proto.KindFunction:
		return f.removeFunction(ctx, name)
	case proto.KindTwin:
		if f.twins == nil {
			return nil
		}
		return f.twins.Delete(name) // deleted on the server: drop the cached copy
	}
	if kind != proto.KindRuleSet {
		return nil // nothing was applied for other kinds
	}
	dir, err := f.rulesDir()
	if err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(dir, fleetRuleFile(name))); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	f.a.Rules.Store().Reload()
	return nil
}

// writeFileAtomic writes via a hidden temp file (the rule store ignores
// dot files), fsync and rename.
func writeFileAtomic(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".fleet-*.tmp")
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
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
