package ota_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/ota"
	"github.com/outpost-edge/outpost/internal/ota/tuf"
)

// Each TUF attack class must be rejected with its own error, and nothing
// may be installed: the gateway's binary stays A, no restart is requested
// and the state is not past downloading.
func assertNothingInstalled(t *testing.T, g *gateway, ip *inproc) {
	t.Helper()
	if v := g.installedVersion(t); v != "1.0.0" {
		t.Fatalf("installed %s after a rejected update", v)
	}
	if n := ip.restarts.Load(); n != 0 {
		t.Fatalf("restart requested %d times", n)
	}
	if st := g.state(t); st.Phase != ota.PhaseIdle && st.Phase != ota.PhaseDownloading {
		t.Fatalf("state phase %s after a rejected update", st.Phase)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(g.bin), ".outpost.new")); err == nil {
		t.Fatal("staged binary left behind")
	}
}

func apply(t *testing.T, ip *inproc) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return ip.Apply(ctx)
}

// resign re-signs a metadata file's signed part with the given keys after
// mutate edits it (as a generic JSON object).
func resign(t *testing.T, path string, mutate func(m map[string]any), keys ...ed25519.PrivateKey) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	e, err := tuf.ParseEnvelope(raw)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	dec := json.NewDecoder(strings.NewReader(string(e.Signed)))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		t.Fatal(err)
	}
	mutate(m)
	out, err := tuf.Sign(m, keys...)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) == 0 {
		// Keep the original signatures over the changed content.
		ne, _ := tuf.ParseEnvelope(out)
		ne.Signatures = e.Signatures
		out, _ = json.Marshal(ne)
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
}

