package ota_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/ota"
	"github.com/outpost-edge/outpost/internal/ota/release"
	"github.com/outpost-edge/outpost/internal/ota/tuf"
)

// TestMeasureApply measures a whole update (metadata refresh, download,
// delta apply or decompression, hash checks, install) of a real binary as
// one agent process sees it: wall time and peak RSS (VmHWM via GNU time,
// which forks without sharing its address space).
//
//	OUTPOST_OTA_MEASURE=/path/old,/path/new go test -run TestMeasureApply -v ./internal/ota/
func TestMeasureApply(t *testing.T) {
	spec := os.Getenv("OUTPOST_OTA_MEASURE")
	if spec == "" {
		t.Skip("set OUTPOST_OTA_MEASURE=old,new")
	}
	if _, err := exec.LookPath("/usr/bin/time"); err != nil {
		t.Skip("needs GNU time")
	}
	oldBin, newBin, _ := strings.Cut(spec, ",")
	d := t.TempDir()
	r, err := tuf.InitRepo(filepath.Join(d, "repo"), filepath.Join(d, "keys"), true, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := release.Add(r, oldBin, "1.0.0", fixture.platform, 1); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	res, err := release.Add(r, newBin, "1.0.1", fixture.platform, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := release.Sign(r); err != nil {
		t.Fatal(err)
	}
	t.Logf("publish 1.0.1: %d bytes, full %d, deltas %v in %v", res.Size, res.Packed, res.Deltas, time.Since(t0).Round(time.Millisecond))
	srv := newServer(t, r.Dir)
	for _, useDelta := range []bool{true, false} {
		g := newGateway(t, "1.0.0", srv.URL, filepath.Join(r.MetaDir(), "1.root.json"))
		// The updater process is the 1.0.0 agent; the binary it updates is
		// the measured one.
		agent := g.bin
		target := filepath.Join(g.dir, "bin", "measured")
		if err := copyFileT(oldBin, target); err != nil {
			t.Fatal(err)
		}
		g.bin = target
		g.cfg.Delta = &useDelta
		g.cfg.Interval = 1e8
		g.writeConfig(t)
		srv.targetOut.Store(0)
		cmd := exec.Command("/usr/bin/time", "-f", "MAXRSS_KB=%M WALL=%e", agent, "-config", g.cfgPath)
		out, _ := cmd.CombinedOutput()
		if cmd.ProcessState.ExitCode() != ota.ExitRestart {
			t.Fatalf("agent exit %d, want %d (installed and restarting)\n%s", cmd.ProcessState.ExitCode(), ota.ExitRestart, out)
		}
		s := string(out)
		i := strings.Index(s, "MAXRSS_KB=")
		var kb int
		var wall float64
		if i >= 0 {
			f := strings.Fields(s[i:])
			kb, _ = strconv.Atoi(strings.TrimPrefix(f[0], "MAXRSS_KB="))
			wall, _ = strconv.ParseFloat(strings.TrimPrefix(f[1], "WALL="), 64)
		}
		if sha256File(t, target) != sha256File(t, newBin) {
			t.Fatal("measured binary not updated")
		}
		kind := "full"
		if useDelta {
			kind = "delta"
		}
		t.Logf("apply %s: downloaded %d bytes, agent process wall %.2fs (includes start and the first check after %v), peak RSS %.1f MiB",
			kind, srv.targetOut.Load(), wall, g.cfg.Interval, float64(kb)/1024)
	}
}
