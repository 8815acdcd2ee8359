package function

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/config"
	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/ota/tuf"
)

// tagGuest emits the whole encoded input to topic "out/vN" and returns N
// from call.
func tagGuest(n int) []byte {
	tp := fmt.Sprintf("out/v%d", n)
	data := append([]byte(tp), make([]byte, 16-len(tp))...)
	data = AppendValue(data, Value{Kind: KindNum, Num: float64(n)})
	onMsg := cat(i32c(0), i32c(int32(len(tp))), lget(0), lget(1), call(fnEmit), opDrop, i32c(0))
	callB := cat(i32c(16), i32c(9), call(fnResult), i32c(0))
	return guest(onMsg, callB, data)
}

func writeFn(t testing.TB, dir string, version int, devices string, wasm []byte) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	man := fmt.Sprintf("name: tag\nversion: %d\nmodule: tag.wasm\nentry: {callable: true}\ntriggers:\n  - {from: [\"in/#\"], to: [republish]}\n", version)
	if devices != "" {
		man += "devices: " + devices + "\n"
	}
	// Write the module first, the manifest last (a half-written pair is
	// still consistent for a reload in between: both files are checked).
	if err := os.WriteFile(filepath.Join(dir, "tag.wasm"), wasm, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ManifestFile), []byte(man), 0o644); err != nil {
		t.Fatal(err)
	}
}

// recSink records outputs.
type recSink struct {
	mu   sync.Mutex
	msgs []*message.Message
}

func (s *recSink) Name() string { return "rec" }
func (s *recSink) Deliver(_ context.Context, m *message.Message) error {
	s.mu.Lock()
	s.msgs = append(s.msgs, m)
	s.mu.Unlock()
	return nil
}
func (s *recSink) take() []*message.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.msgs
	s.msgs = nil
	return m
}

func newReg(t testing.TB, dir string, trust *Trust, labels map[string]map[string]string) (*Registry, *recSink) {
	t.Helper()
	sink := &recSink{}
	r := NewRegistry(RegistryOptions{Runtime: newRT(t), Dir: dir, Trust: trust,
		Sinks:  func(string) (message.Sink, error) { return sink, nil },
		Labels: func(d string) map[string]string { return labels[d] }})
	t.Cleanup(func() { _ = r.Close(context.Background()) })
	return r, sink
}

func deliver(t testing.TB, r *Registry, dev, payload string) {
	t.Helper()
	if err := r.Deliver(context.Background(), &message.Message{Topic: "in/" + dev, DeviceID: dev, Payload: []byte(payload)}); err != nil {
		t.Fatal(err)
	}
}

func outTopics(ms []*message.Message) []string {
	var s []string
	for _, m := range ms {
		s = append(s, m.DeviceID+":"+m.Topic)
	}
	return s
}

func TestGrayReleaseByLabel(t *testing.T) {
	dir := t.TempDir()
	writeFn(t, filepath.Join(dir, "tag-1"), 1, "", tagGuest(1))
	writeFn(t, filepath.Join(dir, "tag-2"), 2, "{canary: \"true\"}", tagGuest(2))
	r, sink := newReg(t, dir, nil, map[string]map[string]string{"d1": {"canary": "true"}, "d2": {"canary": "false"}})
	if err := r.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	deliver(t, r, "d1", "a")
	deliver(t, r, "d2", "b")
	deliver(t, r, "d3", "c")
	if got := strings.Join(outTopics(sink.take()), " "); got != "d1:out/v2 d2:out/v1 d3:out/v1" {
		t.Fatalf("outputs %s", got)
	}
	// Rule calls pick the same version per device.
	for dev, want := range map[string]float64{"d1": 2, "d2": 1} {
		if v, err := r.Call(context.Background(), "tag", dev, nil); err != nil || v.Num != want {
			t.Fatalf("Call for %s = %+v, %v; want %v", dev, v, err, want)
		}
	}
	// Removing the canary version rolls d1 back.
	if err := os.RemoveAll(filepath.Join(dir, "tag-2")); err != nil {
		t.Fatal(err)
	}
	if err := r.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	deliver(t, r, "d1", "a")
	if got := strings.Join(outTopics(sink.take()), " "); got != "d1:out/v1" {
		t.Fatalf("after rollback %s", got)
	}
}

