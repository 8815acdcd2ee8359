package ota

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/outpost-edge/outpost/internal/buildinfo"
	"github.com/outpost-edge/outpost/internal/module"
	"github.com/outpost-edge/outpost/internal/ota/tuf"
)

// Options configures an Updater.
type Options struct {
	Log     *slog.Logger
	Metrics *metrics.Set // nil: a private set
	// Version is the running version; default buildinfo.Version.
	Version string
	// Restart is called (on its own goroutine) after a new version is
	// installed. It should stop the agent's modules in order, this one
	// included, and then call ota.Restart(cfg). Default: ota.Restart(cfg)
	// directly, without stopping anything.
	Restart func(cfg Config)
}

// Status is what GET /api/v1/update/status and `outpost update status`
// report.
type Status struct {
	Running    string    `json:"running_version"`
	Platform   string    `json:"platform"`
	Phase      Phase     `json:"phase"`
	Busy       bool      `json:"busy"`
	Available  *Plan     `json:"available,omitempty"`
	Progress   *Progress `json:"progress,omitempty"`
	LastCheck  time.Time `json:"last_check,omitzero"`
	LastError  string    `json:"last_error,omitempty"`
	Last       *Outcome  `json:"last_outcome,omitempty"`
	Bad        []string  `json:"bad_versions,omitempty"`
	Target     *Pending  `json:"target,omitempty"`
	Attempts   int       `json:"attempts,omitempty"`
	Restarting bool      `json:"restarting,omitempty"`
}

// Updater is the "ota" module: it checks the repository on an interval and
// on command, downloads, verifies, stages and installs newer versions, then
// asks for a restart. Boot and Gate (called by `outpost run`) finish the
// job on the other side of the restart.
type Updater struct {
	opt Options
	m   *updaterMetrics

	mu       sync.Mutex
	e        *engine
	f        *fetcher
	client   *tuf.Client
	status   Status
	busy     bool
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	trigger  chan bool // true: apply what is found
	runSHA   string
	health   module.Status
	stopping bool
	pin      string // SetTarget: the only version to move to ("" = the newest)
}

// SetTarget pins the version the updater moves to (the fleet's agent
// version, docs/fleet.md): checks then offer only that version, full or as
// a delta, and only when it is newer than the running one and not bad. ""
// goes back to the newest version. It does not start an update: Trigger.
func (u *Updater) SetTarget(version string) error {
	if version != "" {
		if err := CanonicalVersion(version); err != nil {
			return err
		}
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.pin = version
	return nil
}

// Target is the pinned version (SetTarget), "" when none.
func (u *Updater) Target() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.pin
}

// Enabled reports whether the updater has a repository (ota.enabled).
func (u *Updater) Enabled() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.e != nil && u.e.cfg.Enabled && u.client != nil
}

// pinned keeps the targets of one version only.
func pinned(targets map[string]tuf.TargetFile, version string) map[string]tuf.TargetFile {
	out := make(map[string]tuf.TargetFile)
	for name, tf := range targets {
		if strings.HasSuffix(name, "/outpost-"+version+".zst") || strings.HasSuffix(name, "-to-"+version+".patch") {
			out[name] = tf
		}
	}
	return out
}

var _ module.Typed[Config] = (*Updater)(nil)

type updaterMetrics struct {
	checks, checkErrors, applies, applyErrors *metrics.Counter
	bytes                                     *metrics.Counter
	committed, rolledBack                     *metrics.Counter
}

