package ota_test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/ota"
	"github.com/outpost-edge/outpost/internal/ota/release"
)

// TestEndToEndRealOutpost upgrades a gateway running the real `outpost run`
// from version A (1.0.0) to B (1.1.0), both built here from cmd/outpost with
// different version strings: B arrives as a delta, the agent restarts into
// it (exit 75, restarted by the test's supervisor as systemd would, with
// the pre-start hook), passes the health gate on /readyz and is committed.
//
// It skips while `outpost run` does not accept an ota: section (the agent
// wiring is the integrator's).
func TestEndToEndRealOutpost(t *testing.T) {
	d := t.TempDir()
	bins := map[string]string{"1.0.0": filepath.Join(d, "outpost-1.0.0"), "1.1.0": filepath.Join(d, "outpost-1.1.0")}
	build := func(v string) {
		cmd := exec.Command("go", "build", "-trimpath", "-o", bins[v], "-ldflags",
			"-s -w -X github.com/outpost-edge/outpost/internal/buildinfo.Version="+v, "../../cmd/outpost")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build outpost %s: %v\n%s", v, err, b)
		}
	}
	build("1.0.0")
	// Does `outpost run` know the ota section yet?
	probe := filepath.Join(d, "probe.yaml")
	os.WriteFile(probe, []byte("ota:\n  enabled: false\n"), 0o644)
	if out, err := exec.Command(bins["1.0.0"], "config", "check", probe).CombinedOutput(); err != nil && strings.Contains(string(out), `unknown key "ota"`) {
		t.Skipf("outpost run does not accept the ota section yet:\n%s", out)
	}
	build("1.1.0")

	repo, keys := filepath.Join(d, "repo"), filepath.Join(d, "keys")
	if err := publish(repo, keys, "keygen"); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"1.0.0", "1.1.0"} {
		if err := publish(repo, keys, "add", "--binary", bins[v], "--version", v, "--platform", fixture.platform); err != nil {
			t.Fatal(err)
		}
	}
	r, err := release.Open(repo, keys)
	if err != nil {
		t.Fatal(err)
	}
	srv := newServer(t, r.Dir)

	g := newGateway(t, "1.0.0", srv.URL, filepath.Join(r.MetaDir(), "1.root.json"))
	if err := copyFileT(bins["1.0.0"], g.bin); err != nil {
		t.Fatal(err)
	}
	telemetry, broker := freePort(t), freePort(t)
	cfg := filepath.Join(g.dir, "outpost.yaml")
	y := fmt.Sprintf(`data_dir: %s
log:
  level: debug
telemetry:
  address: %s
broker:
  listeners:
    - type: tcp
      address: %s
  allow_anonymous: true
ota:
  enabled: true
  url: %s
  root: %s
  platform: %s
  interval: 300ms
  staging_dir: %s
  binary: %s
  start_deadline: 20s
  stability_window: 1s
  max_attempts: 2
  restart: exit
`, filepath.Join(g.dir, "data"), telemetry, broker, g.cfg.URL, g.cfg.Root, fixture.platform, g.cfg.StagingDir, g.bin)
	if err := os.WriteFile(cfg, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(g.bin, "config", "check", cfg).CombinedOutput(); err != nil {
		if strings.Contains(string(out), "ota") {
			t.Skipf("outpost run does not accept the ota section yet:\n%s", out)
		}
		t.Fatalf("config check: %v\n%s", err, out)
	}
	g.args = []string{"run", "--config", cfg}
	g.prestartArgs = []string{"update", "prestart", "--config", cfg}
	g.prestart = true
	g.api = telemetry
	s := g.supervise(t, "")
	st := s.waitCommitted(t, "1.1.0", 90*time.Second)
	full := r.Targets.Targets[ota.FullTargetName(fixture.platform, "1.1.0")].Length
	t.Logf("outpost 1.0.0 → 1.1.0: %d target bytes downloaded (full target %d), last %+v", srv.targetOut.Load(), full, st.Last)
	if sha256File(t, g.bin) != sha256File(t, bins["1.1.0"]) || sha256File(t, g.bin+".prev") != sha256File(t, bins["1.0.0"]) {
		t.Fatal("installed or previous binary wrong")
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
