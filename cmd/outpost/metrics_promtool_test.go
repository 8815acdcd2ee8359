package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// Issue 9: /metrics had no # HELP/# TYPE lines and counters without
// _total. `promtool check metrics` (Debian package prometheus, installed by
// scripts/deps.sh) must find no problem in a real agent's /metrics with
// every module on (broker, pipeline, rules, supervisor, uplink lanes, ota).
func TestMetricsPassPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool not installed (scripts/deps.sh installs the Debian package prometheus): %v", err)
	}
	dir := t.TempDir()
	httpAddr := freePort(t)
	recipes := filepath.Join(dir, "components")
	os.MkdirAll(filepath.Join(recipes, "napper"), 0o755)
	os.WriteFile(filepath.Join(recipes, "napper", "recipe.yaml"), []byte("name: napper\nversion: 1.0.0\nlifecycle:\n  run: 'exec sleep 1000'\n"), 0o644)
	rulesDir := filepath.Join(dir, "rules")
	os.MkdirAll(rulesDir, 0o755)
	os.WriteFile(filepath.Join(rulesDir, "hot.sql"), []byte("CREATE RULE hot AS SELECT temp FROM 'sensors/+/temp' WHERE temp > 50 DO REPUBLISH 'alerts/hot';\n"), 0o644)
	cfg := fmt.Sprintf(`data_dir: %[1]s/data
telemetry: {address: "%[2]s"}
broker:
  listeners: [{type: tcp, address: "%[3]s"}, {type: unix, path: "%[1]s/mqtt.sock"}]
  allow_anonymous: true
supervisor:
  recipes_dir: %[4]s
  cgroup: {mode: none}
rules:
  dir: %[5]s
pipeline:
  routes:
    - {from: ["sensors/#"], to: ["uplink:telemetry"]}
uplink:
  enabled: true
  broker: mqtt://127.0.0.1:1
  lanes:
    - {name: telemetry, priority: normal}
    - {name: alarms, priority: high}
`, dir, httpAddr, freePort(t), recipes, rulesDir)
	path := filepath.Join(dir, "outpost.yaml")
	os.WriteFile(path, []byte(cfg), 0o600)
	agent := exec.Command(binary, "run", "--config", path)
	var logs strings.Builder
	agent.Stdout, agent.Stderr = &logs, &logs
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		agent.Process.Signal(syscall.SIGTERM)
		agent.Wait()
		if t.Failed() {
			t.Logf("agent logs:\n%s", logs.String())
		}
	}()
	waitUp(t, httpAddr)
	resp, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	check := exec.Command(promtool, "check", "metrics")
	check.Stdin = strings.NewReader(string(body))
	out, err := check.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
	text := string(body)
	for _, want := range []string{
		"# TYPE outpost_build_info gauge",
		`outpost_build_info{version="`,
		"# TYPE outpost_broker_messages_received_total counter",
		"# HELP outpost_broker_clients_connected MQTT clients connected now.",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// Families without a description are valid but worth a look.
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, "no description registered") {
			t.Log(l)
		}
	}
}