// New returns an Updater; Init gives it its Config.
func New(opt Options) *Updater {
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	if opt.Metrics == nil {
		opt.Metrics = metrics.NewSet()
	}
	if opt.Version == "" {
		opt.Version = buildinfo.Version
	}
	u := &Updater{opt: opt, trigger: make(chan bool, 1), health: module.Status{State: module.StateStopped}}
	s := opt.Metrics
	u.m = &updaterMetrics{
		checks:      s.GetOrCreateCounter(`outpost_ota_checks_total`),
		checkErrors: s.GetOrCreateCounter(`outpost_ota_check_errors_total`),
		applies:     s.GetOrCreateCounter(`outpost_ota_applies_total`),
		applyErrors: s.GetOrCreateCounter(`outpost_ota_apply_errors_total`),
		bytes:       s.GetOrCreateCounter(`outpost_ota_download_bytes_total`),
		committed:   s.GetOrCreateCounter(`outpost_ota_updates_total{result="committed"}`),
		rolledBack:  s.GetOrCreateCounter(`outpost_ota_updates_total{result="rolled_back"}`),
	}
	// The running version as a label (value 1), so a fleet view can count
	// who runs what; the label value is a canonical version or a build id.
	s.GetOrCreateGauge(fmt.Sprintf(`outpost_ota_running_version_info{version=%q}`, opt.Version), func() float64 { return 1 })
	s.GetOrCreateGauge(`outpost_ota_download_progress_ratio`, func() float64 {
		u.mu.Lock()
		defer u.mu.Unlock()
		if p := u.status.Progress; p != nil && p.Total > 0 {
			return float64(p.Done) / float64(p.Total)
		}
		return 0
	})
	s.GetOrCreateGauge(`outpost_ota_trial_attempts`, func() float64 {
		u.mu.Lock()
		defer u.mu.Unlock()
		return float64(u.status.Attempts)
	})
	return u
}

// Name implements module.Typed.
func (u *Updater) Name() string { return "ota" }

// Init implements module.Typed; pc is defaulted and validated (module.Of).
func (u *Updater) Init(_ context.Context, pc *Config) error {
	c := *pc
	e, err := newEngine(c, u.opt.Log)
	if err != nil {
		return err
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.e = e
	u.status.Running, u.status.Platform = u.opt.Version, c.Platform
	if !c.Enabled {
		return nil
	}
	root, err := os.ReadFile(c.Root)
	if err != nil {
		return fmt.Errorf("ota: root: %w", err)
	}
	var roots *x509.CertPool // nil: the system roots
	if c.CAFile != "" {
		if roots, err = caPool(c.CAFile); err != nil {
			return fmt.Errorf("ota: ca_file: %w", err)
		}
	}
	u.f = newFetcher(c.URL, c.Timeouts, roots)
	u.f.onBytes = u.m.bytes.Add
	if u.client, err = tuf.NewClient(e.metaDir, root, metaFetcher{u.f}); err != nil {
		return fmt.Errorf("ota: %w", err)
	}
	st := e.loadState()
	u.applyState(st)
	// Report the outcome a previous process left (rollback or commit).
	if st.Last != nil && time.Since(st.Last.Time) < time.Minute {
		switch st.Last.Result {
		case "committed":
			u.m.committed.Inc()
		case "rolled_back":
			u.m.rolledBack.Inc()
		}
	}
	return nil
}

func (u *Updater) applyState(st *State) {
	u.status.Phase, u.status.Last, u.status.Bad = st.Phase, st.Last, st.Bad
	u.status.Target, u.status.Attempts = st.Target, st.Attempts
}

// Start implements module.Typed: it starts the check loop and resumes an
// interrupted download.
func (u *Updater) Start(ctx context.Context) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.e == nil {
		return fmt.Errorf("ota: Start before Init")
	}
	if !u.e.cfg.Enabled {
		u.health = module.Status{State: module.StateReady, Detail: "disabled"}
		return nil
	}
	lctx, cancel := context.WithCancel(context.Background())
	u.cancel, u.stopping = cancel, false
	u.health = module.Status{State: module.StateReady}
	resume := u.status.Phase == PhaseDownloading
	u.wg.Add(1)
	go u.loop(lctx, resume)
	return nil
}

// Stop implements module.Typed.
func (u *Updater) Stop(ctx context.Context) error {
	u.mu.Lock()
	cancel := u.cancel
	u.cancel, u.stopping = nil, true
	u.health = module.Status{State: module.StateStopped}
	u.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	done := make(chan struct{})
	go func() { u.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("ota: stop: %w", ctx.Err())
	}
}