// A bad new version is refused with its position; the old one keeps running.
func TestReloadRefusesBadVersion(t *testing.T) {
	dir := t.TempDir()
	fdir := filepath.Join(dir, "tag")
	writeFn(t, fdir, 1, "", tagGuest(1))
	r, sink := newReg(t, dir, nil, nil)
	if err := r.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	cases := []struct{ name, manifest, wasm, want string }{
		{"unknown key", "name: tag\nversion: 2\nmodule: tag.wasm\ntriggers: [{from: [in/#]}]\nlimtis: {}\n", "", "function.yaml:5:1"},
		{"bad limit", "name: tag\nversion: 2\nmodule: tag.wasm\ntriggers: [{from: [in/#]}]\nlimits: {timeout: 5m}\n", "", "function.yaml:5:19: limits.timeout"},
		{"bad filter", "name: tag\nversion: 2\nmodule: tag.wasm\ntriggers: [{from: [in/#/x]}]\n", "", "triggers[0].from[0]"},
		{"malformed wasm", "", "garbage", "bad module"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.manifest != "" {
				if err := os.WriteFile(filepath.Join(fdir, ManifestFile), []byte(c.manifest), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if c.wasm != "" {
				writeFn(t, fdir, 2, "", []byte(c.wasm))
			}
			err := r.Reload(context.Background())
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to contain %q", err, c.want)
			}
			deliver(t, r, "d1", "x")
			if got := strings.Join(outTopics(sink.take()), " "); got != "d1:out/v1" {
				t.Fatalf("after a refused reload: %s", got)
			}
			if _, p := r.Statuses(); len(p) != 1 {
				t.Fatalf("problems %+v", p)
			}
			writeFn(t, fdir, 1, "", tagGuest(1))
		})
	}
}

