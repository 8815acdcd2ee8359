package ota_test

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The publisher and operator commands end to end: `outpost release
// keygen|add|serve` build and host a repository, and `outpost update
// check|apply|status` drive a gateway through its local API.
func TestReleaseAndUpdateCLI(t *testing.T) {
	d := t.TempDir()
	outpost := fixture.outpost
	// The keys are encrypted with the passphrase from the environment.
	const pass = "tr0ub4dor&3"
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(outpost, args...)
		cmd.Env = append(os.Environ(), "OUTPOST_RELEASE_PASSPHRASE="+pass)
		b, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("outpost %s: %v\n%s", strings.Join(args, " "), err, b)
		}
		return string(b)
	}
	repo, keys := filepath.Join(d, "repo"), filepath.Join(d, "keys")
	run("release", "keygen", "--repo", repo, "--keys", keys)
	run("release", "add", "--repo", repo, "--keys", keys, "--binary", fixture.bins["1.0.0"], "--version", "1.0.0", "--platform", fixture.platform)
	out := run("release", "add", "--repo", repo, "--keys", keys, "--binary", fixture.bins["1.1.0"], "--version", "1.1.0", "--platform", fixture.platform)
	if !strings.Contains(out, "delta from 1.0.0") {
		t.Fatalf("add did not make a delta:\n%s", out)
	}
	run("release", "sign", "--repo", repo, "--keys", keys, "--timestamp")
	if k, _ := os.ReadFile(filepath.Join(keys, "targets.key")); !strings.Contains(string(k), `"encrypted"`) || strings.Contains(string(k), pass) {
		t.Fatalf("targets.key is not encrypted:\n%s", k)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	serve := exec.CommandContext(ctx, outpost, "release", "serve", repo, "--listen", "127.0.0.1:0")
	stdout, _ := serve.StdoutPipe()
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		serve.Wait()
	}()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	i := strings.Index(line, "http://")
	if i < 0 {
		t.Fatalf("serve printed %q", line)
	}
	url := strings.TrimSuffix(strings.Fields(line[i:])[0], "/")

	g := newGateway(t, "1.0.0", url, filepath.Join(repo, "metadata", "1.root.json"))
	g.cfg.Interval = 1e12 // check only on command
	g.cfg.StabilityWindow = 1e9
	// The API keeps its address across restarts, as a real agent's does:
	// `update apply` follows the new version to its commit.
	g.listen = freePort(t)
	s := g.supervise(t, "")
	var api string
	checkFor(t, 10*time.Second, func() error {
		b, err := os.ReadFile(g.addrFile)
		api = "http://" + string(b)
		return err
	})
	out = run("update", "check", "--api", api)
	t.Logf("outpost update check:\n%s", out)
	if !strings.Contains(out, "available: 1.1.0 (delta") {
		t.Fatalf("check output:\n%s", out)
	}
	out = run("update", "apply", "--api", api, "--timeout", "60s")
	t.Logf("outpost update apply:\n%s", out)
	if !strings.Contains(out, "1.1.0 committed") {
		t.Fatalf("apply did not follow the update to its commit:\n%s", out)
	}
	s.waitCommitted(t, "1.1.0", 30*time.Second)
	b, _ := os.ReadFile(g.addrFile)
	out = run("update", "status", "--api", "http://"+string(b))
	t.Logf("outpost update status:\n%s", out)
	if !strings.Contains(out, "last:      1.1.0 committed") {
		t.Fatalf("status output:\n%s", out)
	}
}

