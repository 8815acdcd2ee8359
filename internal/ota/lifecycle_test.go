package ota_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/ota"
)

// supervisor plays systemd's Restart=always for a gateway: it starts the
// installed binary, and starts it again whenever it exits.
type supervisor struct {
	t  testing.TB
	g  *gateway
	mu sync.Mutex
	// failpoint is set in the environment of every start until one start
	// dies by SIGKILL (the failpoint fired), then dropped.
	failpoint string
	starts    []string // installed version at each start
	exits     []string
	pids      []int
	cur       *exec.Cmd
	logs      bytes.Buffer
	stopped   bool
	done      chan struct{}
	// once: no service manager; start the agent once and never again.
	once bool
}

func (g *gateway) supervise(t testing.TB, failpoint string) *supervisor {
	t.Helper()
	if g.args == nil {
		g.writeConfig(t)
	}
	return g.start(t, failpoint, false)
}

// runOnce starts the agent once, as an init script without a service
// manager would: nothing restarts it.
func (g *gateway) runOnce(t testing.TB) *supervisor {
	t.Helper()
	if g.args == nil {
		g.writeConfig(t)
	}
	return g.start(t, "", true)
}

func (g *gateway) start(t testing.TB, failpoint string, once bool) *supervisor {
	s := &supervisor{t: t, g: g, failpoint: failpoint, once: once, done: make(chan struct{})}
	go s.loop()
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			t.Logf("supervisor: starts %v exits %v\nagent logs:\n%s", s.starts, s.exits, s.logText())
		}
	})
	return s
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (s *supervisor) logText() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.logs.String()
}

func (s *supervisor) loop() {
	defer close(s.done)
	for i := 0; i < 40; i++ {
		s.mu.Lock()
		if s.stopped {
			s.mu.Unlock()
			return
		}
		if _, err := os.Stat(s.g.bin + ".prev"); err == nil && s.g.prestart {
			// systemd: ExecStartPre=-/path/outpost.prev update prestart
			preArgs := []string{"-config", s.g.cfgPath, "-prestart"}
			if s.g.prestartArgs != nil {
				preArgs = s.g.prestartArgs
			}
			pre := exec.Command(s.g.bin+".prev", preArgs...)
			w := lockedWriter{&s.mu, &s.logs}
			pre.Stdout, pre.Stderr = w, w
			s.mu.Unlock()
			pre.Run()
			s.mu.Lock()
		}
		v := s.g.installedVersion(s.t)
		args := []string{"-config", s.g.cfgPath}
		if s.g.args != nil {
			args = s.g.args
		}
		cmd := exec.Command(s.g.bin, args...)
		cmd.Env = append(os.Environ(), s.g.env...)
		if s.failpoint != "" {
			cmd.Env = append(cmd.Env, "OUTPOST_OTA_FAILPOINT="+s.failpoint)
		}
		w := lockedWriter{&s.mu, &s.logs}
		cmd.Stdout, cmd.Stderr = w, w
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		os.Remove(s.g.addrFile)
		err := cmd.Start()
		s.starts = append(s.starts, v)
		s.cur = cmd
		if err == nil {
			s.pids = append(s.pids, cmd.Process.Pid)
		}
		s.mu.Unlock()
		if err != nil {
			s.t.Errorf("start %s: %v", s.g.bin, err)
			return
		}
		err = cmd.Wait()
		s.mu.Lock()
		exit := "0"
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				exit = ws.Signal().String()
				if ws.Signal() == syscall.SIGKILL {
					s.failpoint = ""
				}
			} else {
				exit = fmt.Sprint(ee.ExitCode())
			}
		}
		s.exits = append(s.exits, exit)
		s.cur = nil
		once := s.once
		s.mu.Unlock()
		if once {
			return
		}
		time.Sleep(50 * time.Millisecond) // RestartSec
	}
	s.t.Errorf("supervisor: too many restarts: %v", s.exits)
}

func (s *supervisor) stop() {
	s.mu.Lock()
	s.stopped = true
	if s.cur != nil {
		syscall.Kill(-s.cur.Process.Pid, syscall.SIGTERM)
	}
	s.mu.Unlock()
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		s.kill9()
		<-s.done
	}
}

