package supervisor

import (
	"context"
	"errors"
	"fmt"
	"github.com/outpost-edge/outpost/internal/netpol"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/outpost-edge/outpost/internal/module"
	"github.com/outpost-edge/outpost/internal/supervisor/cgroup"
	"github.com/outpost-edge/outpost/internal/supervisor/container"
	"github.com/outpost-edge/outpost/internal/supervisor/recipe"
)

// Sentinel errors.
var (
	// ErrNotFound is returned for a component name that is not loaded.
	ErrNotFound = errors.New("supervisor: no such component")
	// ErrNotRunning is returned by calls that need a started supervisor.
	ErrNotRunning = errors.New("supervisor: not started")
	// ErrRestartRequired is returned by Reconfigure for changes that need
	// the module to be restarted (directories, cgroup settings).
	ErrRestartRequired = errors.New("supervisor: change requires a restart")
)

// Options are the supervisor's collaborators. All are optional.
type Options struct {
	Logger    *slog.Logger
	Identity  Identity     // nil: components get no bus credentials
	Publisher Publisher    // nil: state is not published on the bus
	Bus       Subscriber   // nil: mqtt heartbeat checks always fail
	Metrics   *metrics.Set // nil: a private set
	// After names the modules that must start first (module.Deps), e.g.
	// "broker" when Identity is the embedded broker.
	After []string
	// Runtime runs kind: container components; nil: the Docker Engine
	// API at supervisor.containers.socket (or a default socket).
	Runtime container.Runtime
	// Egress enforces recipes' `egress:` lists; nil: a component that
	// declares egress is not started (fail closed, ErrNoEgress).
	Egress EgressEnforcer
	// EgressAlways returns what every component with an egress list may
	// reach: the local broker's listeners (asked at each start).
	EgressAlways func() []netpol.EgressAllow
}

// Supervisor runs components declared by recipes. It implements
// module.Typed (name "supervisor") and module.TypedReconfigurable.
type Supervisor struct {
	opts            Options
	log             *slog.Logger
	http            *http.Client
	healthTransport *http.Transport
	reaper          *reaper
	metrics         *metrics.Set

	mu       sync.Mutex
	cfg      Config
	cg       *cgroup.Manager
	comps    map[string]*component
	graph    *recipe.Graph
	problems map[string]error // recipe problems by file
	invalid  map[string]error // components (by name) whose recipe is rejected
	changeCh chan struct{}    // closed and replaced on every state change
	running  bool
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	pub      *statePublisher
	reloadMu sync.Mutex
	watchW   *watcher
	rt       container.Runtime // see runtime()
	rtSocket string
	imageMu  sync.Mutex // serializes image archive loads
}

var (
	_ module.Typed[Config]               = (*Supervisor)(nil)
	_ module.TypedReconfigurable[Config] = (*Supervisor)(nil)
	_ module.Deps                        = (*Supervisor)(nil)
)

// New returns a supervisor; Init configures it and Start runs it.
func New(opts Options) *Supervisor {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ms := opts.Metrics
	if ms == nil {
		ms = metrics.NewSet()
	}
	tr := &http.Transport{DialContext: (&net.Dialer{Timeout: 5 * time.Second}).DialContext, DisableKeepAlives: true}
	return &Supervisor{
		opts:            opts,
		log:             log.With("module", "supervisor"),
		http:            &http.Client{Timeout: 10 * time.Minute},
		healthTransport: tr,
		reaper:          newReaper(),
		metrics:         ms,
		comps:           map[string]*component{},
		problems:        map[string]error{},
		invalid:         map[string]error{},
		changeCh:        make(chan struct{}),
	}
}

// Name implements module.Typed.
func (s *Supervisor) Name() string { return "supervisor" }

// DependsOn implements module.Deps (Options.After): the bus must be up
// before components get credentials on it.
func (s *Supervisor) DependsOn() []string { return append([]string(nil), s.opts.After...) }

