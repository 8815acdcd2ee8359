package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/outpost-edge/outpost/internal/supervisor/cgroup"
	"github.com/outpost-edge/outpost/internal/supervisor/recipe"
)

// runOnce starts the component (run or startup) and supervises it until it
// exits, fails its health check, loses a hard dependency or is interrupted.
// On return nothing of it is left running.
func (c *component) runOnce(ctx context.Context, r *recipe.Recipe, ov Override, gen uint64) (outcome, *exitInfo, string) {
	if r.Kind == recipe.KindContainer {
		return c.runContainer(ctx, r, ov, gen)
	}
	cred, err := resolveCredential(r)
	if err != nil {
		return c.startFailed(err)
	}
	g, limits := c.prepareGroup(r)
	c.mu.Lock()
	c.limits = limits
	c.mu.Unlock()

	var creds *Credentials
	if id := c.s.opts.Identity; id != nil {
		cr, err := id.Issue(ctx, c.name, Access{Publish: r.Access.Publish, Subscribe: r.Access.Subscribe})
		if err != nil {
			return c.startFailed(fmt.Errorf("issue bus credentials: %w", err))
		}
		creds = &cr
		defer id.Revoke(c.name)
	}
	env, err := c.environ(r, ov, creds)
	if err != nil {
		return c.startFailed(err)
	}
	egressFD, err := c.egressFor(ctx, r, g)
	if err != nil {
		return c.startFailed(err)
	}
	depGens := c.s.depGens(r)
	c.mu.Lock()
	c.health = ""
	if r.Health != nil {
		c.health = "starting"
	}
	c.output = ""
	c.mu.Unlock()
	c.out.resetTail()
	c.setState(StateStarting, "")

	var p *proc
	var pipes []<-chan struct{}
	if run := r.Lifecycle.Run; run != nil {
		stdout, doneOut, err := c.out.capture("stdout")
		if err != nil {
			return c.startFailed(err)
		}
		stderr, doneErr, err := c.out.capture("stderr")
		if err != nil {
			stdout.Close()
			return c.startFailed(err)
		}
		p, err = spawn(procSpec{argv: run.Argv(), env: env, dir: c.workDir(r), cred: cred, group: g, pids: r.Resources.Pids, stdout: stdout, stderr: stderr, egress: egressFD})
		stdout.Close()
		stderr.Close()
		pipes = []<-chan struct{}{doneOut, doneErr}
		if err != nil {
			waitPipes(pipes...)
			return c.startFailed(r.ErrorAt("lifecycle.run", err))
		}
		c.writePidFile(p)
		c.mu.Lock()
		c.pid = p.pid
		c.gen++
		c.mu.Unlock()
	} else {
		ex, err := c.runStep(ctx, r, r.Lifecycle.Startup, "startup", env, cred, g, gen)
		if err != nil || !ex.success() {
			killTree(g, 0, 0, c.s.reaper)
			why := "startup " + ex.String()
			if err != nil {
				why = "startup: " + err.Error()
			}
			if errors.Is(err, context.Canceled) || (err != nil && err.Error() == "interrupted") {
				return outInterrupted, nil, why
			}
			c.mu.Lock()
			c.output = c.out.lastLines()
			c.mu.Unlock()
			c.recordExit(ex)
			return outExited, &ex, why
		}
		c.mu.Lock()
		c.gen++
		c.mu.Unlock()
	}
	started := time.Now()
	c.s.metrics.GetOrCreateCounter(fmt.Sprintf(`outpost_supervisor_starts_total{component=%q}`, c.name)).Inc()

	var hc <-chan healthEvent
	hctx, hcancel := context.WithCancel(ctx)
	defer hcancel()
	if r.Health != nil {
		ch := make(chan healthEvent)
		hc = ch
		go c.checkHealth(hctx, r, env, cred, ch)
	} else {
		c.setState(StateRunning, "")
	}

	var runTimeout <-chan time.Time
	if r.Lifecycle.Run != nil && r.Lifecycle.Run.Timeout > 0 {
		t := time.NewTimer(r.Lifecycle.Run.Timeout)
		defer t.Stop()
		runTimeout = t.C
	}
	var pdone <-chan struct{}
	var poll <-chan time.Time
	if p != nil {
		pdone = p.done
	} else if g != nil {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		poll = t.C
	}

	stop := func(why string) {
		c.setState(StateStopping, why)
		hcancel()
		c.stopProcess(r, p, g, env, cred)
	}
	var (
		res    outcome
		ex     *exitInfo
		reason string
	)
loop:
	for {
		changes := c.s.changes()
		select {
		case <-pdone:
			hcancel()
			e := p.exit()
			killTree(g, p.pid, p.pid, c.s.reaper) // no orphans outlive the main process
			ex, res, reason = &e, outExited, e.String()
			break loop
		case <-poll:
			if pids, _ := g.Pids(); len(pids) == 0 {
				e := exitInfo{Code: -1, Runtime: time.Since(started), OOMKilled: g.OOMKills() > 0}
				ex, res, reason = &e, outExited, "every process started by startup has exited"
				if e.OOMKilled {
					reason = e.String()
				}
				break loop
			}
		case ev := <-hc:
			switch {
			case ev.ok:
				c.mu.Lock()
				c.health = "passing"
				c.mu.Unlock()
				c.setState(StateHealthy, "")
			case ev.unhealthy:
				reason = "health check failed: " + ev.detail
				c.mu.Lock()
				c.health = "failing"
				c.mu.Unlock()
				c.setState(StateUnhealthy, reason)
				if !shouldRestart(r.Restart.Policy, false) {
					continue // policy never: keep it running, unhealthy
				}
				stop(reason)
				res = outUnhealthy
				if p != nil {
					e := p.exit()
					ex = &e
					ex.Runtime = time.Since(started)
				}
				break loop
			default:
				c.mu.Lock()
				c.health = "failing"
				c.mu.Unlock()
			}
		case <-runTimeout:
			reason = fmt.Sprintf("run timed out after %s", r.Lifecycle.Run.Timeout)
			stop(reason)
			e := p.exit()
			e.Code, e.Signal = -1, "timeout"
			ex, res = &e, outExited
			break loop
		case <-c.wake:
			if c.interrupted(gen) {
				stop("stop requested")
				res = outInterrupted
				break loop
			}
		case <-changes:
			if dep := c.s.depLost(r, depGens); dep != "" {
				reason = "hard dependency " + dep + " stopped or restarted"
				stop(reason)
				res = outDepLost
				break loop
			}
		case <-ctx.Done():
			stop("agent stopping")
			res = outInterrupted
			break loop
		}
	}
	hcancel()
	waitPipes(pipes...)
	c.removePidFile()
	c.mu.Lock()
	c.pid = 0
	c.mu.Unlock()
	if ex != nil && res != outInterrupted {
		c.recordExit(*ex)
		if ex.OOMKilled {
			c.log.Warn("component OOM-killed", "limit", r.Resources.Memory)
			c.s.metrics.GetOrCreateCounter(fmt.Sprintf(`outpost_supervisor_oom_kills_total{component=%q}`, c.name)).Inc()
		}
	}
	if res == outInterrupted || res == outDepLost {
		c.setState(StateStopped, reason)
	}
	return res, ex, reason
}