// kill9 is the power cut: SIGKILL to the running agent.
func (s *supervisor) kill9() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur != nil {
		syscall.Kill(-s.cur.Process.Pid, syscall.SIGKILL)
	}
}

// status asks the running agent over its API.
func (s *supervisor) status() (*ota.Status, error) {
	addr := []byte(s.g.api)
	if s.g.api == "" {
		var err error
		if addr, err = os.ReadFile(s.g.addrFile); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+string(addr)+"/api/v1/update/status", nil)
	if s.g.token != "" {
		req.Header.Set("Authorization", "Bearer "+s.g.token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status: HTTP %s", resp.Status)
	}
	var st ota.Status
	return &st, json.NewDecoder(resp.Body).Decode(&st)
}

// waitCommitted waits until the agent runs version committed and idle.
func (s *supervisor) waitCommitted(t testing.TB, version string, timeout time.Duration) *ota.Status {
	t.Helper()
	var last *ota.Status
	checkFor(t, timeout, func() error {
		st, err := s.status()
		if err != nil {
			return err
		}
		last = st
		if st.Running != version || st.Phase != ota.PhaseIdle || st.Last == nil || st.Last.Version != version || st.Last.Result != "committed" {
			return fmt.Errorf("running %s phase %s last %+v", st.Running, st.Phase, st.Last)
		}
		return nil
	})
	return last
}

// assertOnlyKnownVersions checks the agent always ran A or the target.
func (s *supervisor) assertOnlyKnownVersions(t testing.TB, allowed ...string) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, v := range s.starts {
		if !slices.Contains(allowed, v) {
			t.Fatalf("agent started as %q; allowed %v (starts %v)", v, allowed, s.starts)
		}
	}
}

// Each bad version is rolled back automatically and marked bad; the
// updater then installs the best good version (B) and commits it.
func TestHealthGateRollback(t *testing.T) {
	for _, tc := range []struct{ version, what string }{
		{"1.2.0", "exits at start"},
		{"1.3.0", "crash-loops"},
		{"1.4.0", "never becomes ready"},
		{"1.6.0", "turns unready in the stability window"},
	} {
		t.Run(tc.version+"-"+strings.ReplaceAll(tc.what, " ", "-"), func(t *testing.T) {
			r := newTestRepo(t)
			r.addVersion(t, tc.version, 0)
			srv := newServer(t, r.Dir)
			g := newGateway(t, "1.0.0", srv.URL, r.root)
			s := g.supervise(t, "")
			st := s.waitCommitted(t, "1.1.0", 60*time.Second)
			if !slices.Contains(st.Bad, tc.version) {
				t.Fatalf("bad versions %v, want %s", st.Bad, tc.version)
			}
			s.assertOnlyKnownVersions(t, "1.0.0", tc.version, "1.1.0")
			s.mu.Lock()
			t.Logf("%s (%s): starts %v exits %v", tc.version, tc.what, s.starts, s.exits)
			s.mu.Unlock()
			// The rollback outcome was recorded before B was installed.
			if !strings.Contains(s.logText(), "update rolled back") {
				t.Fatal("no rollback logged")
			}
		})
	}
}

// A version that dies before main (so before Boot can count the start) is
// still rolled back: the pre-start hook, run from the previous binary by the
// service manager, counts each start.
func TestHealthGateRollbackInitPanic(t *testing.T) {
	r := newTestRepo(t)
	r.addVersion(t, "1.5.0", 0)
	srv := newServer(t, r.Dir)
	g := newGateway(t, "1.0.0", srv.URL, r.root)
	g.prestart = true
	s := g.supervise(t, "")
	st := s.waitCommitted(t, "1.1.0", 60*time.Second)
	if !slices.Contains(st.Bad, "1.5.0") {
		t.Fatalf("bad versions %v, want 1.5.0", st.Bad)
	}
	s.mu.Lock()
	t.Logf("starts %v exits %v", s.starts, s.exits)
	s.mu.Unlock()
}