// Init prepares directories; pc is defaulted and validated (module.Of).
func (s *Supervisor) Init(_ context.Context, pc *Config) error {
	c := *pc
	for _, d := range []string{c.StateDir, c.LogDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("supervisor: %w", err)
		}
	}
	s.mu.Lock()
	s.cfg = c
	s.mu.Unlock()
	return nil
}

// Start detects cgroups, stops leftovers of a previous agent run, loads the
// recipes and starts every component (each as soon as its hard
// dependencies are healthy). Invalid recipes are reported, not fatal.
func (s *Supervisor) Start(ctx context.Context) error {
	s.mu.Lock()
	if s.running {
		s.mu.Unlock()
		return nil
	}
	cfg := s.cfg
	if cfg.RecipesDir == "" {
		cfg.SetDefaults()
		s.cfg = cfg
	}
	s.cg = cgroup.DetectUnder(cfg.Cgroup.Root, cfg.Cgroup.Parent, cfg.Cgroup.Mode)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.running = true
	if s.opts.Publisher != nil {
		s.pub = newStatePublisher(s.opts.Publisher, func(topic string, err error) {
			s.log.Warn("publish component state failed", "topic", topic, "err", err)
		})
	}
	s.mu.Unlock()

	if err := becomeSubreaper(); err != nil {
		s.log.Warn("cannot become child subreaper; orphans of components go to init", "err", err)
	}
	switch s.cg.Mode() {
	case cgroup.None:
		s.log.Warn("cgroups unavailable: components run without resource limits", "reason", s.cg.Reason())
	default:
		s.log.Info("cgroups", "mode", string(s.cg.Mode()), "parent", cfg.Cgroup.Parent, "note", s.cg.Reason())
	}
	s.wg.Add(1)
	go s.reapLoop()

	s.stopLeftovers()
	if err := os.MkdirAll(cfg.RecipesDir, 0o755); err != nil {
		return fmt.Errorf("supervisor: %w", err)
	}
	if err := s.Reload(ctx); err != nil {
		return err
	}
	if *cfg.Watch {
		w, err := s.watch(cfg.RecipesDir)
		if err != nil {
			s.log.Warn("cannot watch recipes; reload by hand", "dir", cfg.RecipesDir, "err", err)
		} else {
			s.mu.Lock()
			s.watchW = w
			s.mu.Unlock()
		}
	}
	return nil
}

func (s *Supervisor) reapLoop() {
	defer s.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			s.reaper.reapNow()
			return
		case <-t.C:
			if s.reaper.pending() > 0 {
				s.reaper.reapNow()
			}
		}
	}
}

