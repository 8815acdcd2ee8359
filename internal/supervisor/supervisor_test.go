package supervisor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/module"
	"github.com/outpost-edge/outpost/internal/supervisor/cgroup"
)

func TestSmokeStartStop(t *testing.T) {
	e := newEnv(t)
	e.write("a", helperRecipe("a", "sleep", "", "SUPTEST_RECORD="+e.record))
	e.start()
	st := e.waitState("a", 10*time.Second, StateRunning)
	if st.PID == 0 {
		t.Fatal("no pid")
	}
	if h := e.s.Health(); h.State != module.StateReady {
		t.Fatalf("health %+v", h)
	}
	// The component is born in its cgroup; the agent is not in it.
	if m, _ := e.s.CgroupMode(); m != cgroup.None {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", st.PID))
		if !strings.Contains(string(b), e.cfg.Cgroup.Parent+"/a\n") {
			t.Fatalf("component not in its cgroup:\n%s", b)
		}
		self, _ := os.ReadFile("/proc/self/task/" + fmt.Sprint(syscall.Gettid()) + "/cgroup")
		if strings.Contains(string(self), e.cfg.Cgroup.Parent) {
			t.Fatalf("agent thread left in a component cgroup:\n%s", self)
		}
		pids, _ := e.s.comps["a"].group.Pids()
		if len(pids) != 1 || pids[0] != st.PID {
			t.Fatalf("cgroup members %v, want [%d]", pids, st.PID)
		}
	}
}