// A → B end to end: delta download, re-exec in place (same pid), health
// gate, commit.
func TestEndToEndExec(t *testing.T) {
	r := newTestRepo(t)
	srv := newServer(t, r.Dir)
	g := newGateway(t, "1.0.0", srv.URL, r.root)
	g.cfg.Restart = "exec"
	s := g.supervise(t, "")
	st := s.waitCommitted(t, "1.1.0", 30*time.Second)
	s.mu.Lock()
	starts, pids := len(s.starts), s.pids
	s.mu.Unlock()
	if starts != 1 {
		t.Fatalf("exec mode: supervisor saw %d starts (pids %v), want 1", starts, pids)
	}
	if v := g.installedVersion(t); v != "1.1.0" {
		t.Fatalf("installed %s", v)
	}
	prev := sha256File(t, g.bin+".prev")
	if prev != sha256File(t, fixture.bins["1.0.0"]) {
		t.Fatal("previous binary not kept")
	}
	full := r.Targets.Targets[ota.FullTargetName(fixture.platform, "1.1.0")].Length
	t.Logf("A→B: downloaded %d target bytes (full target %d); last %+v", srv.targetOut.Load(), full, st.Last)
	if srv.targetOut.Load() >= full/10 {
		t.Fatalf("downloaded %d bytes, expected a small delta", srv.targetOut.Load())
	}
}

// kill -9 at each step of download, staging, install, restart, trial and
// rollback: the agent always runs A or B, and ends committed on B.
func TestCrashAtEachStep(t *testing.T) {
	steps := []string{"after-download", "staging", "after-stage", "installing", "after-prev",
		"after-rename", "after-install", "before-commit"}
	for _, fp := range steps {
		t.Run(fp, func(t *testing.T) {
			r := newTestRepo(t)
			srv := newServer(t, r.Dir)
			g := newGateway(t, "1.0.0", srv.URL, r.root)
			s := g.supervise(t, fp)
			s.waitCommitted(t, "1.1.0", 30*time.Second)
			s.assertOnlyKnownVersions(t, "1.0.0", "1.1.0")
			s.mu.Lock()
			exits := slices.Clone(s.exits)
			s.mu.Unlock()
			if !slices.Contains(exits, "killed") {
				t.Fatalf("failpoint %s never fired: exits %v", fp, exits)
			}
		})
	}
	for _, fp := range []string{"rolling-back", "after-restore"} {
		t.Run(fp, func(t *testing.T) {
			r := newTestRepo(t)
			r.addVersion(t, "1.2.0", 0) // exits at start: rolled back
			srv := newServer(t, r.Dir)
			g := newGateway(t, "1.0.0", srv.URL, r.root)
			s := g.supervise(t, fp)
			st := s.waitCommitted(t, "1.1.0", 60*time.Second)
			if !slices.Contains(st.Bad, "1.2.0") {
				t.Fatalf("bad %v", st.Bad)
			}
			s.assertOnlyKnownVersions(t, "1.0.0", "1.2.0", "1.1.0")
			s.mu.Lock()
			exits := slices.Clone(s.exits)
			s.mu.Unlock()
			if !slices.Contains(exits, "killed") {
				t.Fatalf("failpoint %s never fired: exits %v", fp, exits)
			}
		})
	}
}

// The server drops the connection at random offsets: the download resumes
// with Range and completes having moved at most 1.1× the target.
func TestDownloadResumesAfterDrops(t *testing.T) {
	r := newTestRepo(t)
	srv := newServer(t, r.Dir)
	g := newGateway(t, "1.0.0", srv.URL, r.root)
	noDelta := false
	g.cfg.Delta = &noDelta
	g.cfg.Timeouts.Retries = 10
	ip := g.inproc(t, "1.0.0")
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 5))
	var mu sync.Mutex
	drops := 0
	srv.setIntercept(func(w http.ResponseWriter, req *http.Request) bool {
		if !strings.HasPrefix(req.URL.Path, "/targets/") {
			return false
		}
		mu.Lock()
		drop := drops < 5
		cut := int64(1 + rng.IntN(600<<10))
		drops++
		mu.Unlock()
		if !drop {
			return false
		}
		// Serve normally, but abort the connection after cut bytes.
		f, err := os.Open(srv.dir + req.URL.Path)
		if err != nil {
			http.NotFound(w, req)
			return true
		}
		defer f.Close()
		st, _ := f.Stat()
		http.ServeContent(&cutWriter{ResponseWriter: w, left: cut}, req, "", st.ModTime(), f)
		panic(http.ErrAbortHandler)
	})
	if err := apply(t, ip); err != nil {
		t.Fatal(err)
	}
	full := r.Targets.Targets[ota.FullTargetName(fixture.platform, "1.1.0")].Length
	got := srv.targetOut.Load()
	t.Logf("5 drops: %d bytes sent for a %d-byte target (%.3f×); requests: %v", got, full, float64(got)/float64(full), srv.log)
	if float64(got) > 1.1*float64(full) {
		t.Fatalf("moved %d bytes for %d", got, full)
	}
	ip.waitRestart(t)
	if v := g.installedVersion(t); v != "1.1.0" {
		t.Fatalf("installed %s", v)
	}
	if n := ip.metric(t, "outpost_ota_download_bytes_total"); n < float64(full) || n > float64(got) {
		t.Fatalf("outpost_ota_download_bytes_total = %v; target %d, sent %d", n, full, got)
	}
	if n := ip.metric(t, "outpost_ota_applies_total"); n != 1 {
		t.Fatalf("outpost_ota_applies_total = %v", n)
	}
}

