package main

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Issue 9: every command that talks to the agent's API (components,
// update, diag, rules, queue) takes the same --api, $OUTPOST_API and token
// (--token, $OUTPOST_TOKEN, or telemetry.token read from --config), against
// a real agent whose API requires a token. `components` used to send no
// token and get 401; `diag` exited 0 with 6 of 8 parts missing.
func TestAPICommandsShareClientAndToken(t *testing.T) {
	dir := t.TempDir()
	httpAddr := freePort(t)
	sock := filepath.Join(dir, "run", "api.sock")
	recipes := filepath.Join(dir, "components")
	os.MkdirAll(filepath.Join(recipes, "napper"), 0o755)
	os.WriteFile(filepath.Join(recipes, "napper", "recipe.yaml"), []byte("name: napper\nversion: 1.0.0\nlifecycle:\n  run: 'exec sleep 1000'\n"), 0o644)
	rulesDir := filepath.Join(dir, "rules")
	os.MkdirAll(rulesDir, 0o755)
	os.WriteFile(filepath.Join(rulesDir, "hot.sql"), []byte("CREATE RULE hot AS SELECT temp FROM 'sensors/+/temp' WHERE temp > 50 DO REPUBLISH 'alerts/hot';\n"), 0o644)
	const token = "cli-token-42"
	cfg := fmt.Sprintf(`data_dir: %[1]s/data
telemetry: {address: "%[2]s", token: %[3]s, socket: %[4]s}
broker:
  listeners: [{type: tcp, address: "%[5]s"}, {type: unix, path: "%[1]s/mqtt.sock"}]
  allow_anonymous: true
supervisor:
  recipes_dir: %[6]s
  cgroup: {mode: none}
rules:
  dir: %[7]s
pipeline:
  routes:
    - {from: ["sensors/#"], to: ["uplink:telemetry"]}
uplink:
  enabled: true
  broker: mqtt://127.0.0.1:1
  lanes:
    - {name: telemetry, priority: normal}
`, dir, httpAddr, token, sock, freePort(t), recipes, rulesDir)
	path := filepath.Join(dir, "outpost.yaml")
	os.WriteFile(path, []byte(cfg), 0o600)
	if out, errOut, code := outpost(t, "config", "check", path); code != 0 {
		t.Fatalf("config check: %d\n%s%s", code, out, errOut)
	}
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

	api := "http://" + httpAddr
	empty := filepath.Join(dir, "empty.yaml")
	os.WriteFile(empty, nil, 0o644)
	// Each command, three ways to give the token, and without one.
	cmds := []struct {
		args []string
		want string
	}{
		{[]string{"components", "list"}, "napper"},
		{[]string{"update", "status"}, "running:"},
		{[]string{"rules", "list"}, "hot"},
		{[]string{"queue", "status"}, "LIVE figures"},
		{[]string{"diag", "-o", filepath.Join(dir, "b.tar.gz"), "--cpu", "1s", "--trace", "1s"}, "wrote"},
	}
	// The HTTP endpoint comes up before the supervisor has loaded the
	// recipes: wait for the component.
	deadline := time.Now().Add(15 * time.Second)
	for {
		out, _, _ := outpost(t, "components", "list", "--api", api, "--token", token)
		if strings.Contains(out, "napper") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("component never listed:\n%s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	env := os.Environ()
	for _, c := range cmds {
		for _, how := range []string{"flag", "env", "config", "socket", "none"} {
			args := append([]string{}, c.args...)
			cmd := exec.Command(binary)
			cmd.Env = append(env, "OUTPOST_TOKEN=", "OUTPOST_TELEMETRY__TOKEN=", "OUTPOST_API=")
			switch how {
			case "flag":
				args = append(args, "--api", api, "--token", token)
			case "env":
				cmd.Env = append(cmd.Env, "OUTPOST_API="+api, "OUTPOST_TOKEN="+token)
			case "config":
				// Address (socket first) and token from the agent's config:
				// force TCP with --api to use the token.
				args = append(args, "--config", path, "--api", api)
			case "socket":
				args = append(args, "--config", path) // finds telemetry.socket
			case "none":
				args = append(args, "--api", api, "--config", empty)
			}
			cmd.Args = append([]string{binary}, args...)
			out, err := cmd.CombinedOutput()
			text := string(out)
			if how == "none" {
				if c.args[0] == "diag" && (err == nil || !strings.Contains(text, "INCOMPLETE")) {
					// The /api and /debug parts fail: a partial bundle.
					t.Errorf("%v without a token: err %v\n%s", c.args, err, text)
				}
				if err == nil || !strings.Contains(text, "unauthorized") {
					t.Errorf("%v without a token: err %v\n%s", c.args, err, text)
				}
				continue
			}
			if err != nil || !strings.Contains(text, c.want) {
				t.Errorf("%v (token by %s): err %v\n%s", c.args, how, err, text)
			}
		}
	}
	// --config naming a file that does not exist is an error, not ignored.
	if out, _, code := outpost(t, "components", "list", "--config", filepath.Join(dir, "nope.yaml")); code != exitUsage {
		t.Errorf("missing --config: exit %d %s", code, out)
	}
}

// waitUp waits until the agent's HTTP endpoint answers at all (readiness
// depends on the uplink, which has no cloud here).
func waitUp(t *testing.T, httpAddr string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get("http://" + httpAddr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("agent HTTP endpoint never up")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
