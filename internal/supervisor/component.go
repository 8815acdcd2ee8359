package supervisor

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/outpost-edge/outpost/internal/supervisor/cgroup"
	"github.com/outpost-edge/outpost/internal/supervisor/recipe"
)

// component is one supervised component: its recipe, its observable state,
// and the goroutine (loop) that drives its lifecycle.
type component struct {
	s    *Supervisor
	name string
	log  *slog.Logger
	out  *outputSink

	mu       sync.Mutex
	recipe   *recipe.Recipe
	override Override
	pending  *recipe.Recipe // a changed recipe, applied at the next start
	pendOvr  *Override
	state    State
	since    time.Time
	reason   string
	pid      int
	health   string
	lastExit *ExitStatus
	restarts int
	output   string // kept output of a failed install or startup
	gen      uint64 // incremented every time a process starts (dependents watch it)
	kickGen  uint64 // incremented by manual restarts and recipe changes
	exit     bool   // the loop must stop and return
	limits   *LimitsStatus
	ctr      *ContainerStatus // kind container: the current container
	// pullFails counts failed image pulls in a row (their backoff).
	pullFails int

	wake    chan struct{} // cap 1: something changed for this component
	done    chan struct{} // closed when loop returns
	tracker restartTracker
	group   *cgroup.Group
}

func newComponent(s *Supervisor, r *recipe.Recipe, ov Override) *component {
	c := &component{
		s:        s,
		name:     r.Name,
		log:      s.log.With("component", r.Name),
		recipe:   r,
		override: ov,
		state:    StateWaiting,
		since:    time.Now(),
		wake:     make(chan struct{}, 1),
		done:     make(chan struct{}),
	}
	c.out = &outputSink{log: c.log}
	c.tracker.policy = r.Restart
	c.group = s.cg.Group(r.Name)
	return c
}

func (c *component) kick() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// setState records a state change, logs it and publishes it.
func (c *component) setState(st State, reason string) {
	c.mu.Lock()
	if c.state == st && c.reason == reason {
		c.mu.Unlock()
		return
	}
	c.state, c.reason, c.since = st, reason, time.Now()
	c.mu.Unlock()
	if reason != "" {
		c.log.Info("component state", "state", string(st), "reason", reason)
	} else {
		c.log.Info("component state", "state", string(st))
	}
	c.s.changed(c)
}

func (c *component) status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.recipe
	st := Status{
		Name: c.name, Version: r.Version.String(), State: c.state, Since: c.since, Reason: c.reason,
		PID: c.pid, Restarts: c.restarts, Health: c.health, LastExit: c.lastExit, Output: c.output,
		Recipe: r.File, DependsOn: r.Dependencies(""), Limits: c.limits,
	}
	if c.ctr != nil {
		cs := *c.ctr
		st.Container = &cs
	}
	if c.state.up() && c.group != nil && c.group.Mode() != cgroup.None {
		st.Memory = c.group.MemoryUsage()
	}
	return st
}

// snapshot returns what the loop needs under the lock.
func (c *component) current() (*recipe.Recipe, Override, uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.recipe, c.override, c.kickGen, c.exit
}

// interrupted reports whether the loop must leave its current phase: exit
// requested, a restart requested (kickGen moved) or a pending recipe.
func (c *component) interrupted(gen uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.exit || c.kickGen != gen || c.pending != nil || c.pendOvr != nil
}

// update applies a changed recipe or override: the running process is
// stopped and started again with the new one.
func (c *component) update(r *recipe.Recipe, ov Override) {
	c.mu.Lock()
	c.pending = r
	c.pendOvr = &ov
	c.mu.Unlock()
	c.kick()
}

// restart is a manual restart: it clears broken/failed states and the
// restart history.
func (c *component) restart() {
	c.mu.Lock()
	c.kickGen++
	c.mu.Unlock()
	c.kick()
}

