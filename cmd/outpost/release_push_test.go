package main

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/outpost-edge/outpost/internal/fleet/fleettest"
	"github.com/outpost-edge/outpost/internal/fleet/server"
	"github.com/outpost-edge/outpost/internal/fleet/store"
	"github.com/outpost-edge/outpost/internal/ota"
)

// TestReleasePushToFleetServer: `outpost release push` publishes a local
// repository to outpost-server (operator token; a viewer is refused), a
// second push uploads nothing, and the real OTA updater, trusting the
// fleet CA, verifies the hosted repository and finds the delta from its
// version to the newest.
func TestReleasePushToFleetServer(t *testing.T) {
	d := t.TempDir()
	os.MkdirAll(filepath.Join(d, "server"), 0o700)
	srv := fleettest.Start(t, filepath.Join(d, "server"), "", server.Options{OTADir: filepath.Join(d, "ota")})
	ca := filepath.Join(d, "ca.pem")
	os.WriteFile(ca, srv.CA, 0o600)
	repo, keys := filepath.Join(d, "repo"), filepath.Join(d, "keys")
	if out, errOut, code := outpost(t, "release", "keygen", "--repo", repo, "--keys", keys, "--no-passphrase"); code != 0 {
		t.Fatalf("keygen: %d %s %s", code, out, errOut)
	}
	v1 := make([]byte, 200<<10) // incompressible, so a delta beats the full target
	rand.NewChaCha8([32]byte{1}).Read(v1)
	v2 := append(append([]byte(nil), v1...), []byte("and a fix")...)
	for v, b := range map[string][]byte{"1.0.0": v1, "1.1.0": v2} {
		bin := filepath.Join(d, "bin-"+v)
		os.WriteFile(bin, b, 0o755)
		if v == "1.1.0" {
			continue
		}
		if out, errOut, code := outpost(t, "release", "add", "--repo", repo, "--keys", keys, "--binary", bin, "--version", v, "--platform", "linux/arm64"); code != 0 {
			t.Fatalf("add %s: %d %s %s", v, code, out, errOut)
		}
	}
	if out, errOut, code := outpost(t, "release", "add", "--repo", repo, "--keys", keys, "--binary", filepath.Join(d, "bin-1.1.0"), "--version", "1.1.0", "--platform", "linux/arm64"); code != 0 {
		t.Fatalf("add 1.1.0: %d %s %s", code, out, errOut)
	}
	push := func(token string) (string, string, int) {
		cmd := exec.Command(binary, "release", "push", "--repo", repo, "--server", srv.URL, "--ca", ca)
		cmd.Env = append(os.Environ(), "OUTPOST_SERVER_TOKEN="+token)
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); ok {
			return o.String(), e.String(), ee.ExitCode()
		}
		return o.String(), e.String(), 0
	}
	viewer, err := srv.CreateAPIToken(context.Background(), store.RoleViewer, "v")
	if err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := push(viewer); code != 1 || !strings.Contains(errOut, "403") {
		t.Fatalf("push with a viewer token: exit %d %s", code, errOut)
	}
	operator, err := srv.CreateAPIToken(context.Background(), store.RoleOperator, "o")
	if err != nil {
		t.Fatal(err)
	}
	out, errOut, code := push(operator)
	if code != 0 || !strings.Contains(out, "files uploaded") {
		t.Fatalf("push: %d %s %s", code, out, errOut)
	}
	t.Log(strings.TrimSpace(out))
	if out, _, code := push(operator); code != 0 || !strings.Contains(out, " 0 files uploaded") {
		t.Fatalf("second push uploaded again: %d %s", code, out)
	}

	// The real updater, running 1.0.0, checks against the server.
	running := filepath.Join(d, "outpost-running")
	os.WriteFile(running, v1, 0o755)
	u := ota.New(ota.Options{Version: "1.0.0"})
	cfg := ota.Config{Enabled: true, URL: srv.URL + "/api/v1/ota", Root: filepath.Join(repo, "metadata", "1.root.json"), CAFile: ca,
		Platform: "linux/arm64", Binary: running, StagingDir: filepath.Join(d, "staging")}
	cfg.SetDefaults() // what the agent's module adapter does before Init
	if err := u.Init(context.Background(), &cfg); err != nil {
		t.Fatal(err)
	}
	plan, err := u.Check(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if plan == nil || plan.Version != "1.1.0" || plan.Kind != "delta" {
		t.Fatalf("plan from the hosted repository = %+v", plan)
	}
	// 1.2.0 published: the newest is offered, unless the fleet pins 1.1.0
	// (agentversion); a pin to a version the repository lacks offers nothing.
	v3 := append(append([]byte(nil), v2...), []byte("and another")...)
	os.WriteFile(filepath.Join(d, "bin-1.2.0"), v3, 0o755)
	if out, errOut, code := outpost(t, "release", "add", "--repo", repo, "--keys", keys, "--binary", filepath.Join(d, "bin-1.2.0"), "--version", "1.2.0", "--platform", "linux/arm64"); code != 0 {
		t.Fatalf("add 1.2.0: %d %s %s", code, out, errOut)
	}
	if out, errOut, code := push(operator); code != 0 {
		t.Fatalf("push 1.2.0: %d %s %s", code, out, errOut)
	}
	for _, tc := range []struct{ pin, want, kind string }{{"", "1.2.0", "delta"}, {"1.1.0", "1.1.0", "delta"}, {"9.9.9", "", ""}} {
		if err := u.SetTarget(tc.pin); err != nil {
			t.Fatal(err)
		}
		plan, err := u.Check(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if tc.want == "" && plan != nil || tc.want != "" && (plan == nil || plan.Version != tc.want || plan.Kind != tc.kind) {
			t.Fatalf("pin %q: plan %+v, want %s %s", tc.pin, plan, tc.want, tc.kind)
		}
	}
	if err := u.SetTarget("v1.1.0"); err == nil {
		t.Fatal("a non-canonical pin was accepted")
	}

	// Without the CA the server's certificate is not trusted.
	cfg.CAFile, cfg.StagingDir = "", filepath.Join(d, "staging2")
	u2 := ota.New(ota.Options{Version: "1.0.0"})
	if err := u2.Init(context.Background(), &cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := u2.Check(context.Background()); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("check without the fleet CA = %v", err)
	}
}
