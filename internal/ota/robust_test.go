package ota_test

import (
	"context"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/ota"
	"github.com/outpost-edge/outpost/internal/ota/tuf"
)

// onlySHA512 re-signs the current targets metadata (with the real targets
// key: a publisher's or a delegated role's key is enough) so that every
// 1.1.0 target lists only a sha512 hash, then re-signs snapshot and
// timestamp to reference it.
func onlySHA512(t *testing.T, r *testRepo) {
	t.Helper()
	tv := r.Snapshot.Meta["targets.json"].Version
	resign(t, metaPath(r, strconv.FormatInt(tv, 10)+".targets.json"), func(m map[string]any) {
		for name, v := range m["targets"].(map[string]any) {
			if !strings.Contains(name, "1.1.0") {
				continue
			}
			b, err := os.ReadFile(r.TargetFilePath(name))
			if err != nil {
				t.Fatal(err)
			}
			s := sha512.Sum512(b)
			v.(map[string]any)["hashes"] = map[string]any{"sha512": hex.EncodeToString(s[:])}
		}
	}, key(t, r, tuf.RoleTargets))
	refreshRefs(t, r)
}

// Issue 10 item 7: a signed target without a sha256 hash panicked in
// partPath after the state said downloading, so every start panicked again.
// It must be refused before any state is written.
func TestAttackTargetWithoutSHA256(t *testing.T) {
	r := newTestRepo(t)
	onlySHA512(t, r)
	s := newServer(t, r.Dir)
	g := newGateway(t, "1.0.0", s.URL, r.root)
	ip := g.inproc(t, "1.0.0")
	err := apply(t, ip)
	if !errors.Is(err, ota.ErrBadTarget) {
		t.Fatalf("err = %v, want ErrBadTarget", err)
	}
	t.Log(err)
	assertNothingInstalled(t, g, ip)
	if st := g.state(t); st.Phase != ota.PhaseIdle || st.Target != nil {
		t.Fatalf("state after a refused target: phase %s target %+v", st.Phase, st.Target)
	}
}

// A gateway that an older version left crash-looping: its state file says
// downloading a target that has no sha256 hash. The updater must start,
// drop that download, mark the version bad and keep running.
func TestStartWithUnvalidatedDownloadInState(t *testing.T) {
	r := newTestRepo(t)
	onlySHA512(t, r)
	s := newServer(t, r.Dir)
	g := newGateway(t, "1.0.0", s.URL, r.root)
	tv := r.Snapshot.Meta["targets.json"].Version
	raw, err := os.ReadFile(metaPath(r, strconv.FormatInt(tv, 10)+".targets.json"))
	if err != nil {
		t.Fatal(err)
	}
	env, _ := tuf.ParseEnvelope(raw)
	tg, err := tuf.ParseTargets(env)
	if err != nil {
		t.Fatal(err)
	}
	name := ota.FullTargetName(fixture.platform, "1.1.0")
	tf := tg.Targets[name]
	os.MkdirAll(g.cfg.StagingDir, 0o755)
	st := &ota.State{Phase: ota.PhaseDownloading, Target: &ota.Pending{
		Version: "1.1.0", FromVersion: "1.0.0", FromSHA256: sha256File(t, g.bin),
		SHA256: strings.Repeat("ab", 32), Size: 1000, Target: name, Kind: "full", File: tf,
	}}
	if err := ota.SaveState(g.cfg.StateFile, st); err != nil {
		t.Fatal(err)
	}
	ip := g.inproc(t, "1.0.0")
	if err := ip.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer ip.Stop(context.Background())
	checkFor(t, 10*time.Second, func() error {
		st := g.state(t)
		if st.Phase != ota.PhaseIdle || !slices.Contains(st.Bad, "1.1.0") {
			return fmt.Errorf("phase %s bad %v", st.Phase, st.Bad)
		}
		return nil
	})
	assertNothingInstalled(t, g, ip)
}

// A panic anywhere in an update (here: an injected one while staging) is
// recovered: the agent keeps running, the version is marked bad, the
// error is reported, and the next check works.
func TestUpdaterPanicRecovered(t *testing.T) {
	r := newTestRepo(t)
	s := newServer(t, r.Dir)
	g := newGateway(t, "1.0.0", s.URL, r.root)
	g.cfg.Interval = 1e12 // only the triggered apply
	ip := g.inproc(t, "1.0.0")
	defer ota.SetPanicHook(func(step string) { panic("injected at " + step) })()
	if err := ip.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer ip.Stop(context.Background())
	ip.Trigger(true)
	checkFor(t, 10*time.Second, func() error {
		st := g.state(t)
		if st.Phase != ota.PhaseIdle || !slices.Contains(st.Bad, "1.1.0") || st.Last == nil || st.Last.Result != "failed" {
			return fmt.Errorf("phase %s bad %v last %+v", st.Phase, st.Bad, st.Last)
		}
		return nil
	})
	if st := g.state(t); !strings.Contains(st.Last.Reason, "panicked") {
		t.Fatalf("last outcome %+v", st.Last)
	}
	assertNothingInstalled(t, g, ip)
	// Still alive and checking.
	if _, err := ip.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// Rollback protection must survive a wiped metadata cache (an operator
// clearing staging_dir/metadata, a reflashed data partition): the highest
// versions seen are kept in the agent's state directory too.
func TestAttackRollbackAfterWipedMetadata(t *testing.T) {
	r := newTestRepo(t)
	s := newServer(t, r.Dir)
	g := newGateway(t, "1.0.0", s.URL, r.root)
	old, _ := os.ReadFile(metaPath(r, "timestamp.json"))
	if err := r.SignTimestamp(); err != nil {
		t.Fatal(err)
	}
	ip := g.inproc(t, "1.0.0")
	if _, err := ip.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(g.cfg.StagingDir, "metadata")); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(metaPath(r, "timestamp.json"), old, 0o644)
	ip = g.inproc(t, "1.0.0") // the agent restarted
	err := apply(t, ip)
	if !errors.Is(err, tuf.ErrRollback) {
		t.Fatalf("err = %v, want ErrRollback", err)
	}
	t.Log(err)
	assertNothingInstalled(t, g, ip)
}