// Dependency order on start (a component starts only after its hard
// dependencies are healthy), reverse order on stop, and a failing soft
// dependency that does not block.
func TestDependencyOrder(t *testing.T) {
	e := newEnv(t)
	ready := "health:\n  exec: {script: 'test -f \"$OUTPOST_DATA_DIR/ready\"'}\n  interval: 1s\n  start_period: 20s\n  start_interval: 20ms\n"
	rec := "SUPTEST_RECORD=" + e.record
	e.write("db", helperRecipe("db", "sleep", ready, rec, "SUPTEST_READY_AFTER=300ms"))
	e.write("api", helperRecipe("api", "sleep", ready+"depends_on: [db]\n", rec, "SUPTEST_READY_AFTER=200ms"))
	e.write("ui", helperRecipe("ui", "sleep", "depends_on: [api, {name: flaky, type: soft}]\n", rec))
	e.write("flaky", helperRecipe("flaky", "crash", "restart: {policy: never}\n", rec))
	e.start()
	for _, n := range []string{"db", "api"} {
		e.waitState(n, 15*time.Second, StateHealthy)
	}
	e.waitState("ui", 15*time.Second, StateRunning)
	if st := e.status("flaky"); st.State != StateFinished {
		t.Fatalf("flaky: %+v", st)
	}
	waitFor(t, 10*time.Second, "ui start record", func() bool { _, ok := e.find("ui", "start"); return ok })
	dbReady, _ := e.find("db", "ready")
	apiStart, _ := e.find("api", "start")
	apiReady, _ := e.find("api", "ready")
	uiStart, _ := e.find("ui", "start")
	t.Logf("db ready %s; api start %s (+%s), ready %s; ui start %s (+%s)",
		dbReady.at.Format("15:04:05.000"), apiStart.at.Format("15:04:05.000"), apiStart.at.Sub(dbReady.at),
		apiReady.at.Format("15:04:05.000"), uiStart.at.Format("15:04:05.000"), uiStart.at.Sub(apiReady.at))
	if !apiStart.at.After(dbReady.at) || !uiStart.at.After(apiReady.at) {
		t.Fatalf("start order violated: db ready %v, api start %v, api ready %v, ui start %v", dbReady.at, apiStart.at, apiReady.at, uiStart.at)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.s.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	uiStop, ok1 := e.find("ui", "stop")
	apiStop, ok2 := e.find("api", "stop")
	dbStop, ok3 := e.find("db", "stop")
	if !ok1 || !ok2 || !ok3 {
		t.Fatalf("missing stop records: %+v", e.records())
	}
	t.Logf("stop: ui %s, api +%s, db +%s", uiStop.at.Format("15:04:05.000"), apiStop.at.Sub(uiStop.at), dbStop.at.Sub(apiStop.at))
	if !(uiStop.at.Before(apiStop.at) && apiStop.at.Before(dbStop.at)) {
		t.Fatalf("stop order violated: ui %v api %v db %v", uiStop.at, apiStop.at, dbStop.at)
	}
}

// A crashing component is restarted with growing backoff and marked broken
// after the threshold; a manual restart clears it.
func TestCrashLoopBroken(t *testing.T) {
	e := newEnv(t)
	e.write("crashy", helperRecipe("crashy", "crash",
		"restart: {policy: on-failure, initial_backoff: 100ms, max_backoff: 2s, multiplier: 2, jitter: 0, max_restarts: 4, window: 1m}\n",
		"SUPTEST_RECORD="+e.record))
	e.start()
	st := e.waitState("crashy", 20*time.Second, StateBroken)
	if st.Restarts != 4 || st.LastExit == nil || st.LastExit.Code != 3 {
		t.Fatalf("broken status %+v (last exit %+v)", st, st.LastExit)
	}
	if !strings.Contains(st.Reason, "restarted 4 times") || !strings.Contains(st.Reason, "exited with code 3") {
		t.Fatalf("reason %q", st.Reason)
	}
	var starts []time.Time
	for _, r := range e.records() {
		if r.what == "start" {
			starts = append(starts, r.at)
		}
	}
	if len(starts) != 5 {
		t.Fatalf("%d starts, want 5 (first run + 4 restarts)", len(starts))
	}
	var gaps []time.Duration
	for i := 1; i < len(starts); i++ {
		gaps = append(gaps, starts[i].Sub(starts[i-1]).Round(time.Millisecond))
	}
	t.Logf("gaps between starts: %v", gaps)
	for i, want := range []time.Duration{100, 200, 400, 800} {
		if gaps[i] < want*time.Millisecond {
			t.Errorf("gap %d = %s, want >= %dms (backoff)", i, gaps[i], want)
		}
	}
	if h := e.s.Health(); h.State != module.StateDegraded || !strings.Contains(h.Detail, "broken: crashy") {
		t.Fatalf("health %+v", h)
	}
	n := len(starts)
	if err := e.s.Restart("crashy"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a start after manual restart", func() bool {
		c := 0
		for _, r := range e.records() {
			if r.what == "start" {
				c++
			}
		}
		return c > n
	})
	if err := e.s.Restart("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("restart unknown: %v", err)
	}
}

