package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/config"
	"github.com/outpost-edge/outpost/internal/module"
	"github.com/outpost-edge/outpost/internal/supervisor/container"
	"github.com/outpost-edge/outpost/internal/supervisor/container/ctrtest"
)

// ctrBackend is a container runtime the shared container tests run
// against: docker (the package's podman service) always, containerd in
// builds with -tags containerd (container_containerd_test.go).
type ctrBackend struct {
	name string
	// setup points cc at the backend's runtime and returns a client of
	// the same runtime for the test's own checks.
	setup func(tb testing.TB, cc *ContainersConfig) container.Runtime
}

var ctrBackends = []ctrBackend{{"docker", func(tb testing.TB, cc *ContainersConfig) container.Runtime {
	sock := ctrtest.Podman(tb)
	cc.Socket = sock
	return container.NewDocker(sock)
}}}

// forEachBackend runs body as a subtest per backend.
func forEachBackend(t *testing.T, body func(t *testing.T, b ctrBackend)) {
	for _, b := range ctrBackends {
		t.Run(b.name, func(t *testing.T) { body(t, b) })
	}
}

// yaml returns the containers section for cc as a flow mapping.
func containersYAML(cc ContainersConfig) string {
	s := "{socket: " + cc.Socket
	if cc.Runtime != "" {
		s += ", runtime: " + cc.Runtime
	}
	if cc.Namespace != "" {
		s += ", namespace: " + cc.Namespace
	}
	return s + "}"
}

// ctrEnv is a test supervisor whose container components run through the
// backend's runtime.
func ctrEnv(t *testing.T, b ctrBackend) (*testEnv, container.Runtime) {
	t.Helper()
	e := newEnv(t)
	rt := b.setup(t, &e.cfg.Containers)
	return e, rt
}

// ctrRecipe writes the app image archive next to the recipes and returns
// a recipe running it with args. extra is appended (YAML at top level).
func (e *testEnv) ctrRecipe(name string, args []string, extra string) (string, ctrtest.Archive) {
	e.tb.Helper()
	a := ctrtest.AppImage(e.tb, "localhost/outpost-test/"+name+":1", e.tb.Name()+name)
	a.Write(e.tb, filepath.Join(e.recipes, name+".tar"))
	var q []string
	for _, s := range args {
		q = append(q, fmt.Sprintf("%q", s))
	}
	return fmt.Sprintf(`name: %s
version: 1.0.0
kind: container
container:
  image: %s@%s
  args: [%s]
artifacts:
  - path: %s.tar
    sha256: %s
    image: true
restart:
  initial_backoff: 100ms
`, name, a.Tag, a.ID, strings.Join(q, ", "), name, a.SHA256()) + extra, a
}

