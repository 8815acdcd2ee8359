package main

import (
	"context"
	"github.com/outpost-edge/outpost/internal/module"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/supervisor"
)

// captureStdout runs f with os.Stdout redirected and returns what it wrote.
func captureStdout(t *testing.T, f func() int) (string, int) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stdout
	os.Stdout = w
	done := make(chan string)
	go func() { b, _ := io.ReadAll(r); done <- string(b) }()
	code := f()
	os.Stdout = old
	w.Close()
	return <-done, code
}

func TestComponentsCommand(t *testing.T) {
	dir := t.TempDir()
	recipes := filepath.Join(dir, "recipes")
	os.MkdirAll(recipes, 0o755)
	os.WriteFile(filepath.Join(recipes, "napper.yaml"), []byte("name: napper\nversion: 1.0.0\nlifecycle:\n  run: 'echo hello from napper; exec sleep 1000'\n"), 0o644)
	s := supervisor.New(supervisor.Options{})
	cfg := supervisor.Config{RecipesDir: recipes, StateDir: filepath.Join(dir, "state"), LogDir: filepath.Join(dir, "logs"), Cgroup: supervisor.CgroupConfig{Mode: "none"}}
	if err := module.Of[supervisor.Config](s).Init(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer s.Stop(context.Background())
	mux := http.NewServeMux()
	s.RegisterHTTP(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, _ := s.Component("napper")
		if st.State == supervisor.StateRunning {
			logs, _ := s.Logs("napper", 10)
			if len(logs) > 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("napper not running: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	run := func(args ...string) (string, int) {
		return captureStdout(t, func() int {
			return dispatch(append([]string{"components", "--api", srv.URL}, args...), io.Discard, io.Discard)
		})
	}
	if out, code := run("list"); code != exitOK || !strings.Contains(out, "napper") || !strings.Contains(out, "running") {
		t.Fatalf("list: %d %q", code, out)
	}
	if out, code := run("status", "napper"); code != exitOK || !strings.Contains(out, "state:     running") {
		t.Fatalf("status: %d %q", code, out)
	}
	if out, code := run("logs", "napper"); code != exitOK || !strings.Contains(out, "stdout hello from napper") {
		t.Fatalf("logs: %d %q", code, out)
	}
	if _, code := run("status", "ghost"); code != exitUsage {
		t.Fatalf("status ghost: exit %d", code)
	}
	old, _ := s.Component("napper")
	if out, code := run("restart", "napper"); code != exitOK || !strings.Contains(out, "restarting napper") {
		t.Fatalf("restart: %d %q", code, out)
	}
	for {
		st, _ := s.Component("napper")
		if st.State == supervisor.StateRunning && st.PID != old.PID {
			break
		}
		if time.Now().After(deadline.Add(10 * time.Second)) {
			t.Fatalf("not restarted: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, code := run("check", recipes); code != exitOK {
		t.Fatalf("check valid dir: exit %d", code)
	}
	os.WriteFile(filepath.Join(recipes, "bad.yaml"), []byte("name: bad\nversion: x\n"), 0o644)
	if _, code := run("check", recipes); code != exitUsage {
		t.Fatalf("check invalid dir: exit %d", code)
	}
	if _, code := run("frobnicate"); code != exitUsage {
		t.Fatalf("unknown subcommand: exit %d", code)
	}
}