// Swapping versions under concurrent load: every message is run by
// exactly one version (no loss, no duplicate).
func TestHotSwapNoLossNoDup(t *testing.T) {
	dir := t.TempDir()
	fdir := filepath.Join(dir, "tag")
	// The per-invocation timeout is wall-clock time: at a load average
	// of 30 on 2 cores a trivial invocation descheduled for 100 ms (the
	// default) was stopped as a runaway and its message counted as a
	// timeout, not emitted ("message 0-3816 run 0 times"). Lost messages
	// here must mean a swap bug, so the limit is out of the way.
	writeSwapFn := func(v int) {
		writeFn(t, fdir, v, "", tagGuest(v))
		f, err := os.OpenFile(filepath.Join(fdir, ManifestFile), os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteString("limits: {timeout: 60s}\n"); err != nil {
			t.Fatal(err)
		}
	}
	writeSwapFn(1)
	r, sink := newReg(t, dir, nil, nil)
	if err := r.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Workers send until the swaps are done (bounded in count), so the
	// swaps always happen under load however fast the machine is.
	const workers, maxPerWorker, swapsWanted = 4, 20000, 5
	var stop atomic.Bool
	sent := make([]int, workers)
	var wg sync.WaitGroup
	started := make(chan struct{}, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < maxPerWorker && !stop.Load(); i++ {
				deliver(t, r, "d", fmt.Sprintf("%d-%d", w, i))
				sent[w]++
				if i == 10 {
					started <- struct{}{}
				}
			}
		}(w)
	}
	for w := 0; w < workers; w++ {
		<-started
	}
	for v := 2; v < 2+swapsWanted; v++ {
		writeSwapFn(v)
		if err := r.Reload(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	seen := map[string]int{}
	versions := map[string]bool{}
	for _, m := range sink.take() {
		in, err := DecodeInput(m.Payload)
		if err != nil {
			t.Fatal(err)
		}
		seen[string(in.Payload)]++
		versions[m.Topic] = true
	}
	total := 0
	for w := 0; w < workers; w++ {
		total += sent[w]
		for i := 0; i < sent[w]; i++ {
			if n := seen[fmt.Sprintf("%d-%d", w, i)]; n != 1 {
				t.Fatalf("message %d-%d run %d times", w, i, n)
			}
		}
	}
	if len(seen) != total {
		t.Fatalf("%d distinct outputs for %d messages", len(seen), total)
	}
	t.Logf("%d messages across %d swaps, outputs from %d versions", total, swapsWanted, len(versions))
	if len(versions) < 2 {
		t.Fatalf("the test did not swap under load (outputs from %d versions)", len(versions))
	}
}

// testRoot returns a trust root whose targets role is key.
func testRoot(t testing.TB, key ed25519.PrivateKey) *Trust {
	rootKey := tuf.GenerateKey()
	rk, tk := tuf.NewKey(rootKey.Public().(ed25519.PublicKey)), tuf.NewKey(key.Public().(ed25519.PublicKey))
	root := &tuf.Root{Common: tuf.Common{Type: tuf.RoleRoot, SpecVersion: tuf.SpecVersion, Version: 1, Expires: time.Now().Add(time.Hour)},
		Keys: map[string]*tuf.Key{rk.ID(): rk, tk.ID(): tk},
		Roles: map[string]*tuf.RoleKeys{tuf.RoleRoot: {KeyIDs: []string{rk.ID()}, Threshold: 1}, tuf.RoleTargets: {KeyIDs: []string{tk.ID()}, Threshold: 1},
			tuf.RoleSnapshot: {KeyIDs: []string{rk.ID()}, Threshold: 1}, tuf.RoleTimestamp: {KeyIDs: []string{rk.ID()}, Threshold: 1}}}
	raw, err := tuf.Sign(root, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "root.json")
	if err := os.WriteFile(p, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	tr, err := LoadTrust(p)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func TestSignatures(t *testing.T) {
	key := tuf.GenerateKey()
	trust := testRoot(t, key)
	dir := t.TempDir()
	fdir := filepath.Join(dir, "tag")
	writeFn(t, fdir, 1, "", tagGuest(1))
	r, sink := newReg(t, dir, trust, nil)
	if err := r.Reload(context.Background()); !errors.Is(err, ErrUnsigned) {
		t.Fatalf("unsigned: %v", err)
	}
	if err := Sign(fdir, time.Hour, key); err != nil {
		t.Fatal(err)
	}
	if err := r.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	deliver(t, r, "d", "x")
	if got := len(sink.take()); got != 1 {
		t.Fatalf("%d outputs", got)
	}
	cases := []struct {
		name  string
		setup func()
		want  error
	}{
		{"tampered module", func() { writeFn(t, fdir, 1, "", tagGuest(7)) }, ErrTampered},
		{"tampered manifest", func() {
			_ = Sign(fdir, time.Hour, key)
			writeFn(t, fdir, 1, "{canary: \"x\"}", tagGuest(7))
		}, ErrTampered},
		{"other key", func() { writeFn(t, fdir, 2, "", tagGuest(2)); _ = Sign(fdir, time.Hour, tuf.GenerateKey()) }, tuf.ErrUnknownKey},
		{"expired", func() { _ = Sign(fdir, -time.Minute, key) }, tuf.ErrExpired},
		{"forged signature", func() {
			_ = Sign(fdir, time.Hour, key)
			b, _ := os.ReadFile(filepath.Join(fdir, SignatureFile))
			_ = os.WriteFile(filepath.Join(fdir, SignatureFile), []byte(strings.Replace(string(b), `"version": 1`, `"version": 9`, 1)), 0o644)
		}, tuf.ErrBadSignature},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.setup()
			if err := r.Reload(context.Background()); !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			deliver(t, r, "d", "x")
			if got := outTopics(sink.take()); len(got) != 1 || got[0] != "d:out/v1" {
				t.Fatalf("old version not running: %v", got)
			}
		})
	}
}

func FuzzManifest(f *testing.F) {
	f.Add([]byte("name: a\nversion: 1\nmodule: a.wasm\nentry: {callable: true}\n"))
	f.Add([]byte("name: a\nversion: 2\nmodule: a.wasm\ntriggers: [{from: [x/#], to: [republish]}]\nlimits: {memory: 1MiB, timeout: 5ms}\ndevices: {canary: [\"true\"]}\n"))
	f.Add([]byte("name: [\nversion"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseManifest("function.yaml", b)
		if err != nil {
			var ps config.Problems
			if !errors.As(err, &ps) || len(ps) == 0 {
				t.Fatalf("error %T %v is not config.Problems", err, err)
			}
			for _, p := range ps {
				if p.Pos.File != "function.yaml" || (p.Pos.Line < 1 && p.Path == "") {
					t.Fatalf("problem without a position: %v", p)
				}
			}
			return
		}
		if m.MemoryPages() == 0 || m.Limits.Instances < 1 || m.Name == "" {
			t.Fatalf("accepted an unusable manifest: %+v", m)
		}
	})
}

// A message that picked a version just before a swap closed it is run once,
// by the new version (deterministic form of the race TestHotSwapNoLossNoDup
// exercises under load).
func TestStaleSnapshotRunsOnNewVersion(t *testing.T) {
	dir := t.TempDir()
	fdir := filepath.Join(dir, "tag")
	writeFn(t, fdir, 1, "", tagGuest(1))
	r, sink := newReg(t, dir, nil, nil)
	if err := r.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	stale := r.snap.Load()
	writeFn(t, fdir, 2, "", tagGuest(2))
	if err := r.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := r.deliverFrom(context.Background(), &message.Message{Topic: "in/d", DeviceID: "d"}, stale); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(outTopics(sink.take()), " "); got != "d:out/v2" {
		t.Fatalf("outputs %q, want one from version 2", got)
	}
}

// Run (a rule's DO FUNCTION action) runs the function on any topic and
// returns its failure.
func TestRunAction(t *testing.T) {
	dir := t.TempDir()
	writeFn(t, filepath.Join(dir, "tag"), 1, "", tagGuest(1))
	r, sink := newReg(t, dir, nil, nil)
	if err := r.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := r.Runnable("tag"); err != nil {
		t.Fatal(err)
	}
	if err := r.Runnable("nope"); !errors.Is(err, ErrUnknownFunction) {
		t.Fatalf("Runnable(nope) = %v", err)
	}
	if err := r.Run(context.Background(), "tag", &message.Message{Topic: "rule/out", DeviceID: "d"}); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(outTopics(sink.take()), " "); got != "d:out/v1" {
		t.Fatalf("outputs %q", got)
	}
	// A trapping version: the error is returned.
	writeFn(t, filepath.Join(dir, "tag"), 2, "", guest(bodyTrap, bodyResult, num42))
	if err := r.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := r.Run(context.Background(), "tag", &message.Message{Topic: "rule/out", DeviceID: "d"}); !errors.Is(err, ErrTrap) {
		t.Fatalf("Run of a trapping function = %v", err)
	}
}

// Reconfigure keeps unchanged versions (same *version, no reload), a new
// trust root re-verifies every version and unloads what it refuses (the
// old version does not keep running then), and an empty Dir unloads all.
func TestReconfigure(t *testing.T) {
	ctx := context.Background()
	key := tuf.GenerateKey()
	dir := t.TempDir()
	fdir := filepath.Join(dir, "tag")
	writeFn(t, fdir, 1, "", tagGuest(1))
	if err := Sign(fdir, time.Hour, key); err != nil {
		t.Fatal(err)
	}
	r, sink := newReg(t, dir, testRoot(t, key), nil)
	if err := r.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	v1 := r.snap.Load().byName["tag"][0]
	if err := r.Reconfigure(ctx, Settings{Dir: dir, Trust: r.o.Trust, Warm: 2}); err != nil {
		t.Fatal(err)
	}
	if r.snap.Load().byName["tag"][0] != v1 {
		t.Fatal("an unchanged version was reloaded")
	}
	// The same key under another root: re-verified, reloaded, runs.
	if err := r.Reconfigure(ctx, Settings{Dir: dir, Trust: testRoot(t, key), Reverify: true}); err != nil {
		t.Fatal(err)
	}
	if r.snap.Load().byName["tag"][0] == v1 {
		t.Fatal("not re-verified")
	}
	deliver(t, r, "d", "x")
	if got := outTopics(sink.take()); len(got) != 1 {
		t.Fatalf("outputs %v", got)
	}
	// A root that does not trust the key: refused and unloaded.
	if err := r.Reconfigure(ctx, Settings{Dir: dir, Trust: testRoot(t, tuf.GenerateKey()), Reverify: true}); !errors.Is(err, tuf.ErrUnknownKey) {
		t.Fatalf("other root: %v", err)
	}
	if st, _ := r.Statuses(); len(st) != 0 {
		t.Fatalf("still loaded under a root that refuses it: %+v", st)
	}
	// Back to unsigned-accepting, then disabled.
	if err := r.Reconfigure(ctx, Settings{Dir: dir, Reverify: true}); err != nil {
		t.Fatal(err)
	}
	if st, _ := r.Statuses(); len(st) != 1 {
		t.Fatalf("not reloaded: %+v", st)
	}
	if err := r.Reconfigure(ctx, Settings{}); err != nil {
		t.Fatal(err)
	}
	if st, _ := r.Statuses(); len(st) != 0 {
		t.Fatalf("disabled but loaded: %+v", st)
	}
}