func ctrList(t *testing.T, rt container.Runtime, s *Supervisor, component string) []container.Info {
	t.Helper()
	l := s.ownLabels()
	if component != "" {
		l[container.LabelComponent] = component
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	list, err := rt.List(ctx, l)
	if err != nil {
		t.Fatal(err)
	}
	return list
}

// End to end: a container component connects to the bus through the
// mounted socket with its own credentials (its MQTT heartbeat makes it
// healthy), its output reaches the log, it is restarted when it dies, and
// stopping the supervisor removes it.
func TestContainerComponent(t *testing.T) { forEachBackend(t, testContainerComponent) }

func testContainerComponent(t *testing.T, b ctrBackend) {
	e, rt := ctrEnv(t, b)
	bus := startBus(t)
	e.opts.Identity, e.opts.Bus, e.opts.Publisher = busIdentity{bus}, bus, bus
	body, _ := e.ctrRecipe("hb", []string{"mqtt"}, "health:\n  mqtt: components/hb/heartbeat\n  interval: 2s\nrestart:\n  policy: always\n  initial_backoff: 100ms\n")
	body = strings.Replace(body, "restart:\n  initial_backoff: 100ms\n", "", 1)
	e.write("hb", body)
	s := e.start()
	st := e.waitState("hb", 60*time.Second, StateHealthy)
	if st.Container == nil || st.Container.ID == "" || st.Container.Adopted || st.PID == 0 {
		t.Fatalf("container status %+v", st.Container)
	}
	if st.Memory <= 0 {
		t.Fatalf("no memory figure from the runtime's stats: %+v", st)
	}
	if got := bus.Issued("hb"); len(got) != 1 {
		t.Fatalf("credentials issued %d times", len(got))
	}
	waitFor(t, 10*time.Second, "connected in the log", func() bool {
		l, _ := s.Logs("hb", 50)
		return strings.Contains(strings.Join(l, "\n"), "stdout connected")
	})
	// The password is in the credentials file, never in the container's
	// environment (which the runtime shows to anyone asking).
	for _, kv := range e.inspectEnv(t, rt, st.Container.ID) {
		if strings.Contains(kv, bus.Issued("hb")[0].Password) {
			t.Fatalf("password in the container environment: %s", strings.SplitN(kv, "=", 2)[0])
		}
	}
	// It dies (stopped behind the agent's back): restarted, healthy again.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := rt.Stop(ctx, st.Container.ID, 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "a restart", func() bool {
		st2, _ := s.Component("hb")
		return st2.Restarts == 1 && st2.State == StateHealthy
	})
	if l := ctrList(t, rt, s, "hb"); len(l) != 1 || l[0].ID == st.Container.ID {
		t.Fatalf("after the restart: %+v", l)
	}
	sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer scancel()
	if err := s.Stop(sctx); err != nil {
		t.Fatal(err)
	}
	if l := ctrList(t, rt, s, ""); len(l) != 0 {
		t.Fatalf("containers left after stop: %+v", l)
	}
}

func (e *testEnv) inspectEnv(t *testing.T, rt container.Runtime, id string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	code, out, err := rt.Exec(ctx, id, []string{"/app", "env"})
	_ = code
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(out, "\n")
}

// An exec health check runs inside the container; an OOM kill is
// reported as such; a container ignoring SIGTERM is killed after the
// grace period and the stop does not hang.
func TestContainerExecHealthOOMAndStop(t *testing.T) {
	forEachBackend(t, testContainerExecHealthOOMAndStop)
}

func testContainerExecHealthOOMAndStop(t *testing.T, b ctrBackend) {
	e, rt := ctrEnv(t, b)
	e.cfg.GracePeriod = config.Duration(time.Second)
	body, _ := e.ctrRecipe("ready", []string{"touch", "/var/lib/outpost/data/ready"}, "health:\n  exec: [/app, check, /var/lib/outpost/data/ready]\n")
	e.write("ready", body)
	body, _ = e.ctrRecipe("hog", []string{"hog"}, "resources:\n  memory: 32MiB\n")
	e.write("hog", strings.Replace(body, "restart:\n", "restart:\n  policy: never\n", 1))
	body, _ = e.ctrRecipe("stubborn", []string{"ignore"}, "")
	e.write("stubborn", body)
	s := e.start()
	e.waitState("ready", 60*time.Second, StateHealthy)
	st := e.waitState("hog", 60*time.Second, StateFinished)
	if st.LastExit == nil || !st.LastExit.OOMKilled || !strings.Contains(st.Reason, "OOM") {
		t.Fatalf("hog: %+v last exit %+v", st, st.LastExit)
	}
	st = e.waitState("stubborn", 60*time.Second, StateRunning)
	t0 := time.Now()
	if err := s.Restart("stubborn"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "a new container", func() bool {
		st2, _ := s.Component("stubborn")
		return st2.State == StateRunning && st2.Container != nil && st2.Container.ID != "" && st2.Container.ID != st.Container.ID
	})
	if took := time.Since(t0); took < time.Second || took > 15*time.Second {
		t.Fatalf("restart of a container ignoring SIGTERM took %s (grace 1s)", took)
	}
	_ = rt
}