func key(t *testing.T, r *testRepo, role string) ed25519.PrivateKey {
	k, err := r.LoadKey(role)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func metaPath(r *testRepo, name string) string { return filepath.Join(r.MetaDir(), name) }

// refreshRefs rewrites snapshot (pointing at the current targets file) and
// timestamp (pointing at the snapshot), signed with the real keys: an
// attacker holding the snapshot and timestamp keys but not the targets key.
func refreshRefs(t *testing.T, r *testRepo) {
	t.Helper()
	tv := r.Snapshot.Meta["targets.json"].Version
	traw, _ := os.ReadFile(metaPath(r, strconv.FormatInt(tv, 10)+".targets.json"))
	sv := r.Timestamp.Meta["snapshot.json"].Version
	resign(t, metaPath(r, strconv.FormatInt(sv, 10)+".snapshot.json"), func(m map[string]any) {
		m["meta"] = map[string]any{"targets.json": metaRef(tv, traw)}
	}, key(t, r, tuf.RoleSnapshot))
	sraw, _ := os.ReadFile(metaPath(r, strconv.FormatInt(sv, 10)+".snapshot.json"))
	resign(t, metaPath(r, "timestamp.json"), func(m map[string]any) {
		m["meta"] = map[string]any{"snapshot.json": metaRef(sv, sraw)}
	}, key(t, r, tuf.RoleTimestamp))
}

func metaRef(v int64, raw []byte) map[string]any {
	if err := tuf.CheckHashes(raw, 0, nil); err != nil {
		panic(err)
	}
	h := sha256Bytes(raw)
	return map[string]any{"version": json.Number(strconv.FormatInt(v, 10)), "length": json.Number(strconv.Itoa(len(raw))), "hashes": map[string]any{"sha256": h}}
}

func TestAttackArbitrarySoftwareBadSignature(t *testing.T) {
	r := newTestRepo(t)
	s := newServer(t, r.Dir)
	g := newGateway(t, "1.0.0", s.URL, r.root)
	ip := g.inproc(t, "1.0.0")
	// Attacker edits targets.json to point 1.1.0 at their binary, keeps the
	// real targets signature, and re-signs snapshot and timestamp.
	tv := r.Snapshot.Meta["targets.json"].Version
	resign(t, metaPath(r, strconv.FormatInt(tv, 10)+".targets.json"), func(m map[string]any) {
		ts := m["targets"].(map[string]any)
		for name, v := range ts {
			if strings.HasSuffix(name, "1.1.0.zst") {
				v.(map[string]any)["hashes"].(map[string]any)["sha256"] = strings.Repeat("ab", 32)
			}
		}
	})
	refreshRefs(t, r)
	err := apply(t, ip)
	if !errors.Is(err, tuf.ErrBadSignature) {
		t.Fatalf("err = %v, want ErrBadSignature", err)
	}
	t.Log(err)
	assertNothingInstalled(t, g, ip)
}

func TestAttackArbitrarySoftwareUnknownKey(t *testing.T) {
	r := newTestRepo(t)
	s := newServer(t, r.Dir)
	g := newGateway(t, "1.0.0", s.URL, r.root)
	ip := g.inproc(t, "1.0.0")
	// Attacker signs targets with their own key.
	tv := r.Snapshot.Meta["targets.json"].Version
	resign(t, metaPath(r, strconv.FormatInt(tv, 10)+".targets.json"), func(m map[string]any) {
		m["version"] = json.Number(strconv.FormatInt(tv, 10))
	}, tuf.GenerateKey())
	refreshRefs(t, r)
	err := apply(t, ip)
	if !errors.Is(err, tuf.ErrUnknownKey) {
		t.Fatalf("err = %v, want ErrUnknownKey", err)
	}
	t.Log(err)
	assertNothingInstalled(t, g, ip)
}

func TestAttackBelowThreshold(t *testing.T) {
	r := newTestRepo(t)
	s := newServer(t, r.Dir)
	g := newGateway(t, "1.0.0", s.URL, r.root)
	ip := g.inproc(t, "1.0.0")
	// Root v2 requires two targets keys; targets stays signed by one.
	k2 := tuf.GenerateKey()
	pk := tuf.NewKey(k2.Public().(ed25519.PublicKey))
	r.Root.Keys[pk.ID()] = pk
	r.Root.Roles[tuf.RoleTargets].KeyIDs = append(r.Root.Roles[tuf.RoleTargets].KeyIDs, pk.ID())
	r.Root.Roles[tuf.RoleTargets].Threshold = 2
	r.Root.Version++
	if err := r.WriteRoot(); err != nil {
		t.Fatal(err)
	}
	err := apply(t, ip)
	if !errors.Is(err, tuf.ErrThreshold) {
		t.Fatalf("err = %v, want ErrThreshold", err)
	}
	t.Log(err)
	assertNothingInstalled(t, g, ip)
}

func TestAttackRollback(t *testing.T) {
	r := newTestRepo(t)
	s := newServer(t, r.Dir)
	g := newGateway(t, "1.0.0", s.URL, r.root)
	ip := g.inproc(t, "1.0.0")
	old, _ := os.ReadFile(metaPath(r, "timestamp.json"))
	if err := r.SignTimestamp(); err != nil {
		t.Fatal(err)
	}
	if _, err := ip.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The mirror now serves the older (validly signed) timestamp.
	os.WriteFile(metaPath(r, "timestamp.json"), old, 0o644)
	err := apply(t, ip)
	if !errors.Is(err, tuf.ErrRollback) {
		t.Fatalf("err = %v, want ErrRollback", err)
	}
	t.Log(err)
	assertNothingInstalled(t, g, ip)
}

func TestAttackFastForwardRecovery(t *testing.T) {
	r := newTestRepo(t)
	s := newServer(t, r.Dir)
	g := newGateway(t, "1.0.0", s.URL, r.root)
	ip := g.inproc(t, "1.0.0")
	// An attacker with the timestamp key fast-forwards the version.
	resign(t, metaPath(r, "timestamp.json"), func(m map[string]any) {
		m["version"] = json.Number("1000000")
	}, key(t, r, tuf.RoleTimestamp))
	if _, err := ip.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The publisher's next timestamp is now a "rollback"...
	if err := r.SignTimestamp(); err != nil {
		t.Fatal(err)
	}
	if _, err := ip.Check(context.Background()); !errors.Is(err, tuf.ErrRollback) {
		t.Fatalf("before rotation: err = %v, want ErrRollback", err)
	}
	// ...until it rotates the timestamp key: the client then forgets the
	// fast-forwarded timestamp and recovers.
	if err := r.RotateKey(tuf.RoleTimestamp); err != nil {
		t.Fatal(err)
	}
	if err := r.SignTimestamp(); err != nil {
		t.Fatal(err)
	}
	plan, err := ip.Check(context.Background())
	if err != nil {
		t.Fatalf("after rotation: %v", err)
	}
	if plan == nil || plan.Version != "1.1.0" {
		t.Fatalf("plan %+v", plan)
	}
	// The old (compromised) key no longer signs anything the client takes.
	resign(t, metaPath(r, "timestamp.json"), func(m map[string]any) {
		m["version"] = json.Number("2000000")
	}, mustReadKey(t, filepath.Join(r.KeyDir, "timestamp.key.old")))
	if _, err := ip.Check(context.Background()); !errors.Is(err, tuf.ErrUnknownKey) {
		t.Fatalf("old key after rotation: err = %v, want ErrUnknownKey", err)
	}
}

func mustReadKey(t *testing.T, p string) ed25519.PrivateKey {
	k, err := tuf.ReadKey(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestAttackIndefiniteFreeze(t *testing.T) {
	r := newTestRepo(t)
	s := newServer(t, r.Dir)
	g := newGateway(t, "1.0.0", s.URL, r.root)
	ip := g.inproc(t, "1.0.0")
	// The mirror keeps serving a timestamp that has expired.
	r.Now = func() time.Time { return time.Now().Add(-48 * time.Hour) }
	if err := r.SignTimestamp(); err != nil {
		t.Fatal(err)
	}
	err := apply(t, ip)
	if !errors.Is(err, tuf.ErrExpired) {
		t.Fatalf("err = %v, want ErrExpired", err)
	}
	t.Log(err)
	assertNothingInstalled(t, g, ip)
}

func TestAttackEndlessData(t *testing.T) {
	r := newTestRepo(t)
	s := newServer(t, r.Dir)
	g := newGateway(t, "1.0.0", s.URL, r.root)
	ip := g.inproc(t, "1.0.0")
	// Target: the server streams forever without a Content-Length.
	s.setIntercept(func(w http.ResponseWriter, req *http.Request) bool {
		if !strings.HasPrefix(req.URL.Path, "/targets/") {
			return false
		}
		buf := make([]byte, 32<<10)
		for i := 0; i < 100_000; i++ { // bounded: 3.2 GB at most
			if _, err := w.Write(buf); err != nil {
				return true
			}
		}
		return true
	})
	err := apply(t, ip)
	if !errors.Is(err, ota.ErrEndlessData) {
		t.Fatalf("err = %v, want ErrEndlessData", err)
	}
	t.Log(err)
	if n := s.targetOut.Load(); n > 64<<20 {
		t.Errorf("client read %d bytes from an endless target", n)
	}
	assertNothingInstalled(t, g, ip)

	// Metadata: an endless timestamp.json.
	s.setIntercept(func(w http.ResponseWriter, req *http.Request) bool {
		if req.URL.Path != "/metadata/timestamp.json" {
			return false
		}
		buf := make([]byte, 32<<10)
		for i := 0; i < 1000; i++ {
			if _, err := w.Write(buf); err != nil {
				break
			}
		}
		return true
	})
	if _, err := ip.Check(context.Background()); !errors.Is(err, tuf.ErrTooLarge) {
		t.Fatalf("metadata: err = %v, want ErrTooLarge", err)
	}
}

func TestAttackSlowRetrieval(t *testing.T) {
	r := newTestRepo(t)
	s := newServer(t, r.Dir)
	g := newGateway(t, "1.0.0", s.URL, r.root)
	g.cfg.Timeouts.SpeedWindow = 300 * 1e6 // 300ms
	g.cfg.Timeouts.MinSpeed = 100 << 10    // 100 KiB/s
	g.cfg.Timeouts.Retries = 1
	noDelta := false
	g.cfg.Delta = &noDelta // the delta is tiny; trickle the full binary
	ip := g.inproc(t, "1.0.0")
	// The server trickles 1 KiB every 50 ms (20 KiB/s), for 10 s at most.
	s.setIntercept(func(w http.ResponseWriter, req *http.Request) bool {
		if !strings.HasPrefix(req.URL.Path, "/targets/") {
			return false
		}
		w.WriteHeader(http.StatusOK)
		buf := make([]byte, 1024)
		for i := 0; i < 200; i++ {
			if _, err := w.Write(buf); err != nil {
				return true
			}
			w.(http.Flusher).Flush()
			select {
			case <-req.Context().Done():
				return true
			case <-time.After(50 * time.Millisecond):
			}
		}
		return true
	})
	t0 := time.Now()
	err := apply(t, ip)
	if !errors.Is(err, ota.ErrSlowRetrieval) {
		t.Fatalf("err = %v, want ErrSlowRetrieval", err)
	}
	t.Logf("%v after %v", err, time.Since(t0).Round(time.Millisecond))
	assertNothingInstalled(t, g, ip)
}

func TestAttackMixAndMatch(t *testing.T) {
	r := newTestRepo(t)
	s := newServer(t, r.Dir)
	g := newGateway(t, "1.0.0", s.URL, r.root)
	ip := g.inproc(t, "1.0.0")
	// The mirror serves targets from an older snapshot under the current
	// name (validly signed by the targets key, but not the file the
	// current snapshot references).
	tv := r.Snapshot.Meta["targets.json"].Version
	old, _ := os.ReadFile(metaPath(r, strconv.FormatInt(tv-1, 10)+".targets.json"))
	os.WriteFile(metaPath(r, strconv.FormatInt(tv, 10)+".targets.json"), old, 0o644)
	err := apply(t, ip)
	if !errors.Is(err, tuf.ErrMixAndMatch) {
		t.Fatalf("err = %v, want ErrMixAndMatch", err)
	}
	t.Log(err)
	assertNothingInstalled(t, g, ip)
}

func TestAttackWrongTarget(t *testing.T) {
	r := newTestRepo(t)
	// Another platform's release is in the repository too.
	other := "linux/riscv64"
	if fixture.platform == other {
		other = "linux/arm64"
	}
	src := filepath.Join(t.TempDir(), "other")
	os.WriteFile(src, []byte(strings.Repeat("\x7fELF riscv64 binary ", 1000)), 0o644)
	name := ota.FullTargetName(other, "1.1.0")
	if _, err := r.AddTarget(name, src, ota.Custom{Kind: "full", Version: "1.1.0", Platform: other, SHA256: strings.Repeat("cd", 32), Size: 20000}); err != nil {
		t.Fatal(err)
	}
	if err := r.Publish(); err != nil {
		t.Fatal(err)
	}
	otherPath := r.TargetFilePath(name)
	s := newServer(t, r.Dir)
	g := newGateway(t, "1.0.0", s.URL, r.root)
	f := false
	g.cfg.Delta = &f
	ip := g.inproc(t, "1.0.0")
	// The mirror answers every target request with the other platform's
	// (validly signed) binary.
	s.setIntercept(func(w http.ResponseWriter, req *http.Request) bool {
		if !strings.HasPrefix(req.URL.Path, "/targets/") {
			return false
		}
		http.ServeFile(w, req, otherPath)
		return true
	})
	err := apply(t, ip)
	if !errors.Is(err, ota.ErrWrongTarget) {
		t.Fatalf("err = %v, want ErrWrongTarget", err)
	}
	t.Log(err)
	assertNothingInstalled(t, g, ip)
}

func TestAttackTargetHashMismatch(t *testing.T) {
	r := newTestRepo(t)
	s := newServer(t, r.Dir)
	g := newGateway(t, "1.0.0", s.URL, r.root)
	ip := g.inproc(t, "1.0.0")
	// The mirror flips one byte of every target.
	s.setIntercept(func(w http.ResponseWriter, req *http.Request) bool {
		if !strings.HasPrefix(req.URL.Path, "/targets/") {
			return false
		}
		b, err := os.ReadFile(filepath.Join(r.Dir, filepath.FromSlash(req.URL.Path)))
		if err != nil {
			http.NotFound(w, req)
			return true
		}
		b[len(b)/2] ^= 1
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		w.Write(b)
		return true
	})
	err := apply(t, ip)
	if !errors.Is(err, ota.ErrTargetHash) {
		t.Fatalf("err = %v, want ErrTargetHash", err)
	}
	t.Log(err)
	assertNothingInstalled(t, g, ip)
}

func TestAttackDeltaResultMismatch(t *testing.T) {
	r := newTestRepo(t)
	// A delta to 1.2.0 labelled as applying to A, but whose content is
	// the A→B patch: validly signed, yet its result cannot match 1.2.0.
	r.addVersion(t, "1.2.0", 0)
	full := r.Targets.Targets[ota.FullTargetName(fixture.platform, "1.2.0")]
	fc, _ := ota.ParseCustom(full)
	patch := r.TargetFilePath(ota.DeltaTargetName(fixture.platform, "1.0.0", "1.1.0"))
	ac, _ := ota.ParseCustom(r.Targets.Targets[ota.FullTargetName(fixture.platform, "1.0.0")])
	dc := *fc
	dc.Kind, dc.From, dc.FromSHA256 = "delta", "1.0.0", ac.SHA256
	if _, err := r.AddTarget(ota.DeltaTargetName(fixture.platform, "1.0.0", "1.2.0"), patch, dc); err != nil {
		t.Fatal(err)
	}
	if err := r.Publish(); err != nil {
		t.Fatal(err)
	}
	s := newServer(t, r.Dir)
	g := newGateway(t, "1.0.0", s.URL, r.root)
	ip := g.inproc(t, "1.0.0")
	plan, err := ip.Check(context.Background())
	if err != nil || plan.Kind != "delta" || plan.Version != "1.2.0" {
		t.Fatalf("plan %+v, %v", plan, err)
	}
	err = apply(t, ip)
	if !errors.Is(err, ota.ErrDeltaResult) {
		t.Fatalf("err = %v, want ErrDeltaResult", err)
	}
	t.Log(err)
	assertNothingInstalled(t, g, ip)
	// The next attempt takes the full binary and installs it.
	plan, err = ip.Check(context.Background())
	if err != nil || plan.Kind != "full" {
		t.Fatalf("after a bad delta: plan %+v, %v", plan, err)
	}
	if err := apply(t, ip); err != nil {
		t.Fatal(err)
	}
	ip.waitRestart(t)
	if v := g.installedVersion(t); v != "1.2.0" {
		t.Fatalf("installed %s", v)
	}
}

// An update check with nothing new costs at most 2 small requests.
func TestCheckNothingNewCost(t *testing.T) {
	r := newTestRepo(t)
	s := newServer(t, r.Dir)
	g := newGateway(t, "1.1.0", s.URL, r.root)
	ip := g.inproc(t, "1.1.0")
	if plan, err := ip.Check(context.Background()); err != nil || plan != nil {
		t.Fatalf("first check: %+v %v", plan, err)
	}
	s.requests.Store(0)
	s.bytes.Store(0)
	if plan, err := ip.Check(context.Background()); err != nil || plan != nil {
		t.Fatalf("second check: %+v %v", plan, err)
	}
	req, n := s.requests.Load(), s.bytes.Load()
	t.Logf("nothing-new check: %d requests, %d bytes", req, n)
	if req > 2 || n > 10<<10 {
		t.Fatalf("nothing-new check cost %d requests, %d bytes; want <= 2, <= 10 KiB", req, n)
	}
}