// A hung component (SIGSTOP) fails its HTTP health check and is restarted
// within twice the check interval.
func TestHungComponentRestarted(t *testing.T) {
	e := newEnv(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	const interval = 3 * time.Second
	e.write("web", helperRecipe("web", "http",
		fmt.Sprintf("health:\n  http: http://%s/healthz\n  interval: %s\n  timeout: 500ms\n  failure_threshold: 1\n  start_period: 20s\n  start_interval: 20ms\nrestart: {initial_backoff: 10ms}\n", addr, interval),
		"SUPTEST_ADDR="+addr))
	e.cfg.GracePeriod = 5 * 1e9
	e.start()
	st := e.waitState("web", 15*time.Second, StateHealthy)
	old := st.PID
	stopped := time.Now()
	if err := syscall.Kill(old, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	var restartedAt time.Time
	waitFor(t, 4*interval, "a new process", func() bool {
		st = e.status("web")
		if st.PID != 0 && st.PID != old {
			restartedAt = time.Now()
			return true
		}
		return false
	})
	took := restartedAt.Sub(stopped)
	t.Logf("hung at %s, new process after %s (interval %s)", stopped.Format("15:04:05.000"), took, interval)
	if took > 2*interval {
		t.Fatalf("restart took %s, want <= %s", took, 2*interval)
	}
	if alive(old) {
		t.Fatalf("old process %d still alive", old)
	}
	e.waitState("web", 15*time.Second, StateHealthy)
}

// A component exceeding its memory limit is OOM-killed by its cgroup and
// reported as such.
func TestOOMKilled(t *testing.T) {
	e := newEnv(t)
	if m := cgroup.Detect(e.cfg.Cgroup.Parent, "auto"); m.Mode() == cgroup.None {
		t.Skipf("cgroups unavailable on this machine: %s", m.Reason())
	} else {
		defer m.RemoveParent()
	}
	e.write("hog", helperRecipe("hog", "hog", "resources: {memory: 48MiB}\nrestart: {policy: never}\n"))
	e.start()
	st := e.waitState("hog", 60*time.Second, StateFinished)
	if st.LastExit == nil || !st.LastExit.OOMKilled || st.LastExit.Signal != "SIGKILL" {
		t.Fatalf("last exit %+v", st.LastExit)
	}
	if !strings.Contains(st.Reason, "OOM") {
		t.Fatalf("reason %q does not say OOM", st.Reason)
	}
	if st.Limits == nil || !st.Limits.Enforced || st.Limits.Memory != 48<<20 {
		t.Fatalf("limits %+v", st.Limits)
	}
	var m bytes.Buffer
	e.s.metrics.WritePrometheus(&m)
	if !strings.Contains(m.String(), `outpost_supervisor_oom_kills_total{component="hog"} 1`) {
		t.Errorf("oom metric missing:\n%s", m.String())
	}
	t.Logf("reason: %s", st.Reason)
}

// Stopping a component kills its whole tree, including a descendant in its
// own session, and leaves no zombie.
func TestNoOrphansNoZombies(t *testing.T) {
	e := newEnv(t)
	e.cfg.GracePeriod = 300 * 1e6
	e.write("forker", helperRecipe("forker", "forker", ""))
	e.start()
	st := e.waitState("forker", 10*time.Second, StateRunning)
	var kids []int
	waitFor(t, 10*time.Second, "two descendants", func() bool {
		kids = descendantsWith("SUPTEST_CHILD=")
		return len(kids) == 2
	})
	t.Logf("leader %d, descendants %v", st.PID, kids)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := e.s.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	for _, p := range append(kids, st.PID) {
		if alive(p) {
			t.Errorf("process %d survived stop", p)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(zombiesOf(os.Getpid())) > 0 && time.Now().Before(deadline) {
		e.s.reaper.reapNow()
		time.Sleep(10 * time.Millisecond)
	}
	for _, z := range zombiesOf(os.Getpid()) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", z))
		t.Errorf("zombie child: %s", b)
	}
}

// descendantsWith lists processes whose environment contains s.
func descendantsWith(s string) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil || !alive(pid) {
			continue
		}
		if strings.Contains(string(b), s) {
			out = append(out, pid)
		}
	}
	return out
}

// A startup component is running while processes remain in its cgroup;
// stop runs shutdown first, then kills what is left. Limits reach the
// cgroup files.
func TestStartupShutdownAndLimits(t *testing.T) {
	e := newEnv(t)
	m := cgroup.Detect(e.cfg.Cgroup.Parent, "auto")
	if m.Mode() == cgroup.None {
		t.Skipf("cgroups unavailable on this machine: %s", m.Reason())
	}
	defer m.RemoveParent()
	marker := filepath.Join(e.dir, "shutdown-ran")
	e.write("daemon", fmt.Sprintf("name: daemon\nversion: 1.0.0\nlifecycle:\n  startup: 'sleep 1000 > /dev/null 2>&1 &'\n  shutdown: 'touch %s'\n"+
		"resources: {memory: 32MiB, cpu: 0.5, pids: 16}\n", marker))
	e.start()
	st := e.waitState("daemon", 10*time.Second, StateRunning)
	g := e.s.comps["daemon"].group
	pids, _ := g.Pids()
	if len(pids) != 1 {
		t.Fatalf("cgroup members %v, want the daemon", pids)
	}
	if m.Mode() == cgroup.V1 {
		for file, want := range map[string]string{
			g.Path("memory") + "/memory.limit_in_bytes": "33554432",
			g.Path("cpu") + "/cpu.cfs_quota_us":         "50000",
			g.Path("pids") + "/pids.max":                "16",
		} {
			b, err := os.ReadFile(file)
			if err != nil || strings.TrimSpace(string(b)) != want {
				t.Errorf("%s = %q (%v), want %s", file, b, err, want)
			}
		}
	}
	t.Logf("status %+v", st)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := e.s.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Error("shutdown step did not run")
	}
	if alive(pids[0]) {
		t.Errorf("daemon %d survived stop", pids[0])
	}
}