// The runtime's socket is missing: the container component waits with the
// reason and retries with backoff; a native component is unaffected. When
// the socket appears, the container starts.
func TestContainerRuntimeMissing(t *testing.T) {
	real := ctrtest.Podman(t)
	e := newEnv(t)
	link := filepath.Join(e.dir, "runtime.sock")
	e.cfg.Containers.Socket = link
	e.cfg.Containers.RetryMax = config.Duration(500 * time.Millisecond)
	body, _ := e.ctrRecipe("late", []string{"sleep"}, "")
	e.write("late", body)
	e.write("native", helperRecipe("native", "sleep", ""))
	s := e.start()
	var st Status
	waitFor(t, 10*time.Second, "waiting for runtime", func() bool {
		st, _ = s.Component("late")
		return st.State == StateWaiting && st.Reason != ""
	})
	if !strings.Contains(st.Reason, "waiting for runtime") || !strings.Contains(st.Reason, "no such file") {
		t.Fatalf("reason %q", st.Reason)
	}
	e.waitState("native", 10*time.Second, StateRunning)
	if h := s.Health(); h.State != module.StateDegraded || !strings.Contains(h.Detail, "waiting for the container runtime: late") {
		t.Fatalf("health %+v", h)
	}
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	e.waitState("late", 60*time.Second, StateRunning)
}

// Bad images are refused with the reason: a digest that is not the
// archive's, an archive that does not load, an image neither in the
// runtime nor in an archive. An archive whose sha256 differs from the
// recipe's is rejected when the recipe is loaded.
func TestContainerBadImages(t *testing.T) { forEachBackend(t, testContainerBadImages) }