// Stop stops every component, dependents before their dependencies (each
// level concurrently), logging each level's timing. Bounded by ctx.
func (s *Supervisor) Stop(ctx context.Context) error {
	s.mu.Lock()
	if !s.running {
		s.mu.Unlock()
		return nil
	}
	s.running = false
	w := s.watchW
	s.watchW = nil
	g := s.graph
	comps := make(map[string]*component, len(s.comps))
	for k, v := range s.comps {
		comps[k] = v
	}
	s.mu.Unlock()
	if w != nil {
		w.close()
	}
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	var errs []error
	var levels [][]string
	if g != nil {
		levels = g.StopLevels()
	}
	seen := map[string]bool{}
	for _, l := range levels {
		for _, n := range l {
			seen[n] = true
		}
	}
	var rest []string
	for n := range comps {
		if !seen[n] {
			rest = append(rest, n)
		}
	}
	if len(rest) > 0 {
		levels = append([][]string{rest}, levels...)
	}
	for i, lvl := range levels {
		t0 := time.Now()
		var wg sync.WaitGroup
		var mu sync.Mutex
		for _, n := range lvl {
			c := comps[n]
			if c == nil {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := c.stop(ctx); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		s.log.Info("stopped components", "level", i, "components", strings.Join(lvl, ","), "took", time.Since(t0).Round(time.Microsecond))
	}
	s.cancel()
	s.wg.Wait()
	if s.pub != nil {
		s.pub.close()
	}
	// Empty groups go; a later Start begins from scratch.
	for _, c := range comps {
		_ = c.group.Remove()
	}
	s.mu.Lock()
	s.comps = map[string]*component{}
	s.graph = nil
	s.pub = nil
	s.mu.Unlock()
	return errors.Join(errs...)
}

// Health implements module.Typed: degraded when a component is broken,
// failed to install or has an invalid recipe, or when limits cannot be
// enforced (cgroups unavailable).
func (s *Supervisor) Health() module.Status {
	s.mu.Lock()
	running := s.running
	cg := s.cg
	comps := make([]*component, 0, len(s.comps))
	for _, c := range s.comps {
		comps = append(comps, c)
	}
	var invalid []string
	for n := range s.invalid {
		invalid = append(invalid, n)
	}
	for f := range s.problems {
		invalid = append(invalid, filepath.Base(f))
	}
	s.mu.Unlock()
	if !running {
		return module.Status{State: module.StateStopped}
	}
	var notes []string
	if cg != nil && cg.Mode() == cgroup.None {
		notes = append(notes, "cgroups unavailable, components run without resource limits: "+cg.Reason())
	}
	var broken, failed, noRuntime []string
	for _, c := range comps {
		c.mu.Lock()
		st, reason := c.state, c.reason
		c.mu.Unlock()
		switch st {
		case StateBroken:
			broken = append(broken, c.name)
		case StateInstallFailed:
			failed = append(failed, c.name)
		case StateWaiting:
			if strings.HasPrefix(reason, waitingForRuntime) {
				noRuntime = append(noRuntime, c.name)
			}
		}
	}
	sort.Strings(noRuntime)
	if len(noRuntime) > 0 {
		notes = append(notes, "waiting for the container runtime: "+strings.Join(noRuntime, ", "))
	}
	sort.Strings(broken)
	sort.Strings(failed)
	sort.Strings(invalid)
	if len(broken) > 0 {
		notes = append(notes, "broken: "+strings.Join(broken, ", "))
	}
	if len(failed) > 0 {
		notes = append(notes, "install failed: "+strings.Join(failed, ", "))
	}
	if len(invalid) > 0 {
		notes = append(notes, "invalid recipes: "+strings.Join(invalid, ", "))
	}
	if len(notes) > 0 {
		return module.Status{State: module.StateDegraded, Detail: strings.Join(notes, "; ")}
	}
	return module.Status{State: module.StateReady, Detail: fmt.Sprintf("%d components", len(comps))}
}

// Reconfigure applies a changed config: overrides restart only the
// components they change; log rotation and grace period apply from the next
// start. Changed directories or cgroup settings return ErrRestartRequired.
func (s *Supervisor) Reconfigure(ctx context.Context, pc *Config) error {
	c := *pc
	s.mu.Lock()
	old := s.cfg
	if c.RecipesDir != old.RecipesDir || c.StateDir != old.StateDir || c.LogDir != old.LogDir || c.Cgroup != old.Cgroup || *c.Watch != *old.Watch {
		s.mu.Unlock()
		return fmt.Errorf("%w: recipes_dir, state_dir, log_dir, cgroup and watch apply at start", ErrRestartRequired)
	}
	s.cfg = c
	running := s.running
	s.mu.Unlock()
	if !running {
		return nil
	}
	return s.Reload(ctx)
}

// changes returns a channel closed at the next state change of any
// component.
func (s *Supervisor) changes() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changeCh
}

// changed is called by a component after its state changed.
func (s *Supervisor) changed(c *component) {
	s.mu.Lock()
	close(s.changeCh)
	s.changeCh = make(chan struct{})
	pub := s.pub
	s.mu.Unlock()
	if pub != nil {
		st := c.status()
		pub.send(StateTopic(c.name), &st)
	}
	s.metrics.GetOrCreateCounter(`outpost_supervisor_state_changes_total`).Inc()
}

// Metrics: outpost_supervisor_starts_total{component}, _restarts_total,
// _broken_total, _oom_kills_total (per component) and
// _state_changes_total, on the Options.Metrics set.

// ready reports whether a component counts as up for its hard dependents.
func (c *component) ready() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state == StateHealthy || (c.state == StateRunning && c.recipe.Health == nil)
}