// Health implements module.Typed. A failing repository degrades, it does
// not fail, the agent.
func (u *Updater) Health() module.Status {
	u.mu.Lock()
	defer u.mu.Unlock()
	h := u.health
	if h.State == module.StateReady && u.status.LastError != "" {
		h = module.Status{State: module.StateDegraded, Detail: "last update error: " + u.status.LastError}
	}
	return h
}

// Status returns the current status.
func (u *Updater) Status() Status {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.e != nil && u.e.cfg.Enabled {
		if st, err := LoadState(u.e.cfg.StateFile); err == nil {
			u.applyState(st)
		}
	}
	s := u.status
	s.Busy = u.busy
	if s.Progress != nil {
		p := *s.Progress
		s.Progress = &p
	}
	return s
}

// Trigger asks the loop for a check now (and an apply if apply is true).
func (u *Updater) Trigger(apply bool) {
	select {
	case u.trigger <- apply:
	default:
	}
}

func (u *Updater) loop(ctx context.Context, resume bool) {
	defer u.wg.Done()
	interval := u.e.cfg.Interval.D()
	t := time.NewTimer(min(time.Second, interval)) // first check soon after start
	if resume {
		t.Reset(0)
	}
	defer t.Stop()
	for {
		var apply bool
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			// An interrupted download resumes even without auto_apply: it
			// was started by an operator's apply.
			apply = *u.e.cfg.AutoApply || resume
			resume = false
		case apply = <-u.trigger:
		}
		var err error
		if apply {
			err = u.Apply(ctx)
		} else {
			_, err = u.Check(ctx)
		}
		if err != nil && !errors.Is(err, ErrNoUpdate) && !errors.Is(err, ErrTrial) && ctx.Err() == nil {
			u.opt.Log.Warn("update failed", "module", "ota", "err", err)
		}
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(interval)
	}
}

func (u *Updater) setErr(err error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if err == nil || errors.Is(err, ErrNoUpdate) {
		u.status.LastError = ""
		return
	}
	u.status.LastError = err.Error()
}

// runningSHA hashes the installed binary once per process (it is what a
// delta applies to).
func (u *Updater) runningSHA() (string, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.runSHA != "" {
		return u.runSHA, nil
	}
	sum, _, err := fileSHA256(u.e.bin)
	if err != nil {
		return "", fmt.Errorf("ota: hash running binary %s: %w", u.e.bin, err)
	}
	u.runSHA = sum
	return sum, nil
}

// Check refreshes and verifies the repository metadata and returns the
// update that Apply would install, or nil when nothing is newer.
func (u *Updater) Check(ctx context.Context) (p *Plan, err error) {
	defer u.recoverPanic(&err)
	p, _, err = u.check(ctx)
	return p, err
}

// recoverPanic turns a panic in the updater into ErrPanic: the update in
// progress (if any is being downloaded) is marked bad and dropped, the
// stack is logged, and the agent keeps running. An updater bug or a
// malformed input that slipped past validation must never stop the agent
// from starting, or keep it down by panicking again at every start.
func (u *Updater) recoverPanic(errp *error) {
	r := recover()
	if r == nil {
		return
	}
	stack := debug.Stack()
	err := fmt.Errorf("%w: %v", ErrPanic, r)
	u.opt.Log.Error("updater panicked; update abandoned, agent continues", "module", "ota", "err", err, "stack", string(stack))
	u.m.applyErrors.Inc()
	if e := u.e; e != nil && e.cfg.Enabled {
		func() {
			defer func() {
				if r := recover(); r != nil {
					u.opt.Log.Error("updater panicked while recording a panic", "module", "ota", "err", fmt.Sprint(r))
				}
			}()
			e.mu.Lock()
			defer e.mu.Unlock()
			st := e.loadState()
			if st.Phase == PhaseDownloading && st.Target != nil {
				e.abandon(st, err.Error())
			}
			u.mu.Lock()
			u.applyState(st)
			u.mu.Unlock()
		}()
	}
	u.setErr(err)
	*errp = err
}

