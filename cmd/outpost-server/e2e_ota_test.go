package main

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/buildinfo"
	"github.com/outpost-edge/outpost/internal/fleet/store"
)

// TestFleetAgentVersionEndToEnd: a real outpost-server hosts the release
// repository (published with outpost release push); a real outpost 1.0.0
// gateway, without auto_apply, is told by an agentversion object to run
// 1.1.0: it downloads it from the server, restarts into it on trial (exec,
// the trial watchdog), commits it, and reports state committed with the
// version fact 1.1.0.
func TestFleetAgentVersionEndToEnd(t *testing.T) {
	dir := t.TempDir()
	bins := map[string]string{}
	for _, v := range []string{"1.0.0", "1.1.0"} {
		bins[v] = filepath.Join(dir, "outpost-"+v)
		cmd := exec.Command("go", "build", "-trimpath", "-o", bins[v], "-ldflags",
			"-s -w -X github.com/outpost-edge/outpost/internal/buildinfo.Version="+v, "../outpost")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", v, err, out)
		}
	}
	data := filepath.Join(dir, "server")
	os.MkdirAll(data, 0o700)
	listen := freeAddr(t)
	_, admin := startServer(t, data, listen)
	ca := filepath.Join(data, "ca.pem")
	env := []string{"OUTPOST_SERVER=https://" + listen, "OUTPOST_SERVER_CA=" + ca, "OUTPOST_SERVER_TOKEN=" + admin}
	cli := func(args ...string) string {
		t.Helper()
		out, errOut, code := run(t, env, serverBin, args...)
		if code != 0 {
			t.Fatalf("outpost-server %v: exit %d\n%s%s", args, code, out, errOut)
		}
		return out
	}
	// Publish 1.0.0 and 1.1.0 and push them to the server.
	repo, keys := filepath.Join(dir, "repo"), filepath.Join(dir, "keys")
	platform := buildinfo.Platform()
	if out, errOut, code := run(t, nil, agentBin, "release", "keygen", "--repo", repo, "--keys", keys, "--no-passphrase"); code != 0 {
		t.Fatalf("keygen: %s%s", out, errOut)
	}
	for _, v := range []string{"1.0.0", "1.1.0"} {
		if out, errOut, code := run(t, nil, agentBin, "release", "add", "--repo", repo, "--keys", keys, "--binary", bins[v], "--version", v, "--platform", platform); code != 0 {
			t.Fatalf("add %s: %s%s", v, out, errOut)
		}
	}
	if out, errOut, code := run(t, env, agentBin, "release", "push", "--repo", repo); code != 0 {
		t.Fatalf("push: %s%s", out, errOut)
	}

	// The gateway runs 1.0.0 from its own copy; OTA points at the server.
	gdir := filepath.Join(dir, "gw")
	os.MkdirAll(gdir, 0o700)
	gbin := filepath.Join(gdir, "outpost")
	b, _ := os.ReadFile(bins["1.0.0"])
	os.WriteFile(gbin, b, 0o755)
	cfgPath := filepath.Join(gdir, "outpost.yaml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(`node_id: gw-ota
data_dir: %[1]s/data
telemetry: {address: "127.0.0.1:0"}
broker:
  listeners: [{type: tcp, address: "127.0.0.1:0"}]
  allow_anonymous: true
fleet: {reconnect_max: 1s}
ota:
  enabled: true
  url: https://%[2]s/api/v1/ota
  root: %[3]s
  ca_file: %[6]s
  platform: %[4]s
  binary: %[5]s
  staging_dir: %[1]s/ota
  interval: 1h
  auto_apply: false
  start_deadline: 20s
  stability_window: 1s
  max_attempts: 2
  restart: exec
`, gdir, listen, filepath.Join(repo, "metadata", "1.root.json"), platform, gbin, ca)), 0o600)
	tok := strings.TrimSpace(cli("token", "create", "--expires", "10m"))
	if out, errOut, code := run(t, nil, gbin, "enroll", "--config", cfgPath, "--server", "https://"+listen, "--ca", ca, "--token", tok); code != 0 {
		t.Fatalf("enroll: %d %s %s", code, out, errOut)
	}
	cmd := exec.Command(gbin, "run", "--config", cfgPath)
	logf, err := os.Create(filepath.Join(gdir, "agent.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(gdir, "agent.log"))
			t.Logf("gateway log:\n%s", tail(string(b), 6000))
		}
	})
	gw := func() store.Gateway {
		var g store.Gateway
		json.Unmarshal([]byte(cli("gateways", "get", "gw-ota", "--json")), &g)
		return g
	}
	waitFor(t, 20*time.Second, "the gateway connected and reporting 1.0.0", func() bool {
		g := gw()
		return g.Connected && g.Facts["version"] == "1.0.0"
	})
	cli("objects", "put", "--kind", "agentversion", "--id", "outpost", "--spec", `{"version":"1.1.0"}`)
	waitFor(t, 120*time.Second, "1.1.0 committed and reported", func() bool {
		g := gw()
		for _, c := range g.Status.Conditions {
			if c.Kind == "agentversion" && c.Applied && c.State == "committed" && g.Facts["version"] == "1.1.0" {
				return true
			}
		}
		return false
	})
	got, _ := os.ReadFile(gbin)
	want, _ := os.ReadFile(bins["1.1.0"])
	if sha256.Sum256(got) != sha256.Sum256(want) {
		t.Fatal("the installed binary is not 1.1.0")
	}

	// 1.2.0 cannot start: the trial fails, 1.1.0 is put back, and the
	// condition says rolled_back with the reason (what a rollout gates on).
	broken := filepath.Join(dir, "outpost-1.2.0")
	os.WriteFile(broken, []byte("#!/bin/sh\necho broken build >&2\nexit 1\n"), 0o755)
	if out, errOut, code := run(t, nil, agentBin, "release", "add", "--repo", repo, "--keys", keys, "--binary", broken, "--version", "1.2.0", "--platform", platform); code != 0 {
		t.Fatalf("add 1.2.0: %s%s", out, errOut)
	}
	if out, errOut, code := run(t, env, agentBin, "release", "push", "--repo", repo); code != 0 {
		t.Fatalf("push: %s%s", out, errOut)
	}
	cli("objects", "put", "--kind", "agentversion", "--id", "outpost", "--spec", `{"version":"1.2.0"}`)
	waitFor(t, 120*time.Second, "1.2.0 rolled back and reported", func() bool {
		g := gw()
		for _, c := range g.Status.Conditions {
			if c.Kind == "agentversion" && c.State == "rolled_back" && c.Reason != "" && g.Facts["version"] == "1.1.0" && g.Status.Health == "degraded" {
				t.Logf("condition %+v", c)
				return true
			}
		}
		return false
	})
	if got, _ := os.ReadFile(gbin); sha256.Sum256(got) != sha256.Sum256(want) {
		t.Fatal("1.1.0 is not back in place after the rollback")
	}
}
