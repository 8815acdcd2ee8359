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
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(outpost, args...)
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
	out = run("update", "apply", "--api", api)
	t.Logf("outpost update apply:\n%s", out)
	s.waitCommitted(t, "1.1.0", 30*time.Second)
	b, _ := os.ReadFile(g.addrFile)
	out = run("update", "status", "--api", "http://"+string(b))
	t.Logf("outpost update status:\n%s", out)
	if !strings.Contains(out, "last:      1.1.0 committed") {
		t.Fatalf("status output:\n%s", out)
	}
}