func (u *Updater) check(ctx context.Context) (*Plan, *tuf.Targets, error) {
	u.mu.Lock()
	e, client := u.e, u.client
	u.mu.Unlock()
	if e == nil || client == nil {
		return nil, nil, ErrDisabled
	}
	u.m.checks.Inc()
	client.Floor = e.loadSeen()
	targets, err := client.Refresh(ctx)
	if err == nil {
		e.saveSeen(client.Floor, client.Versions())
	}
	u.mu.Lock()
	u.status.LastCheck = time.Now().UTC()
	u.mu.Unlock()
	if err != nil {
		u.m.checkErrors.Inc()
		u.setErr(err)
		return nil, nil, err
	}
	sum, err := u.runningSHA()
	if err != nil {
		u.setErr(err)
		return nil, nil, err
	}
	st := e.loadState()
	offered := targets.Targets
	u.mu.Lock()
	pin := u.pin
	u.mu.Unlock()
	if pin != "" {
		offered = pinned(offered, pin)
	}
	plan, rejected := choose(offered, e.cfg.Platform, u.opt.Version, sum, st, *e.cfg.Delta)
	for _, r := range rejected {
		u.opt.Log.Warn("signed target refused", "module", "ota", "err", r)
	}
	u.mu.Lock()
	u.status.Available = plan
	u.applyState(st)
	u.mu.Unlock()
	if plan == nil && len(rejected) > 0 {
		err := errors.Join(rejected...)
		u.m.checkErrors.Inc()
		u.setErr(err)
		return nil, nil, err
	}
	u.setErr(nil)
	if plan != nil {
		u.opt.Log.Info("update available", "module", "ota", "version", plan.Version, "kind", plan.Kind, "download", plan.Download)
	}
	return plan, targets, nil
}

// Apply checks, then downloads, verifies, stages and installs the newest
// version, and calls Options.Restart. It resumes an interrupted download.
// It returns ErrNoUpdate when nothing is newer.
func (u *Updater) Apply(ctx context.Context) (err error) {
	u.mu.Lock()
	if u.busy {
		u.mu.Unlock()
		return ErrBusy
	}
	u.busy = true
	u.mu.Unlock()
	defer func() {
		u.mu.Lock()
		u.busy = false
		u.mu.Unlock()
	}()
	defer u.recoverPanic(&err)
	err = u.apply(ctx)
	if err != nil && !errors.Is(err, ErrNoUpdate) {
		u.m.applyErrors.Inc()
		u.setErr(err)
	}
	return err
}