// pids: 1 still starts a single-process component (the forking thread of
// the agent does not count against the limit after the start).
func TestPidsLimitOne(t *testing.T) {
	e := newEnv(t)
	if m := cgroup.Detect(e.cfg.Cgroup.Parent, "auto"); m.Mode() == cgroup.None {
		t.Skipf("cgroups unavailable on this machine: %s", m.Reason())
	} else {
		defer m.RemoveParent()
	}
	e.write("single", "name: single\nversion: 1.0.0\nlifecycle:\n  run: [sleep, \"1000\"]\nresources: {pids: 1}\n")
	e.start()
	st := e.waitState("single", 10*time.Second, StateRunning)
	time.Sleep(100 * time.Millisecond)
	if st2 := e.status("single"); st2.PID != st.PID || st2.State != StateRunning {
		t.Fatalf("did not stay up: %+v", st2)
	}
	b, _ := os.ReadFile(e.s.comps["single"].group.Path("pids") + "/pids.max")
	if strings.TrimSpace(string(b)) != "1" {
		t.Fatalf("pids.max = %q", b)
	}
}

// The module can be stopped and started again (module.Runner restarts).
func TestStopStartAgain(t *testing.T) {
	e := newEnv(t)
	e.write("a", helperRecipe("a", "sleep", ""))
	s := e.start()
	first := e.waitState("a", 10*time.Second, StateRunning)
	if err := s.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if h := s.Health(); h.State != module.StateStopped {
		t.Fatalf("health after stop %+v", h)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	second := e.waitState("a", 10*time.Second, StateRunning)
	if second.PID == first.PID || alive(first.PID) {
		t.Fatalf("not restarted cleanly: %d -> %d", first.PID, second.PID)
	}
}

// Reconfigure applies a changed override to that component only; changed
// directories need a restart.
func TestReconfigureOverride(t *testing.T) {
	e := newEnv(t)
	e.write("a", helperRecipe("a", "sleep", ""))
	e.write("b", helperRecipe("b", "sleep", ""))
	s := e.start()
	a0 := e.waitState("a", 10*time.Second, StateRunning)
	b0 := e.waitState("b", 10*time.Second, StateRunning)
	cfg := e.cfg
	cfg.Overrides = map[string]Override{"a": {Env: map[string]string{"MODE": "fast"}}}
	if err := module.Of[Config](s).Reconfigure(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a restarted", func() bool { st := e.status("a"); return st.State == StateRunning && st.PID != a0.PID })
	env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", e.status("a").PID))
	if !strings.Contains(string(env), "MODE=fast\x00") {
		t.Fatal("override env not applied")
	}
	if e.status("b").PID != b0.PID {
		t.Fatal("b restarted")
	}
	cfg.Overrides = map[string]Override{"a": {Env: map[string]string{"MODE": "fast"}}, "b": {Disabled: true}}
	if err := module.Of[Config](s).Reconfigure(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	e.waitState("b", 10*time.Second, StateStopped)
	cfg.LogDir = filepath.Join(e.dir, "elsewhere")
	if err := module.Of[Config](s).Reconfigure(context.Background(), cfg); !errors.Is(err, ErrRestartRequired) {
		t.Fatalf("changed log_dir: %v", err)
	}
}
