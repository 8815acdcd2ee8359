package agent

import (
	"context"
	"errors"
	"fmt"
	"golang.org/x/crypto/bcrypt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/outpost-edge/outpost/internal/module"
	"github.com/outpost-edge/outpost/internal/telemetry"
)

var aliceHash, bobHash = mustHash("alice-pw"), mustHash("bob-pw")

// mustHash makes a bcrypt hash of cost 4, not HashPassword's 10: under
// -race one cost-10 verification takes seconds, and with the broker's
// bounded verification slots (login.max_parallel_hashes, hash_wait) a few
// logins at once on a loaded machine waited past the tests' 3-5 s connect
// deadlines or were refused "server busy": the uplink and reload tests
// failed that way under load. The broker's own tests use cost 4 too.
func mustHash(pw string) string {
	h, err := bcrypt.GenerateFromPassword([]byte(pw), 4)
	if err != nil {
		panic(err)
	}
	return string(h)
}

func agentConfig(dir string, users string) string {
	return fmt.Sprintf(`node_id: test
data_dir: %s/data
log: {level: info}
telemetry: {address: "127.0.0.1:0"}
broker:
  listeners: [{type: tcp, address: "127.0.0.1:0"}]
  users:
%s
pipeline:
  sinks:
    - {name: archive, type: file, file: {path: %s/archive.jsonl, flush_interval: 10ms}}
  routes:
    - {from: ["data/#"], to: [archive]}
`, dir, users, dir)
}

const aliceUser = `    - {username: alice, password_hash: "%s", acl: [{topic: "data/#", access: all}]}`
const bobUser = `    - {username: bob, password_hash: "%s", acl: [{topic: "data/#", access: all}]}`

func startAgent(t *testing.T, path string) (*Agent, *syncBuffer) {
	t.Helper()
	cfg, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	logbuf := &syncBuffer{}
	a, err := New(cfg, path, telemetry.NewLogs(logbuf, cfg.Log))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	select {
	case <-a.Ready:
	case err := <-done:
		t.Fatalf("agent did not start: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return a, logbuf
}

// syncBuffer collects log output written from the agent's goroutines.
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

func connect(addr, user, pw string) error {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	c := paho.NewClient(paho.ClientConfig{ClientID: user + "-client", Conn: conn})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err = c.Connect(ctx, &paho.Connect{ClientID: user + "-client", KeepAlive: 30, CleanStart: true,
		Username: user, UsernameFlag: true, Password: []byte(pw), PasswordFlag: true})
	if err == nil {
		c.Disconnect(&paho.Disconnect{})
	}
	conn.Close()
	return err
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func metric(t *testing.T, a *Agent, name string) string {
	resp, err := http.Get("http://" + a.Telemetry.Addr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, name+" ") {
			return strings.TrimPrefix(l, name+" ")
		}
	}
	return ""
}

// TestHotReload: a valid change is applied to the broker alone (new user can
// connect, connections survive); an invalid change is rejected, counted and
// logged, and the running config stays; an editor's rename-replace is seen.
func TestHotReload(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "outpost.yaml")
	os.WriteFile(path, []byte(agentConfig(dir, fmt.Sprintf(aliceUser, aliceHash))), 0o600)
	a, logs := startAgent(t, path)
	addr := a.Broker.Addr("tcp")
	if err := connect(addr, "alice", "alice-pw"); err != nil {
		t.Fatal(err)
	}
	if err := connect(addr, "bob", "bob-pw"); err == nil {
		t.Fatal("bob admitted before he was configured")
	}

	// Valid change, written by rename-replace like vim or a deploy tool.
	tmp := path + ".tmp"
	os.WriteFile(tmp, []byte(agentConfig(dir, fmt.Sprintf(aliceUser, aliceHash)+"\n"+fmt.Sprintf(bobUser, bobHash))), 0o600)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "bob admitted after reload", func() bool { return connect(addr, "bob", "bob-pw") == nil })
	if a.Broker.Addr("tcp") != addr {
		t.Fatal("broker restarted for a users-only change")
	}

	// Invalid change: rejected, old config (with bob) stays.
	os.WriteFile(path, []byte(agentConfig(dir, fmt.Sprintf(aliceUser, aliceHash))+"broker_typo: 1\n"), 0o600)
	waitUntil(t, "rejected reload counted", func() bool { return metric(t, a, `outpost_config_reloads_total{result="rejected"}`) == "1" })
	if err := connect(addr, "bob", "bob-pw"); err != nil {
		t.Fatalf("running config lost after a rejected reload: %v", err)
	}
	if !strings.Contains(logs.String(), `unknown key \"broker_typo\"`) || !strings.Contains(logs.String(), "outpost.yaml:") {
		t.Fatalf("rejection not logged with location:\n%s", logs.String())
	}
	if metric(t, a, `outpost_config_reloads_total{result="applied"}`) != "1" {
		t.Fatal("applied reloads not counted")
	}
}

func TestReadyzAndHealth(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "outpost.yaml")
	os.WriteFile(path, []byte(agentConfig(dir, fmt.Sprintf(aliceUser, aliceHash))), 0o600)
	a, _ := startAgent(t, path)
	resp, err := http.Get("http://" + a.Telemetry.Addr() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"broker"`) || !strings.Contains(string(b), `"pipeline"`) {
		t.Fatalf("readyz %d: %s", resp.StatusCode, b)
	}
	for _, path := range []string{"/healthz", "/metrics", "/debug/pprof/", "/api/v1/version", "/api/v1/config"} {
		resp, err := http.Get("http://" + a.Telemetry.Addr() + path)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: %v %v", path, err, resp.Status)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if path == "/api/v1/config" && strings.Contains(string(body), "$2a$") {
			t.Fatal("password hash exposed by /api/v1/config")
		}
		if path == "/metrics" {
			for _, want := range []string{"outpost_broker_clients_connected", "outpost_pipeline_queue_depth", "outpost_gc_pause_seconds", "go_memstats"} {
				if !strings.Contains(string(body), want) {
					t.Errorf("/metrics lacks %s", want)
				}
			}
		}
	}
}

// TestStartFailureNamesModule: a port in use fails the start with the
// broker's error naming the listener, and nothing stays running.
func TestStartFailureNamesModule(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	dir := t.TempDir()
	path := filepath.Join(dir, "outpost.yaml")
	cfgText := strings.Replace(agentConfig(dir, fmt.Sprintf(aliceUser, aliceHash)), `address: "127.0.0.1:0"}]`, `address: "`+l.Addr().String()+`"}]`, 1)
	os.WriteFile(path, []byte(cfgText), 0o600)
	cfg, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(cfg, path, telemetry.NewLogs(io.Discard, cfg.Log))
	if err != nil {
		t.Fatal(err)
	}
	err = a.Run(context.Background())
	var se *module.StartError
	if !errors.As(err, &se) || se.Module != "broker" || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("start error: %v", err)
	}
	// telemetry (started before the broker) was stopped again
	if st := a.Telemetry.Health(); st.State != module.StateStopped {
		t.Fatalf("telemetry still %v after failed start", st.State)
	}
}