// stop asks the loop to stop the component and return; it waits until it
// has (or ctx ends).
func (c *component) stop(ctx context.Context) error {
	c.mu.Lock()
	c.exit = true
	c.mu.Unlock()
	c.kick()
	select {
	case <-c.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("supervisor: stop %s: %w", c.name, ctx.Err())
	}
}

func (c *component) applyPending() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pending != nil {
		c.recipe = c.pending
		c.pending = nil
		c.tracker = restartTracker{policy: c.recipe.Restart}
		c.restarts = 0
	}
	if c.pendOvr != nil {
		c.override = *c.pendOvr
		c.pendOvr = nil
	}
}

// outcome is why a run ended.
type outcome int

const (
	outExited      outcome = iota // the process ended (or a one-shot step failed)
	outUnhealthy                  // the health check failed past its threshold
	outInterrupted                // stop, restart, recipe change
	outDepLost                    // a hard dependency stopped or restarted
	outStartFailed                // could not start at all
)

// loop drives the component until stop is called.
func (c *component) loop(ctx context.Context) {
	defer close(c.done)
	defer c.finalStop()
	for {
		r, ov, gen, exit := c.current()
		if exit || ctx.Err() != nil {
			return
		}
		if c.pendingSet() {
			c.applyPending()
			continue
		}
		if ov.Disabled {
			c.setState(StateStopped, "disabled in the agent configuration")
			c.waitKick(ctx, gen)
			continue
		}
		if !c.waitDeps(ctx, r, gen) {
			continue
		}
		if err := c.install(ctx, r, ov, gen); err != nil {
			if c.interrupted(gen) || ctx.Err() != nil {
				continue
			}
			c.mu.Lock()
			c.output = c.out.lastLines()
			c.mu.Unlock()
			c.setState(StateInstallFailed, err.Error())
			c.waitKick(ctx, gen)
			continue
		}
		out, ex, why := c.runOnce(ctx, r, ov, gen)
		switch out {
		case outInterrupted:
			c.mu.Lock()
			manual := c.kickGen != gen
			c.mu.Unlock()
			if manual {
				c.tracker.reset()
				c.mu.Lock()
				c.restarts = 0
				c.mu.Unlock()
			}
			continue
		case outDepLost:
			continue
		}
		success := out == outExited && ex != nil && ex.success()
		if !shouldRestart(r.Restart.Policy, success) {
			st := StateFinished
			if !success && why == "" {
				why = "exited; restart policy " + string(r.Restart.Policy)
			}
			c.setState(st, why)
			c.waitKick(ctx, gen)
			continue
		}
		var runtime time.Duration
		if ex != nil {
			runtime = ex.Runtime
		}
		delay, broken := c.tracker.next(time.Now(), runtime, rand.Float64())
		if broken {
			c.s.metrics.GetOrCreateCounter(fmt.Sprintf(`outpost_supervisor_broken_total{component=%q}`, c.name)).Inc()
			c.setState(StateBroken, fmt.Sprintf("restarted %d times within %s; last: %s", r.Restart.MaxRestarts, r.Restart.Window, why))
			c.waitKick(ctx, gen)
			continue
		}
		c.mu.Lock()
		c.restarts++
		c.mu.Unlock()
		c.s.metrics.GetOrCreateCounter(fmt.Sprintf(`outpost_supervisor_restarts_total{component=%q}`, c.name)).Inc()
		c.setState(StateBackoff, fmt.Sprintf("%s; restarting in %s", why, delay.Round(time.Millisecond)))
		c.sleep(ctx, gen, delay)
	}
}

func (c *component) pendingSet() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pending != nil || c.pendOvr != nil
}

// waitKick blocks until a restart, a recipe change or stop.
func (c *component) waitKick(ctx context.Context, gen uint64) {
	for !c.interrupted(gen) {
		select {
		case <-ctx.Done():
			return
		case <-c.wake:
		}
	}
}

func (c *component) sleep(ctx context.Context, gen uint64, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			return
		case <-c.wake:
			if c.interrupted(gen) {
				return
			}
		}
	}
}