func (c *component) startFailed(err error) (outcome, *exitInfo, string) {
	c.log.Error("component start failed", "err", err)
	return outStartFailed, &exitInfo{Code: -1}, "start failed: " + err.Error()
}

func (c *component) recordExit(e exitInfo) {
	c.mu.Lock()
	c.lastExit = &ExitStatus{Code: e.Code, Signal: e.Signal, OOMKilled: e.OOMKilled, At: time.Now(), Description: e.String()}
	c.mu.Unlock()
}

// prepareGroup creates the component's cgroup with its limits, killing
// anything left in it. It returns nil when cgroups are unavailable.
func (c *component) prepareGroup(r *recipe.Recipe) (*cgroup.Group, *LimitsStatus) {
	res := r.Resources
	ls := &LimitsStatus{Memory: res.Memory, CPU: res.CPU, Pids: res.Pids}
	cg := c.s.cg
	if cg.Mode() == cgroup.None {
		ls.Note = "cgroups unavailable: " + cg.Reason()
		if res == (recipe.Resources{}) {
			ls.Note = ""
		}
		return nil, ls
	}
	if pids, _ := c.group.Pids(); len(pids) > 0 {
		c.log.Warn("killing processes left in the component's cgroup", "pids", fmt.Sprint(pids))
		killTree(c.group, 0, 0, c.s.reaper)
	}
	if err := c.group.Create(cgroup.Limits{Memory: res.Memory, CPU: res.CPU, Pids: res.Pids}); err != nil {
		c.log.Error("cgroup setup failed; running without limits", "err", err)
		ls.Note = err.Error()
		return nil, ls
	}
	ls.Enforced = true
	var missing []string
	if res.CPU > 0 && !cg.Supports("cpu") {
		missing = append(missing, "cpu")
	}
	if res.Pids > 0 && !cg.Supports("pids") {
		missing = append(missing, "pids")
	}
	if len(missing) > 0 {
		ls.Note = "not enforced: " + strings.Join(missing, ", ") + " (controller unavailable)"
	}
	return c.group, ls
}