func (u *Updater) apply(ctx context.Context) error {
	e := u.e
	plan, targets, err := u.check(ctx)
	if err != nil {
		return err
	}
	st := e.loadState()
	switch st.Phase {
	case PhaseTrial, PhaseInstalling, PhaseRollingBack:
		return ErrTrial
	}
	if plan == nil {
		if st.Phase == PhaseDownloading {
			// What was being downloaded is no longer offered.
			st.Phase, st.Target = PhaseIdle, nil
			e.saveState(st)
		}
		return ErrNoUpdate
	}
	u.m.applies.Inc()
	sum, _ := u.runningSHA()
	p := &Pending{
		Version: plan.Version, FromVersion: u.opt.Version, FromSHA256: sum,
		SHA256: plan.Custom.SHA256, Size: plan.Custom.Size,
		Target: plan.Target, Kind: plan.Kind, File: plan.File,
	}
	if st.Phase != PhaseDownloading || st.Target == nil || st.Target.Target != p.Target || st.Target.File.Hashes["sha256"] != p.File.Hashes["sha256"] {
		if st.Target != nil && st.Target.Target != p.Target {
			os.Remove(e.partPath(st.Target))
		}
		st.Phase, st.Target, st.Attempts, st.Reason = PhaseDownloading, p, 0, ""
		if err := e.saveState(st); err != nil {
			return err
		}
	}
	u.mu.Lock()
	u.applyState(st)
	u.mu.Unlock()
	u.opt.Log.Info("downloading update", "module", "ota", "version", p.Version, "kind", p.Kind, "target", p.Target, "bytes", p.File.Length)
	var lastLog time.Time
	progress := func(pr Progress) {
		u.mu.Lock()
		u.status.Progress = &pr
		u.mu.Unlock()
		if time.Since(lastLog) > 5*time.Second || pr.Done == pr.Total {
			lastLog = time.Now()
			u.opt.Log.Info("download progress", "module", "ota", "target", pr.Target,
				"percent", fmt.Sprintf("%.1f", pr.Percent), "bytes", pr.Done, "total", pr.Total,
				"bytes_per_sec", int64(pr.BytesPerSec), "eta", time.Duration(pr.ETASeconds*float64(time.Second)).Round(time.Second))
		}
	}
	defer func() {
		u.mu.Lock()
		u.status.Progress = nil
		u.mu.Unlock()
	}()
	err = e.stage(ctx, u.f, u.client.TargetPath(p.Target, p.File), p, targets, progress)
	if errors.Is(err, ErrDeltaResult) {
		// A delta that does not produce the signed binary is never used
		// again; the next apply fetches the full binary.
		st.NoDelta = append(st.NoDelta, p.Version)
		st.Phase, st.Target = PhaseIdle, nil
		os.Remove(e.partPath(p))
		e.saveState(st)
	}
	if errors.Is(err, ErrFullResult) || errors.Is(err, ErrTargetHash) || errors.Is(err, ErrWrongTarget) || errors.Is(err, ErrEndlessData) {
		st.Phase, st.Target = PhaseIdle, nil
		e.saveState(st)
	}
	if err != nil {
		return err
	}
	failpoint("after-stage")
	e.mu.Lock()
	err = e.install(st)
	if err != nil && st.Phase == PhaseInstalling {
		// Not swapped in (the rename is the last step that can fail
		// before the trial): go back to a resumable download.
		if sum, _, herr := fileSHA256(e.bin); herr == nil && sum == p.FromSHA256 {
			st.Phase = PhaseDownloading
			e.saveState(st)
		}
	}
	e.mu.Unlock()
	u.mu.Lock()
	u.applyState(st)
	u.mu.Unlock()
	if err != nil {
		return err
	}
	u.opt.Log.Info("update installed; restarting into it", "module", "ota", "version", p.Version)
	u.mu.Lock()
	u.status.Restarting = true
	u.mu.Unlock()
	if u.opt.Restart != nil {
		// On its own goroutine: the callback stops the modules, this one
		// included, and Stop waits for the loop that is running Apply.
		go u.opt.Restart(e.cfg)
		return nil
	}
	return Restart(e.cfg)
}

// ErrNotBad is returned by ForgetBad for a version that is not in the bad
// list.
var ErrNotBad = errors.New("ota: version is not marked bad")

// BadVersions returns the versions that failed their health gate and are
// not installed automatically.
func (u *Updater) BadVersions() ([]string, error) {
	u.mu.Lock()
	e := u.e
	u.mu.Unlock()
	if e == nil || !e.cfg.Enabled {
		return nil, ErrDisabled
	}
	st, err := LoadState(e.cfg.StateFile)
	if err != nil {
		return nil, err
	}
	return st.Bad, nil
}

// ForgetBad removes versions from the bad list (every version when all is
// true), so that the updater may install them again: the next check offers
// the newest good version, which may be one of them. The state file is
// rewritten atomically, under the same lock as every other transition. It
// returns the versions removed; a named version that is not bad is
// ErrNotBad and nothing changes.
func (u *Updater) ForgetBad(versions []string, all bool) ([]string, error) {
	u.mu.Lock()
	e := u.e
	u.mu.Unlock()
	if e == nil || !e.cfg.Enabled {
		return nil, ErrDisabled
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	st, err := LoadState(e.cfg.StateFile)
	if err != nil {
		return nil, err
	}
	if !all {
		for _, v := range versions {
			if !st.isBad(v) {
				return nil, fmt.Errorf("%w: %s (bad: [%s])", ErrNotBad, v, strings.Join(st.Bad, ", "))
			}
		}
	}
	removed := st.forgetBad(versions, all)
	if len(removed) == 0 {
		return nil, nil
	}
	if err := e.saveState(st); err != nil {
		return nil, err
	}
	u.opt.Log.Info("bad versions forgotten; they may be installed again", "module", "ota", "versions", removed)
	u.mu.Lock()
	u.applyState(st)
	u.mu.Unlock()
	return removed, nil
}