// depsBlocker returns why r cannot start yet ("" when it can).
func (s *Supervisor) depsBlocker(r *recipe.Recipe) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var waiting []string
	for _, d := range r.DependsOn {
		dc := s.comps[d.Name]
		if dc == nil {
			if d.Type == recipe.Hard {
				waiting = append(waiting, d.Name+" (not loaded)")
			}
			continue
		}
		if d.Type == recipe.Hard {
			if !dc.ready() {
				waiting = append(waiting, d.Name)
			}
			continue
		}
		dc.mu.Lock()
		st := dc.state
		dc.mu.Unlock()
		if st == StateInstalling || st == StateStarting {
			waiting = append(waiting, d.Name+" (soft)")
		}
	}
	if len(waiting) == 0 {
		return ""
	}
	return "waiting for " + strings.Join(waiting, ", ")
}

// depGens records the start generation of each hard dependency.
func (s *Supervisor) depGens(r *recipe.Recipe) map[string]uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]uint64{}
	for _, d := range r.DependsOn {
		if d.Type != recipe.Hard {
			continue
		}
		if dc := s.comps[d.Name]; dc != nil {
			dc.mu.Lock()
			out[d.Name] = dc.gen
			dc.mu.Unlock()
		}
	}
	return out
}

// depLost returns a hard dependency that stopped or restarted since gens
// was taken ("" if none).
func (s *Supervisor) depLost(r *recipe.Recipe, gens map[string]uint64) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, g := range gens {
		dc := s.comps[name]
		if dc == nil {
			return name
		}
		dc.mu.Lock()
		lost := dc.gen != g || !dc.state.up() && dc.state != StateStopping
		if dc.state == StateStopping {
			lost = true
		}
		dc.mu.Unlock()
		if lost {
			return name
		}
	}
	return ""
}

func (c *component) finalStop() {
	c.setState(StateStopped, "")
}

