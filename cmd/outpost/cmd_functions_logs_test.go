//go:build functions

package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/outpost-edge/outpost/internal/function"
)

// logModule is a hand-written function module (internal/function's
// logGuest()): it logs "tick" at level INFO on every message.
const logModule = "0061736d0100000001220660017f017f60027f7f017f60027f7f0060047f7f7f7f017f60037f7f7f00600000025205076f7574706f737406726573756c740002076f7574706f7374046661696c0002076f7574706f73740973746174655f7075740003076f7574706f737404656d69740003076f7574706f7374036c6f6700040304030001010503010001073e04066d656d6f727902000d6f7574706f73745f616c6c6f630005126f7574706f73745f6f6e5f6d65737361676500060c6f7574706f73745f63616c6c00070a190305004180080b0c00410041004104100441000b040041000b0b0a010041000b047469636b"

// TestFunctionsLogsCommand: a real agent whose API needs a token runs a
// function that logs on every message. 300 QoS 1 publishes: `outpost
// functions logs` prints all 300 lines, the agent log got only the
// rate-limited share (plus a note), no token is refused, and -f prints a
// line logged after it started, then exits 0 on SIGINT.
func TestFunctionsLogsCommand(t *testing.T) {
	dir := t.TempDir()
	fdir := filepath.Join(dir, "functions", "logger")
	if err := os.MkdirAll(fdir, 0o755); err != nil {
		t.Fatal(err)
	}
	wasm, _ := hex.DecodeString(logModule)
	_ = os.WriteFile(filepath.Join(fdir, "logger.wasm"), wasm, 0o644)
	_ = os.WriteFile(filepath.Join(fdir, "function.yaml"), []byte("name: logger\nversion: 1\nmodule: logger.wasm\ntriggers: [{from: [sensors/#], to: [republish]}]\n"), 0o644)
	mqttAddr, httpAddr := freePort(t), freePort(t)
	const token = "fn-logs-token"
	cfg := fmt.Sprintf(`data_dir: %[1]s/data
telemetry: {address: "%[2]s", token: %[3]s}
broker:
  listeners: [{type: tcp, address: "%[4]s"}]
  allow_anonymous: true
  anonymous_acl: [{topic: "#", access: all}]
functions:
  enabled: true
  allow_unsigned: true
  dir: %[1]s/functions
  watch: 50ms
`, dir, httpAddr, token, mqttAddr)
	path := filepath.Join(dir, "outpost.yaml")
	_ = os.WriteFile(path, []byte(cfg), 0o600)
	agent := exec.Command(binary, "run", "--config", path)
	var agentLog syncBuilder
	agent.Stdout, agent.Stderr = &agentLog, &agentLog
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = agent.Process.Signal(syscall.SIGTERM)
		_ = agent.Wait()
		if t.Failed() {
			t.Logf("agent log:\n%s", agentLog.String())
		}
	}()
	waitReady(t, httpAddr) // the broker listens
	api := "http://" + httpAddr
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := dialQoS1(ctx, mqttAddr, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	const n = 300
	for i := range n {
		if _, err := c.Publish(ctx, &paho.Publish{Topic: "sensors/dev-1", QoS: 1, Payload: []byte(fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	// The functions sink is durable: every PUBACK came after the
	// function ran, so all 300 lines are in the ring now.
	out, errOut, code := outpost(t, "functions", "logs", "logger", "--api", api, "--token", token, "--config", path)
	if code != exitOK || strings.Count(out, " INFO  v1 dev-1 tick\n") != n {
		t.Fatalf("logs: exit %d, %d lines\n%s%s", code, strings.Count(out, "tick"), head(out), errOut)
	}
	inAgentLog := strings.Count(agentLog.String(), "tick")
	if max := function.LogBurst + int(elapsed.Seconds()*function.LogRate) + 1; inAgentLog > max || inAgentLog == 0 {
		t.Errorf("agent log has %d of %d lines in %v, want 1..%d (rate-limited)", inAgentLog, n, elapsed, max)
	}
	empty := filepath.Join(dir, "empty.yaml")
	_ = os.WriteFile(empty, nil, 0o644)
	if _, errOut, code := outpost(t, "functions", "logs", "logger", "--api", api, "--config", empty); code == exitOK || !strings.Contains(errOut, "unauthorized") {
		t.Errorf("no token: exit %d %s", code, errOut)
	}
	if _, errOut, code := outpost(t, "functions", "logs", "nope", "--api", api, "--token", token); code == exitOK || !strings.Contains(errOut, "unknown function") {
		t.Errorf("unknown function: exit %d %s", code, errOut)
	}

	follow := exec.Command(binary, "functions", "logs", "logger", "-f", "--json", "--after", fmt.Sprint(n), "--api", api, "--token", token)
	stdout, err := follow.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	follow.Stderr = os.Stderr
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	c2, err := dialQoS1(ctx, mqttAddr, "dev-2")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c2.Publish(ctx, &paho.Publish{Topic: "sensors/dev-2", QoS: 1, Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	select {
	case l := <-lines:
		var line function.LogLine
		if err := json.Unmarshal([]byte(l), &line); err != nil || line.Seq != n+1 || line.Device != "dev-2" || line.Msg != "tick" {
			t.Fatalf("-f printed %q (%v)", l, err)
		}
	case <-ctx.Done():
		t.Fatal("-f printed nothing after a new line")
	}
	_ = follow.Process.Signal(os.Interrupt)
	if err := follow.Wait(); err != nil {
		t.Errorf("-f after SIGINT: %v", err)
	}
}

func head(s string) string {
	if len(s) > 2000 {
		return s[:2000] + "..."
	}
	return s
}

// syncBuilder is a strings.Builder safe for the agent's two output pipes
// and the test reading it.
type syncBuilder struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuilder) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuilder) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The outpost binary the tests run must have the functions too.
func init() { testBuildTags = append(testBuildTags, "functions") }