// waitDeps waits until every hard dependency is healthy and every soft
// one has settled (is not installing or starting). It returns false when
// interrupted.
func (c *component) waitDeps(ctx context.Context, r *recipe.Recipe, gen uint64) bool {
	for {
		ch := c.s.changes()
		blocker := c.s.depsBlocker(r)
		if blocker == "" {
			return true
		}
		c.setState(StateWaiting, blocker)
		select {
		case <-ctx.Done():
			return false
		case <-ch:
		case <-c.wake:
			if c.interrupted(gen) {
				return false
			}
		}
	}
}

// dirs returns the component's directories.
func (c *component) dirs(r *recipe.Recipe) (home, artifacts, data string) {
	home = filepath.Join(c.s.cfg.StateDir, c.name)
	return home, filepath.Join(home, "artifacts", r.Version.String()), filepath.Join(home, "data")
}

func (c *component) workDir(r *recipe.Recipe) string {
	_, art, _ := c.dirs(r)
	switch {
	case r.WorkingDir == "":
		return art
	case filepath.IsAbs(r.WorkingDir):
		return r.WorkingDir
	}
	return filepath.Join(art, r.WorkingDir)
}

// installKey identifies what install produced: a new version, a changed
// install step or changed artifacts need a new install.
func installKey(r *recipe.Recipe) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n", r.Version)
	if r.Lifecycle.Install != nil {
		fmt.Fprintf(h, "%q\n", r.Lifecycle.Install.Argv())
	}
	for _, a := range r.Artifacts {
		sum := a.SHA256
		if sum == "" && a.Path != "" {
			sum, _ = recipe.FileSHA256(r.LocalPath(a))
		}
		fmt.Fprintf(h, "%s|%s|%s|%v|%v\n", a.Path, a.URL, sum, a.Unpack, a.Executable)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// install fetches artifacts and runs the install step once per install key.
func (c *component) install(ctx context.Context, r *recipe.Recipe, ov Override, gen uint64) error {
	home, art, data := c.dirs(r)
	for _, d := range []string{home, data} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	cred, err := resolveCredential(r)
	if err != nil {
		return err
	}
	if cred != nil {
		_ = os.Chown(data, cred.uid, cred.gid)
		_ = os.Chmod(data, 0o750)
	}
	marker := filepath.Join(home, "installed")
	key := installKey(r)
	if b, err := os.ReadFile(marker); err == nil && strings.TrimSpace(string(b)) == key {
		if _, err := os.Stat(art); err == nil {
			return nil
		}
	}
	c.setState(StateInstalling, "")
	c.out.resetTail()
	_ = os.Remove(marker)
	if err := os.RemoveAll(art); err != nil {
		return err
	}
	if err := os.MkdirAll(art, 0o755); err != nil {
		return err
	}
	for i, a := range r.Artifacts {
		if err := fetchArtifact(ctx, c.s.http, r, a, art); err != nil {
			return r.ErrorAt(fmt.Sprintf("artifacts[%d]", i), err)
		}
	}
	if cred != nil {
		_ = filepath.Walk(art, func(p string, _ os.FileInfo, err error) error {
			if err == nil {
				_ = os.Lchown(p, cred.uid, cred.gid)
			}
			return nil
		})
	}
	if st := r.Lifecycle.Install; st != nil {
		env, err := c.environ(r, ov, nil)
		if err != nil {
			return err
		}
		ex, err := c.runStep(ctx, r, st, "install", env, cred, nil, gen)
		if err != nil {
			return fmt.Errorf("install: %w", err)
		}
		if !ex.success() {
			return fmt.Errorf("install %s", ex)
		}
	}
	// Old versions' artifacts are no longer needed.
	if ents, err := os.ReadDir(filepath.Join(home, "artifacts")); err == nil {
		for _, e := range ents {
			if e.Name() != r.Version.String() {
				_ = os.RemoveAll(filepath.Join(home, "artifacts", e.Name()))
			}
		}
	}
	return writeFileSync(marker, []byte(key+"\n"), 0o644)
}

// writeFileSync writes a file atomically (temp file + rename); with sync
// set the data is fsynced first.
func writeFileSync(path string, data []byte, perm os.FileMode) error {
	return writeFileAtomic(path, data, perm, true)
}

func writeFileAtomic(path string, data []byte, perm os.FileMode, sync bool) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if sync {
		if err := f.Sync(); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// runStep runs a one-shot step (install, startup, shutdown) to completion
// with its timeout; output goes to the component's log. A stop or restart
// request interrupts it (the step is killed) unless gen is nil-equivalent.
func (c *component) runStep(ctx context.Context, r *recipe.Recipe, st *recipe.Command, stream string, env []string, cred *credential, g *cgroup.Group, gen uint64) (exitInfo, error) {
	egressFD, err := c.egressFor(ctx, r, g)
	if err != nil {
		return exitInfo{}, err
	}
	stdout, doneOut, err := c.out.capture(stream)
	if err != nil {
		return exitInfo{}, err
	}
	stderr, doneErr, err := c.out.capture(stream)
	if err != nil {
		stdout.Close()
		return exitInfo{}, err
	}
	p, err := spawn(procSpec{argv: st.Argv(), env: env, dir: c.workDir(r), cred: cred, group: g, pids: r.Resources.Pids, stdout: stdout, stderr: stderr, egress: egressFD})
	stdout.Close()
	stderr.Close()
	if err != nil {
		<-doneOut
		<-doneErr
		return exitInfo{}, err
	}
	var timeout <-chan time.Time
	if st.Timeout > 0 {
		t := time.NewTimer(st.Timeout)
		defer t.Stop()
		timeout = t.C
	}
	var why error
wait:
	for {
		select {
		case <-p.done:
			break wait
		case <-timeout:
			why = fmt.Errorf("timed out after %s", st.Timeout)
			c.killStep(p, g)
			break wait
		case <-ctx.Done():
			why = ctx.Err()
			c.killStep(p, g)
			break wait
		case <-c.wake:
			if stream != "shutdown" && c.interrupted(gen) {
				why = errors.New("interrupted")
				c.killStep(p, g)
				break wait
			}
		}
	}
	<-p.done
	if g == nil {
		killTree(nil, p.pid, p.pid, c.s.reaper) // a step's leftovers do not outlive it
	}
	waitPipes(doneOut, doneErr)
	return p.exit(), why
}

// killStep kills a one-shot step's process group (and, for steps in the
// component's cgroup, the whole group).
func (c *component) killStep(p *proc, g *cgroup.Group) {
	_ = syscall.Kill(-p.pid, syscall.SIGKILL)
	killTree(g, p.pid, p.pid, c.s.reaper)
}

// waitPipes waits for output readers to drain, briefly: a descendant that
// escaped both the process group and the cgroup could hold them open.
func waitPipes(chs ...<-chan struct{}) {
	t := time.NewTimer(500 * time.Millisecond)
	defer t.Stop()
	for _, ch := range chs {
		select {
		case <-ch:
		case <-t.C:
			return
		}
	}
}

// resolveCredential looks up the recipe's user and group.
func resolveCredential(r *recipe.Recipe) (*credential, error) {
	if r.User == "" {
		return nil, nil
	}
	u, err := lookupUser(r.User)
	if err != nil {
		return nil, r.ErrorAt("user", fmt.Errorf("%w: user %q: %v", recipe.ErrInvalid, r.User, err))
	}
	cr := &credential{}
	cr.uid, _ = strconv.Atoi(u.Uid)
	cr.gid, _ = strconv.Atoi(u.Gid)
	if r.Group != "" {
		g, err := lookupGroup(r.Group)
		if err != nil {
			return nil, r.ErrorAt("group", fmt.Errorf("%w: group %q: %v", recipe.ErrInvalid, r.Group, err))
		}
		cr.gid, _ = strconv.Atoi(g.Gid)
	}
	cr.groups = []int{cr.gid}
	if ids, err := u.GroupIds(); err == nil {
		for _, id := range ids {
			if n, err := strconv.Atoi(id); err == nil && n != cr.gid {
				cr.groups = append(cr.groups, n)
			}
		}
	}
	return cr, nil
}

func lookupUser(s string) (*user.User, error) {
	if _, err := strconv.Atoi(s); err == nil {
		if u, err := user.LookupId(s); err == nil {
			return u, nil
		}
		return &user.User{Uid: s, Gid: s, Username: s}, nil
	}
	return user.Lookup(s)
}

func lookupGroup(s string) (*user.Group, error) {
	if _, err := strconv.Atoi(s); err == nil {
		if g, err := user.LookupGroupId(s); err == nil {
			return g, nil
		}
		return &user.Group{Gid: s, Name: s}, nil
	}
	return user.LookupGroup(s)
}

// effectiveConfig merges the override over the recipe's configuration.
func effectiveConfig(r *recipe.Recipe, ov Override) map[string]any {
	if r.Configuration == nil && ov.Configuration == nil {
		return nil
	}
	out, _ := mergePatch(r.Configuration, ov.Configuration).(map[string]any)
	return out
}

// mergePatch applies an RFC 7396 JSON merge patch.
func mergePatch(target any, patch any) any {
	pm, ok := patch.(map[string]any)
	if !ok {
		if patch == nil {
			return target
		}
		return patch
	}
	tm, ok := target.(map[string]any)
	out := map[string]any{}
	if ok {
		for k, v := range tm {
			out[k] = v
		}
	}
	for k, v := range pm {
		if v == nil {
			delete(out, k)
			continue
		}
		if _, isMap := v.(map[string]any); isMap {
			out[k] = mergePatch(out[k], v)
		} else {
			out[k] = v
		}
	}
	return out
}

// maxEnvConfig is the largest configuration passed inline in OUTPOST_CONFIG.
const maxEnvConfig = 32 << 10

// environ builds the component's environment: a minimal base (PATH, HOME,
// LANG, TZ), the OUTPOST_* variables, the recipe's env and the override's.
func (c *component) environ(r *recipe.Recipe, ov Override, creds *Credentials) ([]string, error) {
	home, art, data := c.dirs(r)
	env := map[string]string{
		"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME": data,
	}
	for _, k := range []string{"PATH", "LANG", "TZ"} {
		if v, ok := os.LookupEnv(k); ok {
			env[k] = v
		}
	}
	env[EnvName] = c.name
	env[EnvVersion] = r.Version.String()
	env[EnvArtifactsDir] = art
	env[EnvDataDir] = data
	env[EnvTopicPrefix] = "components/" + c.name + "/"
	if cfg := effectiveConfig(r, ov); cfg != nil {
		b, err := json.Marshal(cfg)
		if err != nil {
			return nil, fmt.Errorf("configuration: %w", err)
		}
		p := filepath.Join(home, "config.json")
		if err := writeFileAtomic(p, b, 0o640, false); err != nil { // rewritten at every start
			return nil, err
		}
		if cred, _ := resolveCredential(r); cred != nil {
			_ = os.Chown(p, 0, cred.gid)
		}
		env[EnvConfigFile] = p
		if len(b) <= maxEnvConfig {
			env[EnvConfig] = string(b)
		}
	}
	if creds != nil {
		env[EnvMQTTURL] = creds.URL
		env[EnvMQTTUsername] = creds.Username
		env[EnvMQTTPassword] = creds.Password
	}
	for k, v := range r.Env {
		env[k] = v
	}
	for k, v := range ov.Env {
		if !strings.HasPrefix(k, "OUTPOST_") {
			env[k] = v
		}
	}
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	return out, nil
}