type cutWriter struct {
	http.ResponseWriter
	left int64
}

func (c *cutWriter) Write(b []byte) (int, error) {
	if c.left <= 0 {
		return 0, errors.New("cut")
	}
	if int64(len(b)) > c.left {
		b = b[:c.left]
	}
	n, err := c.ResponseWriter.Write(b)
	c.left -= int64(n)
	if c.left <= 0 {
		c.ResponseWriter.(http.Flusher).Flush()
	}
	return n, err
}

// The agent is kill -9'd at random moments while downloading: each new
// process resumes with Range; the total moved stays within 1.1× the target.
func TestDownloadResumesAfterKill9(t *testing.T) {
	r := newTestRepo(t)
	srv := newServer(t, r.Dir)
	// Throttle targets to about 1 MiB/s so kills land mid-download.
	srv.setIntercept(func(w http.ResponseWriter, req *http.Request) bool {
		if !strings.HasPrefix(req.URL.Path, "/targets/") {
			return false
		}
		f, err := os.Open(srv.dir + req.URL.Path)
		if err != nil {
			http.NotFound(w, req)
			return true
		}
		defer f.Close()
		st, _ := f.Stat()
		http.ServeContent(&slowWriter{ResponseWriter: w, ctx: req.Context()}, req, "", st.ModTime(), f)
		return true
	})
	g := newGateway(t, "1.0.0", srv.URL, r.root)
	noDelta := false
	g.cfg.Delta = &noDelta
	s := g.supervise(t, "")
	full := r.Targets.Targets[ota.FullTargetName(fixture.platform, "1.1.0")].Length
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 9))
	kills := 0
	for kills < 3 {
		// Wait until a download is under way, then kill at a random point.
		checkFor(t, 20*time.Second, func() error {
			if srv.targetOut.Load() > 0 {
				return nil
			}
			return errors.New("no download yet")
		})
		before := srv.targetOut.Load()
		time.Sleep(time.Duration(100+rng.IntN(300)) * time.Millisecond)
		if srv.targetOut.Load() >= full {
			break
		}
		s.kill9()
		kills++
		t.Logf("kill -9 #%d at about %d of %d target bytes (+%d since)", kills, srv.targetOut.Load(), full, srv.targetOut.Load()-before)
		time.Sleep(200 * time.Millisecond)
	}
	s.waitCommitted(t, "1.1.0", 60*time.Second)
	got := srv.targetOut.Load()
	t.Logf("%d kills: %d bytes sent for a %d-byte target (%.3f×)", kills, got, full, float64(got)/float64(full))
	if float64(got) > 1.1*float64(full) {
		t.Fatalf("moved %d bytes for %d", got, full)
	}
	s.assertOnlyKnownVersions(t, "1.0.0", "1.1.0")
}

type slowWriter struct {
	http.ResponseWriter
	ctx context.Context
}

func (s *slowWriter) Write(b []byte) (int, error) {
	written := 0
	for len(b) > 0 {
		n := min(len(b), 16<<10)
		m, err := s.ResponseWriter.Write(b[:n])
		written += m
		if err != nil {
			return written, err
		}
		s.ResponseWriter.(http.Flusher).Flush()
		b = b[n:]
		select {
		case <-s.ctx.Done():
			return written, s.ctx.Err()
		case <-time.After(15 * time.Millisecond):
		}
	}
	return written, nil
}
