package supervisor

import (
	"context"
	"fmt"
	"github.com/outpost-edge/outpost/internal/module"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/supervisor/cgroup"
	"github.com/outpost-edge/outpost/internal/supervisor/container/ctrtest"
)

// hogged keeps the hog helper's memory reachable.
var hogged [][]byte

// helperEnv selects a helper mode when the test binary runs as a
// component program (see TestMain).
const helperEnv = "SUPTEST_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(helperMain(mode))
	}
	code := m.Run()
	ctrtest.Shutdown() // the podman service of the container tests, if started
	os.Exit(code)
}

// helperMain implements the test components:
//
//	sleep     run until SIGTERM (exit 0); records start/stop in $SUPTEST_RECORD
//	crash     exit 3 after $SUPTEST_DELAY (default 0)
//	hog       allocate and touch memory until killed
//	http      serve GET /healthz on $SUPTEST_ADDR until SIGTERM
//	ignore    ignore SIGTERM, run forever
//	forker    start two descendants (one in a new session) and run until SIGTERM
func helperMain(mode string) int {
	name := os.Getenv("OUTPOST_COMPONENT_NAME")
	record := func(what string) {
		if p := os.Getenv("SUPTEST_RECORD"); p != "" {
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o666)
			if err == nil {
				fmt.Fprintf(f, "%s %s %d %d\n", name, what, time.Now().UnixNano(), os.Getpid())
				f.Close()
			}
		}
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	switch mode {
	case "ipc":
		return ipcLoad()
	case "sleep":
		record("start")
		if d, err := time.ParseDuration(os.Getenv("SUPTEST_READY_AFTER")); err == nil {
			time.Sleep(d)
			_ = os.WriteFile(filepath.Join(os.Getenv("OUTPOST_DATA_DIR"), "ready"), nil, 0o644)
			record("ready")
		}
		fmt.Println("started", name)
		<-term
		record("stop")
		return 0
	case "crash":
		record("start")
		if d, err := time.ParseDuration(os.Getenv("SUPTEST_DELAY")); err == nil {
			time.Sleep(d)
		}
		fmt.Fprintln(os.Stderr, "crashing on purpose")
		return 3
	case "hog":
		for {
			b := make([]byte, 1<<20)
			for i := range b {
				b[i] = byte(i)
			}
			hogged = append(hogged, b)
			time.Sleep(time.Millisecond)
		}
	case "http":
		record("start")
		srv := &http.Server{Addr: os.Getenv("SUPTEST_ADDR"), Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintln(w, "ok")
		})}
		go func() { _ = srv.ListenAndServe() }()
		<-term
		return 0
	case "ignore":
		signal.Ignore(syscall.SIGTERM)
		record("start")
		select {}
	case "forker":
		record("start")
		self, _ := os.Executable()
		for i, setsid := range []bool{false, true} {
			cmd := execCommand(self, setsid)
			cmd.Env = append(os.Environ(), helperEnv+"=ignore", "SUPTEST_RECORD=", fmt.Sprintf("SUPTEST_CHILD=%d", i))
			if err := cmd.Start(); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
		<-term
		return 0
	}
	fmt.Fprintln(os.Stderr, "unknown helper mode", mode)
	return 2
}

// testEnv is a supervisor under test with its own directories and cgroup
// parent.
type testEnv struct {
	t       *testing.T
	tb      testing.TB
	dir     string
	recipes string
	record  string
	cfg     Config
	s       *Supervisor
	opts    Options
}

var testSeq int

func newEnv(t *testing.T) *testEnv {
	t.Helper()
	testSeq++
	dir := t.TempDir()
	e := &testEnv{t: t, tb: t, dir: dir, recipes: filepath.Join(dir, "recipes"), record: filepath.Join(dir, "record.txt")}
	if err := os.MkdirAll(e.recipes, 0o755); err != nil {
		t.Fatal(err)
	}
	e.cfg = Config{
		RecipesDir:  e.recipes,
		StateDir:    filepath.Join(dir, "state"),
		LogDir:      filepath.Join(dir, "logs"),
		GracePeriod: 0,
		Cgroup:      CgroupConfig{Parent: fmt.Sprintf("outpost-test-%d-%d", os.Getpid(), testSeq)},
	}
	e.opts.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return e
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (e *testEnv) start() *Supervisor {
	e.tb.Helper()
	e.s = New(e.opts)
	if err := module.Of[Config](e.s).Init(context.Background(), e.cfg); err != nil {
		e.tb.Fatal(err)
	}
	if err := e.s.Start(context.Background()); err != nil {
		e.tb.Fatal(err)
	}
	s := e.s
	e.tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.Stop(ctx); err != nil {
			e.tb.Errorf("stop: %v", err)
		}
		if s.cg != nil && s.cg.Mode() != cgroup.None {
			names, _ := s.cg.Names()
			for _, n := range names {
				_ = s.cg.Group(n).Remove()
			}
			_ = s.cg.RemoveParent()
		}
	})
	return s
}

// helperRecipe returns a recipe running the test binary in a helper mode.
func helperRecipe(name, mode string, extra string, env ...string) string {
	self, _ := os.Executable()
	var b strings.Builder
	fmt.Fprintf(&b, "name: %s\nversion: 1.0.0\nlifecycle:\n  run:\n    exec: [%q]\nenv:\n  %s: %s\n", name, self, helperEnv, mode)
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		fmt.Fprintf(&b, "  %s: %q\n", k, v)
	}
	return b.String() + extra
}

func (e *testEnv) write(name, body string) {
	e.tb.Helper()
	p := filepath.Join(e.recipes, name+".yaml")
	tmp := p + ".tmp~"
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		e.tb.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		e.tb.Fatal(err)
	}
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (e *testEnv) status(name string) Status {
	st, err := e.s.Component(name)
	if err != nil {
		e.tb.Fatal(err)
	}
	return st
}

func (e *testEnv) waitState(name string, timeout time.Duration, states ...State) Status {
	e.tb.Helper()
	var st Status
	deadline := time.Now().Add(timeout)
	for {
		st, _ = e.s.Component(name)
		for _, s := range states {
			if st.State == s {
				return st
			}
		}
		if time.Now().After(deadline) {
			e.tb.Fatalf("timed out after %s waiting for %s in %v; last status %+v", timeout, name, states, st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// records reads the helper record file: lines "name what unixnano pid".
type rec struct {
	name, what string
	at         time.Time
	pid        int
}

var recMu sync.Mutex

func (e *testEnv) records() []rec {
	recMu.Lock()
	defer recMu.Unlock()
	b, _ := os.ReadFile(e.record)
	var out []rec
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(l)
		if len(f) != 4 {
			continue
		}
		ns, _ := strconv.ParseInt(f[2], 10, 64)
		pid, _ := strconv.Atoi(f[3])
		out = append(out, rec{f[0], f[1], time.Unix(0, ns), pid})
	}
	return out
}

func (e *testEnv) find(name, what string) (rec, bool) {
	for _, r := range e.records() {
		if r.name == name && r.what == what {
			return r, true
		}
	}
	return rec{}, false
}

func alive(pid int) bool {
	st, err := procState(pid)
	return err == nil && st != 'Z'
}

// zombiesOf lists zombie children of this process.
func zombiesOf(ppid int) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f, err := procStat(pid)
		if err == nil && f[0] == "Z" && f[1] == strconv.Itoa(ppid) {
			out = append(out, pid)
		}
	}
	return out
}