// Passphrase handling of `outpost release`: keygen refuses to write
// unencrypted keys unless told (--no-passphrase, with a warning); add,
// sign and rotate read encrypted keys with --passphrase-file or
// $OUTPOST_RELEASE_PASSPHRASE and fail clearly without it or with a wrong
// one; the passphrase never appears in any output.
func TestReleaseKeyPassphraseCLI(t *testing.T) {
	d := t.TempDir()
	const pass = "paSSphrase-9f1c"
	passFile := filepath.Join(d, "pass")
	os.WriteFile(passFile, []byte(pass+"\n"), 0o600)
	wrongFile := filepath.Join(d, "wrong")
	os.WriteFile(wrongFile, []byte("wrong\n"), 0o600)
	run := func(wantCode int, env string, args ...string) string {
		t.Helper()
		cmd := exec.Command(fixture.outpost, args...)
		cmd.Env = os.Environ()
		if env != "" {
			cmd.Env = append(cmd.Env, "OUTPOST_RELEASE_PASSPHRASE="+env)
		}
		b, _ := cmd.CombinedOutput()
		if code := cmd.ProcessState.ExitCode(); code != wantCode {
			t.Fatalf("outpost %s: exit %d, want %d\n%s", strings.Join(args, " "), code, wantCode, b)
		}
		if strings.Contains(string(b), pass) {
			t.Fatalf("outpost %s printed the passphrase:\n%s", strings.Join(args, " "), b)
		}
		return string(b)
	}
	repo, keys := filepath.Join(d, "repo"), filepath.Join(d, "keys")
	if out := run(2, "", "release", "keygen", "--repo", repo, "--keys", keys); !strings.Contains(out, "--no-passphrase") {
		t.Fatalf("keygen without a passphrase:\n%s", out)
	}
	run(0, "", "release", "keygen", "--repo", repo, "--keys", keys, "--passphrase-file", passFile)
	add := []string{"release", "add", "--repo", repo, "--keys", keys, "--binary", fixture.bins["1.0.0"], "--version", "1.0.0", "--platform", fixture.platform}
	if out := run(1, "", add...); !strings.Contains(out, "a passphrase is required") {
		t.Fatalf("add without the passphrase:\n%s", out)
	}
	if out := run(1, "", append(add, "--passphrase-file", wrongFile)...); !strings.Contains(out, "wrong passphrase") {
		t.Fatalf("add with a wrong passphrase:\n%s", out)
	}
	run(0, pass, add...)
	run(0, "", "release", "sign", "--repo", repo, "--keys", keys, "--timestamp", "--passphrase-file", passFile)
	run(0, pass, "release", "rotate", "--repo", repo, "--keys", keys, "--role", "snapshot")
	if k, _ := os.ReadFile(filepath.Join(keys, "snapshot.key")); !strings.Contains(string(k), `"encrypted"`) {
		t.Fatalf("rotated key not encrypted:\n%s", k)
	}
	// Unencrypted on request, with a warning.
	repo2, keys2 := filepath.Join(d, "repo2"), filepath.Join(d, "keys2")
	if out := run(0, "", "release", "keygen", "--repo", repo2, "--keys", keys2, "--no-passphrase"); !strings.Contains(out, "warning: the private keys") {
		t.Fatalf("keygen --no-passphrase gave no warning:\n%s", out)
	}
	if out := run(2, pass, "release", "keygen", "--repo", filepath.Join(d, "r3"), "--keys", filepath.Join(d, "k3"), "--no-passphrase"); !strings.Contains(out, "conflicts") {
		t.Fatalf("keygen --no-passphrase with a passphrase:\n%s", out)
	}
}

// A release published through a delegated role: `release delegate` gives
// the platform's paths to a role with its own key, `release add --role`
// publishes 1.1.0 with it (a delta from 1.0.0, published by the top-level
// targets role) on a machine without the targets key, and a gateway verifies the delegation chain and installs
// it. After `release rotate --role` of the delegated key, gateways keep
// verifying; an add outside the role's paths is refused.
func TestReleaseDelegatedRoleCLI(t *testing.T) {
	d := t.TempDir()
	run := func(wantOK bool, args ...string) string {
		t.Helper()
		b, err := exec.Command(fixture.outpost, args...).CombinedOutput()
		if (err == nil) != wantOK {
			t.Fatalf("outpost %s: %v\n%s", strings.Join(args, " "), err, b)
		}
		return string(b)
	}
	repo, keys := filepath.Join(d, "repo"), filepath.Join(d, "keys")
	rk := []string{"--repo", repo, "--keys", keys}
	run(true, append([]string{"release", "keygen", "--no-passphrase"}, rk...)...)
	run(true, append([]string{"release", "add", "--binary", fixture.bins["1.0.0"], "--version", "1.0.0", "--platform", fixture.platform}, rk...)...)
	out := run(true, append([]string{"release", "delegate", "--role", "builds", "--paths", fixture.platform + "/*"}, rk...)...)
	t.Logf("%s", out)
	// The build machine publishes without the top-level targets key.
	offline := filepath.Join(d, "offline-targets.key")
	if err := os.Rename(filepath.Join(keys, "targets.key"), offline); err != nil {
		t.Fatal(err)
	}
	out = run(true, append([]string{"release", "add", "--role", "builds", "--binary", fixture.bins["1.1.0"], "--version", "1.1.0", "--platform", fixture.platform}, rk...)...)
	if !strings.Contains(out, "delta from 1.0.0") {
		t.Fatalf("add --role made no delta:\n%s", out)
	}
	if out := run(false, append([]string{"release", "add", "--role", "builds", "--binary", fixture.bins["1.2.0"], "--version", "1.2.0", "--platform", "other/arch"}, rk...)...); !strings.Contains(out, "outside role builds's paths") {
		t.Fatalf("add outside the role's paths:\n%s", out)
	}
	top, err := os.ReadFile(filepath.Join(repo, "metadata", "targets.json"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(top), "outpost-1.1.0") || !strings.Contains(string(top), `"builds"`) {
		t.Fatalf("targets.json should delegate to builds and not list 1.1.0 itself:\n%s", top)
	}
	srv := newServer(t, repo)
	g := newGateway(t, "1.0.0", srv.URL, filepath.Join(repo, "metadata", "1.root.json"))
	ip := g.inproc(t, "1.0.0")
	if err := apply(t, ip); err != nil {
		t.Fatal(err)
	}
	ip.waitRestart(t)
	if v := g.installedVersion(t); v != "1.1.0" {
		t.Fatalf("installed %s", v)
	}
	os.Rename(offline, filepath.Join(keys, "targets.key"))
	run(true, append([]string{"release", "rotate", "--role", "builds"}, rk...)...)
	ip2 := g.inproc(t, "1.1.0")
	if _, err := ip2.Check(context.Background()); err != nil {
		t.Fatalf("check after rotating the delegated key: %v", err)
	}
}