// stopProcess stops a running component: the shutdown step first (if
// any), then SIGTERM, the grace period and SIGKILL for everything left.
func (c *component) stopProcess(r *recipe.Recipe, p *proc, g *cgroup.Group, env []string, cred *credential) {
	t0 := time.Now()
	grace := c.s.cfg.GracePeriod.D()
	if sd := r.Lifecycle.Shutdown; sd != nil {
		ex, err := c.runStep(context.Background(), r, sd, "shutdown", env, cred, nil, 0)
		if err != nil || !ex.success() {
			c.log.Warn("shutdown step failed", "err", err, "exit", ex.String())
		}
	}
	if p != nil {
		p.terminate(grace, c.s.reaper)
	} else if g != nil {
		terminateGroup(g, grace, c.s.reaper)
	}
	c.log.Info("component stopped", "took", time.Since(t0).Round(time.Microsecond))
}

// terminateGroup stops every process of a cgroup: SIGTERM+SIGCONT, up to
// grace for them to exit, then SIGKILL.
func terminateGroup(g *cgroup.Group, grace time.Duration, r *reaper) {
	pids, _ := g.Pids()
	for _, p := range pids {
		_ = syscall.Kill(p, syscall.SIGTERM)
		_ = syscall.Kill(p, syscall.SIGCONT)
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		r.track(pids...)
		r.reapNow()
		if left, _ := g.Pids(); len(left) == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	killTree(g, 0, 0, r)
}

// The pid file lets a restarted agent find and stop processes left by a
// previous run when no cgroup tracks them: "pid starttime bootid".
func (c *component) pidFile() string {
	return filepath.Join(c.s.cfg.StateDir, c.name, "pid")
}

func (c *component) writePidFile(p *proc) {
	line := fmt.Sprintf("%d %d %s\n", p.pid, p.startTicks, bootID())
	// Not fsynced: after a power loss there is nothing left to stop.
	if err := writeFileAtomic(c.pidFile(), []byte(line), 0o644, false); err != nil {
		c.log.Warn("cannot write pid file", "err", err)
	}
}

func (c *component) removePidFile() { _ = os.Remove(c.pidFile()) }

func bootID() string {
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(b))
}

// readPidFile returns the pid recorded in a pid file if that process still
// runs and is the same process (same start time, same boot).
func readPidFile(path string) (int, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 3 || f[2] != bootID() {
		return 0, false
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil || pid <= 1 {
		return 0, false
	}
	ticks, err := procStartTicks(pid)
	if err != nil || strconv.FormatUint(ticks, 10) != f[1] {
		return 0, false
	}
	if st, _ := procState(pid); st == 'Z' {
		return 0, false
	}
	return pid, true
}