// Reload reads the recipes directory again and applies the differences:
// new components start, removed ones stop, changed ones (recipe file or
// override) restart together with their hard dependents; the others keep
// running. A recipe that became invalid leaves the running version in
// place and is reported.
func (s *Supervisor) Reload(ctx context.Context) error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	s.mu.Lock()
	if !s.running {
		s.mu.Unlock()
		return ErrNotRunning
	}
	cfg := s.cfg
	s.mu.Unlock()
	loaded, fileErrs, err := recipe.LoadDir(cfg.RecipesDir)
	if err != nil {
		return fmt.Errorf("supervisor: %w", err)
	}
	loaded = s.applyContainerPolicy(loaded, fileErrs, cfg.Containers)
	for f, e := range fileErrs {
		s.log.Error("invalid recipe", "file", f, "err", e)
	}

	// The candidate set: every valid file; a component whose file became
	// invalid keeps its running recipe (matched by file name).
	s.mu.Lock()
	old := map[string]*recipe.Recipe{}
	oldByFile := map[string]*recipe.Recipe{}
	for n, c := range s.comps {
		c.mu.Lock()
		r := c.recipe
		if c.pending != nil {
			r = c.pending
		}
		c.mu.Unlock()
		old[n] = r
		oldByFile[r.File] = r
	}
	s.mu.Unlock()
	cand := append([]*recipe.Recipe(nil), loaded...)
	for f := range fileErrs {
		if r, ok := oldByFile[f]; ok {
			cand = append(cand, r)
		}
	}
	// Resolve; a component rejected by the graph whose old recipe was fine
	// falls back to it, until stable.
	var g *recipe.Graph
	var rejected map[string]error
	kept := map[string]error{} // changed recipes rejected in favour of the running one
	for i := 0; i < 10; i++ {
		g, rejected = recipe.Resolve(cand)
		fellBack := false
		for name, rerr := range rejected {
			prev, ok := old[name]
			if !ok {
				continue
			}
			for j, r := range cand {
				if r.Name == name && r != prev {
					cand[j] = prev
					fellBack = true
					if r.Hash != prev.Hash {
						kept[name] = rerr
					}
				}
			}
		}
		if !fellBack {
			break
		}
	}
	for name, rerr := range kept {
		if _, still := rejected[name]; !still {
			rejected[name] = rerr
		}
	}
	invalid := map[string]error{}
	problems := map[string]error{}
	for f, e := range fileErrs {
		problems[f] = e
	}
	for k, e := range rejected {
		s.log.Error("recipe rejected", "component", k, "err", e)
		if recipe.IsRecipeFile(k) && strings.Contains(k, string(filepath.Separator)) {
			problems[k] = e
		} else {
			invalid[k] = e
		}
	}

	s.mu.Lock()
	s.graph = g
	s.problems = problems
	s.invalid = invalid
	var toStop []*component
	var toStart []*component
	for name, c := range s.comps {
		if _, ok := g.Get(name); !ok {
			toStop = append(toStop, c)
		}
	}
	for _, name := range g.Order() {
		r, _ := g.Get(name)
		ov := cfg.Overrides[name]
		c, ok := s.comps[name]
		if !ok {
			c = newComponent(s, r, ov)
			s.comps[name] = c
			toStart = append(toStart, c)
			continue
		}
		c.mu.Lock()
		cur, curOv := c.recipe, c.override
		if c.pending != nil {
			cur = c.pending
		}
		if c.pendOvr != nil {
			curOv = *c.pendOvr
		}
		c.mu.Unlock()
		if cur.Hash != r.Hash || cur.File != r.File || !reflect.DeepEqual(curOv, ov) {
			s.log.Info("component changed; restarting it", "component", name)
			c.update(r, ov)
		}
	}
	s.mu.Unlock()

	// Removed components: stop dependents-first is implied (their
	// dependents were rejected or changed in the same pass).
	for _, c := range toStop {
		s.log.Info("component removed; stopping it", "component", c.name)
		if err := c.stop(ctx); err != nil {
			s.log.Error("stop removed component", "component", c.name, "err", err)
			continue
		}
		s.mu.Lock()
		delete(s.comps, c.name)
		pub := s.pub
		s.mu.Unlock()
		_ = c.group.Remove()
		if eg := s.opts.Egress; eg != nil {
			if err := eg.Remove(c.name); err != nil {
				s.log.Warn("remove egress group", "component", c.name, "err", err)
			}
		}
		if pub != nil {
			pub.send(StateTopic(c.name), nil)
		}
	}
	for _, c := range toStart {
		s.openLog(c)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			c.loop(s.ctx)
			if c.out.file != nil {
				_ = c.out.file.Close()
			}
		}()
	}
	if len(toStart) > 0 || len(toStop) > 0 {
		s.mu.Lock()
		close(s.changeCh)
		s.changeCh = make(chan struct{})
		s.mu.Unlock()
	}
	s.afterReload(toStop)
	return nil
}

func (s *Supervisor) openLog(c *component) {
	f, err := openRotating(s.logPath(c.name), int64(s.cfg.Log.MaxSize), s.cfg.Log.MaxFiles)
	if err != nil {
		s.log.Error("cannot open component log; output goes to slog only", "component", c.name, "err", err)
		return
	}
	c.out.file = f
}

func (s *Supervisor) logPath(name string) string {
	return filepath.Join(s.cfg.LogDir, name+".log")
}