func testContainerBadImages(t *testing.T, b ctrBackend) {
	e, _ := ctrEnv(t, b)
	e.cfg.Containers.Pull = PullNever // "missing" has no archive and may not be pulled
	other := "sha256:" + strings.Repeat("ab", 32)
	body, a := e.ctrRecipe("wrongdigest", []string{"sleep"}, "")
	e.write("wrongdigest", strings.Replace(body, a.ID, other, 1))

	body, _ = e.ctrRecipe("corrupt", []string{"sleep"}, "")
	bad := []byte("this is not an image archive")
	if err := os.WriteFile(filepath.Join(e.recipes, "corrupt.tar"), bad, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := ctrtest.Archive{Data: bad}.SHA256()
	e.write("corrupt", regexpReplaceSHA(body, sum))

	e.write("missing", "name: missing\nversion: 1.0.0\nkind: container\ncontainer:\n  image: localhost/outpost-test/none:1@"+other+"\n")

	body, _ = e.ctrRecipe("badsum", []string{"sleep"}, "")
	e.write("badsum", regexpReplaceSHA(body, strings.Repeat("0", 64)))
	e.start()
	for _, c := range []struct{ name, want string }{
		{"wrongdigest", "not the pinned digest " + other},
		{"corrupt", "load image archive corrupt.tar"},
		{"missing", "is not in the runtime and the recipe has no image archive"},
	} {
		st := e.waitState(c.name, 60*time.Second, StateInstallFailed)
		if !strings.Contains(st.Reason, c.want) {
			t.Errorf("%s: reason %q, want %q", c.name, st.Reason, c.want)
		}
	}
	st := e.waitState("badsum", 10*time.Second, StateInvalid)
	if !strings.Contains(st.Error, "badsum.yaml:8:5: artifacts[0]") || !strings.Contains(st.Error, "recipe says 0000") {
		t.Errorf("badsum: %q", st.Error)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func regexpReplaceSHA(body, sum string) string {
	i := strings.Index(body, "sha256: ")
	return body[:i+8] + sum + body[i+8+64:]
}

// Host paths outside the agent's allowed list and privileged mode are
// refused with file:line:col; an allowed host path is mounted.
func TestContainerPolicy(t *testing.T) { forEachBackend(t, testContainerPolicy) }

func testContainerPolicy(t *testing.T, b ctrBackend) {
	e, rtc := ctrEnv(t, b)
	allowed := filepath.Join(e.dir, "shared")
	if err := os.MkdirAll(allowed, 0o755); err != nil {
		t.Fatal(err)
	}
	e.cfg.Containers.HostPaths = []string{allowed}
	// A secret from the agent's secrets directory reaches the container's
	// environment and never the agent's log.
	const secret = "s3cr3t-value-for-the-test"
	e.cfg.Containers.SecretsDir = filepath.Join(e.dir, "secrets")
	if err := os.MkdirAll(e.cfg.Containers.SecretsDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.cfg.Containers.SecretsDir, "api-token"), []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var logBuf syncBuffer
	e.opts.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(testWriter{t}, &logBuf), &slog.HandlerOptions{Level: slog.LevelDebug}))
	body, _ := e.ctrRecipe("hostok", []string{"touch", "/shared/hello"}, "")
	e.write("hostok", strings.Replace(body, "  args:", "  secret_env: {API_TOKEN: api-token}\n  mounts:\n    - {source: "+allowed+", target: /shared}\n  args:", 1))
	body, _ = e.ctrRecipe("hostbad", []string{"sleep"}, "")
	e.write("hostbad", strings.Replace(body, "  args:", "  mounts:\n    - {source: /etc, target: /hostetc}\n  privileged: true\n  args:", 1))
	e.start()
	waitFor(t, 60*time.Second, "the file written through the allowed mount", func() bool {
		_, err := os.Stat(filepath.Join(allowed, "hello"))
		return err == nil
	})
	ok := e.waitState("hostok", 30*time.Second, StateRunning)
	if env := strings.Join(e.inspectEnv(t, rtc, ok.Container.ID), "\n"); !strings.Contains(env, "API_TOKEN="+secret+"\n") {
		t.Fatalf("secret not in the container's environment:\n%s", env)
	}
	if strings.Contains(logBuf.String(), secret) {
		t.Fatal("the secret's value is in the agent's log")
	}
	st := e.waitState("hostbad", 10*time.Second, StateInvalid)
	for _, want := range []string{"hostbad.yaml:7:16: container.mounts[0].source", "/etc is not under", "hostbad.yaml:8:15: container.privileged"} {
		if !strings.Contains(st.Error, want) {
			t.Errorf("error %q does not contain %q", st.Error, want)
		}
	}
}

// Kill -9 the agent: its container keeps running and the restarted agent
// re-adopts it (same container, no duplicate) instead of starting another.
// Removing the recipe then removes the container and its image.
func TestContainerReadoptAfterKill9(t *testing.T) { forEachBackend(t, testContainerReadoptAfterKill9) }

func testContainerReadoptAfterKill9(t *testing.T, b ctrBackend) {
	e, rt := ctrEnv(t, b)
	bin := buildTestAgent(t)
	body, a := e.ctrRecipe("keep", []string{"tick"}, "")
	e.write("keep", body)
	sockDir, _ := os.MkdirTemp("", "opagent")
	defer os.RemoveAll(sockDir)
	api := filepath.Join(sockDir, "api.sock")
	state := filepath.Join(e.dir, "state")
	cfg := fmt.Sprintf("recipes_dir: %s\nstate_dir: %s\nlog_dir: %s\ngrace_period: 2s\ncgroup: {mode: none}\ncontainers: %s\n",
		e.recipes, state, filepath.Join(e.dir, "logs"), containersYAML(e.cfg.Containers))
	cfgPath := filepath.Join(e.dir, "cfg.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	probe := New(Options{})
	probe.cfg.StateDir = state
	labels := probe.ownLabels()
	list := func() []container.Info {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		l, err := rt.List(ctx, labels)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	running := func(ag *agentProc) Status {
		var st Status
		waitFor(t, 60*time.Second, "keep running in a container", func() bool {
			sts, err := ag.list()
			if err != nil || len(sts) != 1 {
				return false
			}
			st = sts[0]
			return st.State == StateRunning && st.Container != nil && st.Container.ID != ""
		})
		return st
	}
	logFile := filepath.Join(e.dir, "logs", "keep.log")
	ticks := func() []int {
		b, _ := os.ReadFile(logFile)
		var n []int
		for _, l := range strings.Split(string(b), "\n") {
			var i int
			if _, err := fmt.Sscanf(l[min(len(l), 32):], "tick %d", &i); err == nil {
				n = append(n, i)
			}
		}
		return n
	}
	a1 := startAgent(t, bin, cfgPath, api)
	first := running(a1)
	waitFor(t, 30*time.Second, "ticks in the log", func() bool { return len(ticks()) >= 5 })
	if err := a1.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = a1.cmd.Wait()
	before := ticks()
	// The container goes on printing while no agent follows it.
	time.Sleep(time.Second)

	a2 := startAgent(t, bin, cfgPath, api)
	defer func() {
		_ = a2.cmd.Process.Signal(syscall.SIGTERM)
		_ = a2.cmd.Wait()
		if l := list(); len(l) != 0 {
			t.Errorf("containers left after the agent stopped: %+v", l)
		}
	}()
	second := running(a2)
	if second.Container.ID != first.Container.ID || !second.Container.Adopted {
		t.Fatalf("after kill -9: container %s (adopted %v), before %s", second.Container.ID, second.Container.Adopted, first.Container.ID)
	}
	if l := list(); len(l) != 1 {
		t.Fatalf("%d containers, want the one re-adopted: %+v", len(l), l)
	}
	// The lines it printed while the agent was down are in the log: from
	// the first tick to the latest none is missing (a line printed just
	// before the kill may appear twice).
	last := before[len(before)-1]
	waitFor(t, 30*time.Second, "ticks after the re-adoption", func() bool {
		n := ticks()
		return len(n) > 0 && n[len(n)-1] > last+15
	})
	seen := map[int]int{}
	for _, i := range ticks() {
		seen[i]++
	}
	n := ticks()
	for i := n[0]; i <= n[len(n)-1]; i++ {
		if seen[i] == 0 {
			t.Fatalf("tick %d missing from the log after the re-adoption (last before the kill: %d)", i, last)
		}
		if seen[i] > 1 && i < last-1 {
			t.Fatalf("tick %d logged %d times: the re-adopted log starts too early", i, seen[i])
		}
	}
	// Removal garbage-collects the container and the image.
	if err := os.Remove(filepath.Join(e.recipes, "keep.yaml")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the container removed", func() bool { return len(list()) == 0 })
	waitFor(t, 30*time.Second, "the image removed", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := rt.Image(ctx, a.ID)
		return errors.Is(err, container.ErrNotFound)
	})
}

// Dependencies work both ways between native and container components: a
// container waits for its native hard dependency, a native component for
// its container dependency, and a restart of the native base restarts
// the chain.
func TestContainerDependencies(t *testing.T) { forEachBackend(t, testContainerDependencies) }

func testContainerDependencies(t *testing.T, b ctrBackend) {
	e, _ := ctrEnv(t, b)
	e.write("base", helperRecipe("base", "sleep", ""))
	body, _ := e.ctrRecipe("mid", []string{"sleep"}, "depends_on: [base]\n")
	e.write("mid", body)
	e.write("top", helperRecipe("top", "sleep", "depends_on: [mid]\n"))
	s := e.start()
	e.waitState("top", 60*time.Second, StateRunning)
	mid, _ := s.Component("mid")
	top, _ := s.Component("top")
	base, _ := s.Component("base")
	if !base.Since.Before(mid.Since) || !mid.Since.Before(top.Since) || mid.Container == nil {
		t.Fatalf("start order: base %s, mid %s, top %s", base.Since, mid.Since, top.Since)
	}
	first := mid.Container.ID
	if err := s.Restart("base"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "the chain restarted", func() bool {
		m, _ := s.Component("mid")
		tp, _ := s.Component("top")
		return m.State == StateRunning && m.Container != nil && m.Container.ID != "" && m.Container.ID != first && tp.State == StateRunning && tp.Since.After(m.Since)
	})
}

// The daemon dies while a container runs: the container keeps running
// (under conmon) and stays healthy, a native component is unaffected, a
// container component added meanwhile waits for the runtime with the
// reason; when the daemon is back, the new one starts and the running one
// is still the same container, and it can be restarted through it.
func TestContainerDaemonDown(t *testing.T) {
	ctrtest.Podman(t) // builds ctrapp and checks podman before a private service
	svc, err := ctrtest.StartPodman()
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Stop()
	e := newEnv(t)
	e.cfg.Containers.Socket = svc.Socket
	e.cfg.Containers.RetryMax = config.Duration(500 * time.Millisecond)
	port := freePort(t)
	body, _ := e.ctrRecipe("survivor", []string{"http", fmt.Sprintf("127.0.0.1:%d", port)},
		fmt.Sprintf("health:\n  http: http://127.0.0.1:%d/healthz\n  interval: 500ms\n", port))
	e.write("survivor", body)
	e.write("nat", helperRecipe("nat", "sleep", ""))
	s := e.start()
	first := e.waitState("survivor", 60*time.Second, StateHealthy)
	e.waitState("nat", 10*time.Second, StateRunning)

	svc.Kill()
	body, _ = e.ctrRecipe("late", []string{"sleep"}, "")
	e.write("late", body)
	if err := s.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	var late Status
	waitFor(t, 20*time.Second, "late waiting for the runtime", func() bool {
		late, _ = s.Component("late")
		return late.State == StateWaiting && strings.Contains(late.Reason, "waiting for runtime")
	})
	if !strings.Contains(late.Reason, "connection refused") {
		t.Fatalf("reason %q", late.Reason)
	}
	// Several health intervals without the daemon: still healthy.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if st, _ := s.Component("survivor"); st.State != StateHealthy {
			t.Fatalf("survivor while the daemon is down: %s %s", st.State, st.Reason)
		}
		if st, _ := s.Component("nat"); st.State != StateRunning {
			t.Fatalf("native component: %s %s", st.State, st.Reason)
		}
		time.Sleep(100 * time.Millisecond)
	}

	if err := svc.Restart(); err != nil {
		t.Fatal(err)
	}
	e.waitState("late", 60*time.Second, StateRunning)
	if st, _ := s.Component("survivor"); st.State != StateHealthy || st.Container == nil || st.Container.ID != first.Container.ID {
		t.Fatalf("survivor after the daemon came back: %+v", st)
	}
	if err := s.Restart("survivor"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "survivor restarted in a new container", func() bool {
		st, _ := s.Component("survivor")
		return st.State == StateHealthy && st.Container != nil && st.Container.ID != "" && st.Container.ID != first.Container.ID
	})
}

// A new version with another image replaces the container, and the old
// image, no longer used, is removed from the runtime.
func TestContainerNewVersionCollectsOldImage(t *testing.T) {
	forEachBackend(t, testContainerNewVersionCollectsOldImage)
}

func testContainerNewVersionCollectsOldImage(t *testing.T, b ctrBackend) {
	e, rt := ctrEnv(t, b)
	body, a1 := e.ctrRecipe("ver", []string{"sleep"}, "")
	e.write("ver", body)
	s := e.start()
	first := e.waitState("ver", 60*time.Second, StateRunning)
	a2 := ctrtest.AppImage(t, "localhost/outpost-test/ver:2", "v2")
	a2.Write(t, filepath.Join(e.recipes, "ver2.tar"))
	body = strings.NewReplacer("version: 1.0.0", "version: 2.0.0", a1.Tag+"@"+a1.ID, a2.Tag+"@"+a2.ID,
		"path: ver.tar", "path: ver2.tar", a1.SHA256(), a2.SHA256()).Replace(body)
	e.write("ver", body)
	if err := s.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "version 2 running", func() bool {
		st, _ := s.Component("ver")
		return st.State == StateRunning && st.Version == "2.0.0" && st.Container != nil && st.Container.Image == a2.ID
	})
	if l := ctrList(t, rt, s, "ver"); len(l) != 1 || l[0].ID == first.Container.ID {
		t.Fatalf("containers after the update: %+v", l)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := rt.Image(ctx, a1.ID); !errors.Is(err, container.ErrNotFound) {
		t.Fatalf("old image still in the runtime: %v", err)
	}
}
