package ota_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/outpost-edge/outpost/internal/buildinfo"
	"github.com/outpost-edge/outpost/internal/config"
	"github.com/outpost-edge/outpost/internal/module"
	"github.com/outpost-edge/outpost/internal/ota"
	"github.com/outpost-edge/outpost/internal/ota/release"
	"github.com/outpost-edge/outpost/internal/ota/tuf"
)

// fixture is built once per test run: agent binaries of several versions
// and behaviours, and a golden repository holding A (1.0.0) and B (1.1.0,
// full and delta from A). Tests copy the repository (hard links) and add
// what they need.
var fixture struct {
	dir      string
	platform string
	outpost  string            // cmd/outpost, for `outpost release`
	bins     map[string]string // version → binary path
	repo     string
	keys     string
}

// Versions built for the tests and how they behave (see testdata/agent).
var agentVersions = map[string]string{
	"1.0.0": "healthy", // A
	"1.1.0": "healthy", // B
	"1.2.0": "exit",
	"1.3.0": "crash",
	"1.4.0": "unready",
	"1.5.0": "initpanic",
	"1.6.0": "flap",
}

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	// The fuzz child and measurement tests do not need binaries.
	if os.Getenv("OTA_SKIP_FIXTURE") != "" {
		return m.Run()
	}
	for _, a := range os.Args[1:] {
		if strings.HasPrefix(a, "-test.fuzz") {
			return m.Run()
		}
	}
	dir, err := os.MkdirTemp("", "ota-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	fixture.dir, fixture.platform = dir, buildinfo.Platform()
	fixture.bins = map[string]string{}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	sem := make(chan struct{}, 2)
	// The publisher CLI, built without -race: it makes the fixture
	// repositories (bsdiff and zstd are slow under the race detector).
	fixture.outpost = filepath.Join(dir, "bin", "outpost")
	builds := map[string]func() error{"outpost": func() error {
		cmd := exec.Command("go", "build", "-trimpath", "-o", fixture.outpost, "../../cmd/outpost")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build outpost: %v\n%s", err, b)
		}
		return nil
	}}
	for v, b := range agentVersions {
		out := filepath.Join(dir, "bin", "agent-"+v)
		fixture.bins[v] = out
		builds[v] = func() error { return buildAgent(out, v, b) }
	}
	for _, build := range builds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := build(); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		fmt.Fprintln(os.Stderr, errs)
		return 1
	}
	fixture.repo, fixture.keys = filepath.Join(dir, "repo"), filepath.Join(dir, "keys")
	for _, args := range [][]string{
		{"keygen", "--no-passphrase"},
		{"add", "--binary", fixture.bins["1.0.0"], "--version", "1.0.0", "--platform", fixture.platform},
		{"add", "--binary", fixture.bins["1.1.0"], "--version", "1.1.0", "--platform", fixture.platform},
	} {
		if err := publish(fixture.repo, fixture.keys, args...); err != nil {
			fmt.Fprintln(os.Stderr, "fixture repo:", err)
			return 1
		}
	}
	return m.Run()
}

// publish runs `outpost release SUB --repo R --keys K ARGS...`.
func publish(repo, keys string, args ...string) error {
	full := append([]string{"release", args[0], "--repo", repo, "--keys", keys}, args[1:]...)
	if b, err := exec.Command(fixture.outpost, full...).CombinedOutput(); err != nil {
		return fmt.Errorf("outpost %s: %v\n%s", strings.Join(full, " "), err, b)
	}
	return nil
}

func buildAgent(out, version, behavior string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-o", out,
		"-ldflags", "-s -w -X github.com/outpost-edge/outpost/internal/buildinfo.Version="+version+" -X main.behavior="+behavior,
		"./testdata/agent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build agent %s: %v\n%s", version, err, b)
	}
	return nil
}