// stopLeftovers stops processes a previous agent run left behind: every
// process in a component cgroup under our parent, and every process named
// by a component pid file that is still the same process. Nothing is
// re-adopted: components are started again cleanly.
func (s *Supervisor) stopLeftovers() {
	grace := s.cfg.GracePeriod.D()
	names, err := s.cg.Names()
	if err != nil {
		s.log.Warn("cannot list component cgroups", "err", err)
	}
	var wg sync.WaitGroup
	for _, n := range names {
		g := s.cg.Group(n)
		if pids, _ := g.Pids(); len(pids) > 0 {
			s.log.Warn("stopping leftover processes of a previous run", "component", n, "pids", fmt.Sprint(pids))
			wg.Add(1)
			go func() {
				defer wg.Done()
				terminateGroup(g, grace, s.reaper)
			}()
		}
	}
	wg.Wait()
	pidFiles, _ := filepath.Glob(filepath.Join(s.cfg.StateDir, "*", "pid"))
	for _, pf := range pidFiles {
		name := filepath.Base(filepath.Dir(pf))
		if pid, ok := readPidFile(pf); ok {
			s.log.Warn("stopping leftover process of a previous run", "component", name, "pid", pid)
			terminatePgroup(pid, grace, s.reaper)
		}
		_ = os.Remove(pf)
	}
	for _, n := range names {
		_ = s.cg.Group(n).Remove()
	}
}

// terminatePgroup stops a process group we do not parent: SIGTERM, wait
// up to grace, SIGKILL.
func terminatePgroup(pgid int, grace time.Duration, r *reaper) {
	killSig := func(sig int) {
		for _, p := range append(pgroupMembers(pgid), pgid) {
			_ = syscallKill(p, sig)
		}
	}
	killSig(15)
	killSig(18)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if len(pgroupMembers(pgid)) == 0 {
			if st, err := procState(pgid); err != nil || st == 'Z' {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	killTree(nil, pgid, 0, r)
}

// Components returns every component's status, sorted by name, including
// components whose recipe is invalid.
func (s *Supervisor) Components() []Status {
	s.mu.Lock()
	comps := make([]*component, 0, len(s.comps))
	for _, c := range s.comps {
		comps = append(comps, c)
	}
	invalid := make(map[string]error, len(s.invalid))
	for k, v := range s.invalid {
		invalid[k] = v
	}
	problems := make(map[string]error, len(s.problems))
	for k, v := range s.problems {
		problems[k] = v
	}
	s.mu.Unlock()
	out := make([]Status, 0, len(comps)+len(invalid))
	for _, c := range comps {
		st := c.status()
		if e, ok := invalid[c.name]; ok {
			st.Error = e.Error()
			delete(invalid, c.name)
		}
		for f, e := range problems {
			if f == st.Recipe {
				st.Error = e.Error()
			}
		}
		out = append(out, st)
	}
	for n, e := range invalid {
		out = append(out, Status{Name: n, State: StateInvalid, Error: e.Error()})
	}
	for f, e := range problems {
		known := false
		for _, st := range out {
			if st.Recipe == f {
				known = true
			}
		}
		if !known {
			out = append(out, Status{Name: strings.TrimSuffix(filepath.Base(f), filepath.Ext(f)), State: StateInvalid, Recipe: f, Error: e.Error()})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	s.containerStats(out)
	return out
}

// Component returns one component's status.
func (s *Supervisor) Component(name string) (Status, error) {
	for _, st := range s.Components() {
		if st.Name == name {
			return st, nil
		}
	}
	return Status{}, fmt.Errorf("%w: %s", ErrNotFound, name)
}

// Restart restarts a component by hand (also clearing broken and
// install_failed states and its restart history).
func (s *Supervisor) Restart(name string) error {
	s.mu.Lock()
	c := s.comps[name]
	s.mu.Unlock()
	if c == nil {
		return fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	c.restart()
	return nil
}

// Logs returns the last n lines of a component's log file.
func (s *Supervisor) Logs(name string, n int) ([]string, error) {
	if !validName(name) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	s.mu.Lock()
	_, known := s.comps[name]
	path := s.logPath(name)
	files := s.cfg.Log.MaxFiles
	s.mu.Unlock()
	lines, err := tailFile(path, n, files)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && !known {
			return nil, fmt.Errorf("%w: %s", ErrNotFound, name)
		}
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("supervisor: logs %s: %w", name, err)
	}
	return lines, nil
}

// CgroupMode returns the cgroup mode in use and the reason for it.
func (s *Supervisor) CgroupMode() (cgroup.Mode, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cg == nil {
		return cgroup.None, "not started"
	}
	return s.cg.Mode(), s.cg.Reason()
}