// copyTree hard-links (or copies) src into dst.
func copyTree(t testing.TB, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		// Big target files are shared (the publisher and the tests only
		// ever replace them by rename); metadata is copied because tests
		// rewrite it in place.
		if info, err := d.Info(); err == nil && info.Size() > 64<<10 {
			if err := os.Link(p, target); err == nil {
				return nil
			}
		}
		return copyFileT(p, target)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func copyFileT(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	st, _ := os.Stat(src)
	return os.WriteFile(dst, b, st.Mode().Perm())
}

// testRepo is a private copy of the golden repository.
type testRepo struct {
	*tuf.Repo
	root string // pinned root.json path (v1)
}

func newTestRepo(t testing.TB) *testRepo {
	t.Helper()
	d := t.TempDir()
	copyTree(t, fixture.repo, filepath.Join(d, "repo"))
	copyTree(t, fixture.keys, filepath.Join(d, "keys"))
	r, err := release.Open(filepath.Join(d, "repo"), filepath.Join(d, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	return &testRepo{Repo: r, root: filepath.Join(d, "repo", "metadata", "1.root.json")}
}

// addVersion publishes a fixture binary (with deltas from that many
// previous versions) with `outpost release add` and reloads the repository.
func (r *testRepo) addVersion(t testing.TB, version string, deltas int) {
	t.Helper()
	if err := publish(r.Dir, r.KeyDir, "add", "--binary", fixture.bins[version], "--version", version,
		"--platform", fixture.platform, "--deltas", strconv.Itoa(deltas)); err != nil {
		t.Fatal(err)
	}
	nr, err := release.Open(r.Dir, r.KeyDir)
	if err != nil {
		t.Fatal(err)
	}
	r.Repo = nr
}

// server serves a repository over loopback HTTP, counts what it sends and
// lets a test intercept requests to inject faults.
type server struct {
	*httptest.Server
	dir       string
	requests  atomic.Int64
	bytes     atomic.Int64 // bytes written (bodies + headers)
	targetOut atomic.Int64 // body bytes of targets/ responses
	mu        sync.Mutex
	intercept func(w http.ResponseWriter, r *http.Request) bool
	log       []string
}

type countingWriter struct {
	http.ResponseWriter
	s      *server
	target bool
}

func (c *countingWriter) WriteHeader(code int) {
	n := 0
	for k, vs := range c.Header() {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	c.s.bytes.Add(int64(n + 20))
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	c.s.bytes.Add(int64(n))
	if c.target {
		c.s.targetOut.Add(int64(n))
	}
	return n, err
}

func (c *countingWriter) Flush() {
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func newServer(t testing.TB, dir string) *server {
	s := &server{dir: dir}
	h := release.Handler(dir)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		s.mu.Lock()
		s.log = append(s.log, r.Method+" "+r.URL.Path+" "+r.Header.Get("Range"))
		ic := s.intercept
		s.mu.Unlock()
		cw := &countingWriter{ResponseWriter: w, s: s, target: strings.HasPrefix(r.URL.Path, "/targets/")}
		if ic != nil && ic(cw, r) {
			return
		}
		h.ServeHTTP(cw, r)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *server) setIntercept(f func(w http.ResponseWriter, r *http.Request) bool) {
	s.mu.Lock()
	s.intercept = f
	s.mu.Unlock()
}

// gateway is an install of the agent: a binary, a staging dir, a config.
type gateway struct {
	dir, bin, cfgPath, addrFile string
	cfg                         ota.Config
	prestart                    bool // run <bin>.prev -prestart before each start
	// For other binaries than the test agent (real outpost): arguments,
	// pre-start arguments and the API address (host:port).
	args, prestartArgs []string
	api                string
	token              string   // bearer token of the update API
	listen             string   // test agent's API address (default: a new port each start)
	env                []string // added to the agent's environment
}

func newGateway(t testing.TB, version, url, root string) *gateway {
	t.Helper()
	d := t.TempDir()
	g := &gateway{dir: d, bin: filepath.Join(d, "bin", "outpost"), addrFile: filepath.Join(d, "addr")}
	os.MkdirAll(filepath.Dir(g.bin), 0o755)
	if err := copyFileT(fixture.bins[version], g.bin); err != nil {
		t.Fatal(err)
	}
	g.cfg = ota.Config{
		Enabled: true, URL: url, Root: root, Platform: fixture.platform,
		Interval:        config.Duration(200 * time.Millisecond),
		StagingDir:      filepath.Join(d, "ota"),
		Binary:          g.bin,
		StartDeadline:   config.Duration(2 * time.Second),
		StabilityWindow: config.Duration(400 * time.Millisecond),
		MaxAttempts:     2,
		Restart:         "exit",
		Timeouts: ota.Timeouts{
			Connect: config.Duration(2 * time.Second), Response: config.Duration(2 * time.Second),
			Metadata: config.Duration(5 * time.Second), SpeedWindow: config.Duration(2 * time.Second),
			MinSpeed: 10 << 10, Retries: 3,
		},
	}
	g.cfg.SetDefaults()
	return g
}

func (g *gateway) writeConfig(t testing.TB) {
	t.Helper()
	listen := ""
	if g.listen != "" {
		listen = "listen: " + g.listen + "\n"
	}
	y := listen + fmt.Sprintf(`addr_file: %s
ota:
  enabled: true
  url: %s
  root: %s
  platform: %s
  interval: %s
  staging_dir: %s
  binary: %s
  start_deadline: %s
  stability_window: %s
  max_attempts: %d
  restart: %s
  delta: %v
  timeouts:
    connect: 2s
    response: 2s
    metadata: 5s
    speed_window: %s
    min_speed: %d
    retries: %d
`, g.addrFile, g.cfg.URL, g.cfg.Root, g.cfg.Platform, g.cfg.Interval, g.cfg.StagingDir, g.bin,
		g.cfg.StartDeadline, g.cfg.StabilityWindow, g.cfg.MaxAttempts, g.cfg.Restart, *g.cfg.Delta,
		g.cfg.Timeouts.SpeedWindow, g.cfg.Timeouts.MinSpeed, g.cfg.Timeouts.Retries)
	g.cfgPath = filepath.Join(g.dir, "config.yaml")
	if err := os.WriteFile(g.cfgPath, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (g *gateway) state(t testing.TB) *ota.State {
	t.Helper()
	st, err := ota.LoadState(g.cfg.StateFile)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func (g *gateway) installedVersion(t testing.TB) string {
	t.Helper()
	sum := sha256File(t, g.bin)
	for v, p := range fixture.bins {
		if sha256File(t, p) == sum {
			return v
		}
	}
	return "unknown:" + sum[:12]
}

var shaCache sync.Map

func sha256File(t testing.TB, p string) string {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	key := fmt.Sprintf("%s:%d:%d", p, st.Size(), st.ModTime().UnixNano())
	cacheable := strings.HasPrefix(p, fixture.dir)
	if v, ok := shaCache.Load(key); ok && cacheable {
		return v.(string)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	h := hex.EncodeToString(s[:])
	if cacheable {
		shaCache.Store(key, h)
	}
	return h
}

// inproc runs an Updater in the test process against the gateway's binary
// (a copy of A); restarts are recorded, not performed.
type inproc struct {
	*ota.Updater
	restarts atomic.Int64
	metrics  *metrics.Set
}

func (g *gateway) inproc(t testing.TB, version string) *inproc {
	t.Helper()
	ip := &inproc{metrics: metrics.NewSet()}
	ip.Updater = ota.New(ota.Options{Version: version, Metrics: ip.metrics, Restart: func(ota.Config) { ip.restarts.Add(1) }})
	if err := module.Of[ota.Config](ip.Updater).Init(context.Background(), g.cfg); err != nil {
		t.Fatal(err)
	}
	return ip
}

// checkFor polls f until it returns nil or the timeout passes.
func checkFor(t testing.TB, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = f(); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("condition not met after %v: %v", timeout, err)
}

func sha256Bytes(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// metric returns a metric's value from the updater's set.
func (ip *inproc) metric(t testing.TB, name string) float64 {
	t.Helper()
	var b strings.Builder
	ip.metrics.WritePrometheus(&b)
	for _, l := range strings.Split(b.String(), "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("metric %s not found in:\n%s", name, b.String())
	return 0
}

// waitRestart waits for the one restart an install requests.
func (ip *inproc) waitRestart(t testing.TB) {
	t.Helper()
	checkFor(t, 5*time.Second, func() error {
		if n := ip.restarts.Load(); n != 1 {
			return fmt.Errorf("%d restarts requested, want 1", n)
		}
		return nil
	})
}
