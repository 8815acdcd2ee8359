//go:build functions

package agent

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/outpost-edge/outpost/internal/function"
	"github.com/outpost-edge/outpost/internal/module"
	"github.com/outpost-edge/outpost/internal/ota/tuf"
)

// tagModuleHex is internal/function's tagGuest(1): it emits its encoded
// input to out/v1.
const tagModuleHex = "0061736d0100000001220660017f017f60027f7f017f60027f7f0060047f7f7f7f017f60037f7f7f00600000025205076f7574706f737406726573756c740002076f7574706f7374046661696c0002076f7574706f73740973746174655f7075740003076f7574706f737404656d69740003076f7574706f7374036c6f6700040304030001010503010001073e04066d656d6f727902000d6f7574706f73745f616c6c6f630005126f7574706f73745f6f6e5f6d65737361676500060c6f7574706f73745f63616c6c00070a220305004180080b0f00410041062000200110031a41000b0a0041104109100041000b0b1f010041000b196f75742f76310000000000000000000002000000000000f03f"

type fnKnobs struct {
	dir, watch string
	warm       int
}

func (k fnKnobs) config(dir string) string {
	return fmt.Sprintf(`node_id: gw
data_dir: %[1]s/data
telemetry: {address: "127.0.0.1:0"}
broker:
  listeners: [{type: tcp, address: "127.0.0.1:0"}]
  allow_anonymous: true
  anonymous_acl: [{topic: "#", access: all}]
functions:
  enabled: true
  allow_unsigned: true
  dir: %[2]s
  watch: %[3]s
  warm: %[4]d
  cache_dir: %[1]s/cache
`, dir, k.dir, k.watch, k.warm)
}

func writeTagFn(t *testing.T, dir, name, manifestTail string) {
	t.Helper()
	wasm, _ := hex.DecodeString(tagModuleHex)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tag.wasm"), wasm, 0o644); err != nil {
		t.Fatal(err)
	}
	man := fmt.Sprintf("name: %s\nversion: 1\nmodule: tag.wasm\n%s", name, manifestTail)
	if err := os.WriteFile(filepath.Join(dir, function.ManifestFile), []byte(man), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestFunctionsReconfigureInPlace changes the functions section of a
// running agent (watch, warm, dir) and adds, changes and removes another
// function while a device publishes a QoS 1 sequence into an unchanged
// function: every acknowledged message is run exactly once (no gap, no
// duplicate), and the registry is the same one throughout (no restart).
func TestFunctionsReconfigureInPlace(t *testing.T) {
	dir := t.TempDir()
	dirA, dirB := filepath.Join(dir, "fa"), filepath.Join(dir, "fb")
	writeTagFn(t, filepath.Join(dirA, "tag-1"), "tag", "triggers: [{from: [in/#], to: [republish]}]\n")
	k := fnKnobs{dir: dirA, watch: "2s", warm: 1}
	cfgPath := filepath.Join(dir, "outpost.yaml")
	if err := os.WriteFile(cfgPath, []byte(k.config(dir)), 0o644); err != nil {
		t.Fatal(err)
	}
	a, logs := startAgent(t, cfgPath)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log:\n%s", logs)
		}
	})
	reg0 := a.fns.registry()
	addr := a.Broker.Addr("tcp")

	var mu sync.Mutex
	seen := map[int]int{}
	watcher := dialAnon(t, addr, "watcher", func(p *paho.Publish) {
		in, err := function.DecodeInput(p.Payload)
		if err != nil {
			t.Errorf("output %s: %v", p.Topic, err)
			return
		}
		n, _ := strconv.Atoi(string(in.Payload))
		mu.Lock()
		seen[n]++
		mu.Unlock()
	})
	if _, err := watcher.Subscribe(t.Context(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "out/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}

	dev := dialAnon(t, addr, "dev", nil)
	var acked atomic.Int64
	stop := make(chan struct{})
	pubDone := make(chan error, 1)
	go func() {
		for i := 1; i <= 200000; i++ {
			select {
			case <-stop:
				pubDone <- nil
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			r, err := dev.Publish(ctx, &paho.Publish{Topic: "in/dev", QoS: 1, Payload: []byte(strconv.Itoa(i))})
			cancel()
			if err != nil || (r != nil && r.ReasonCode != 0) {
				pubDone <- fmt.Errorf("publish %d: %v %v", i, err, r)
				return
			}
			acked.Store(int64(i))
		}
		pubDone <- nil
	}()
	// flowing waits until n more messages were acknowledged.
	flowing := func(n int64) {
		t.Helper()
		from := acked.Load()
		deadline := time.Now().Add(20 * time.Second)
		for acked.Load() < from+n {
			if time.Now().After(deadline) {
				t.Fatalf("publishing stalled at %d", acked.Load())
			}
			time.Sleep(time.Millisecond)
		}
	}
	apply := func(what string) {
		t.Helper()
		if err := os.WriteFile(cfgPath, []byte(k.config(dir)), 0o644); err != nil {
			t.Fatal(err)
		}
		a.Reload(context.Background())
		flowing(50)
	}
	loaded := func(name string, want bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			st, _ := a.fns.registry().Statuses()
			has := false
			for _, s := range st {
				has = has || s.Name == name
			}
			if has == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("function %s loaded = %v, want %v", name, has, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	flowing(100)
	k.watch = "50ms"
	apply("watch")
	k.warm = 3
	apply("warm")
	writeTagFn(t, filepath.Join(dirA, "other-1"), "other", "triggers: [{from: [other/#], to: [republish]}]\nlimits: {timeout: 100ms}\n")
	loaded("other", true)
	flowing(50)
	writeTagFn(t, filepath.Join(dirA, "other-1"), "other", "triggers: [{from: [more/#], to: [republish]}]\nlimits: {timeout: 300ms, instances: 2}\n")
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, _ := a.fns.registry().Statuses()
		done := false
		for _, s := range st {
			done = done || (s.Name == "other" && s.Limits.Timeout.D() == 300*time.Millisecond && s.Triggers[0].From[0] == "more/#")
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("other's new limits and triggers never applied")
		}
		time.Sleep(5 * time.Millisecond)
	}
	flowing(50)
	if err := os.RemoveAll(filepath.Join(dirA, "other-1")); err != nil {
		t.Fatal(err)
	}
	loaded("other", false)
	flowing(50)
	writeTagFn(t, filepath.Join(dirB, "tag-1"), "tag", "triggers: [{from: [in/#], to: [republish]}]\n")
	k.dir = dirB
	apply("dir")
	if st, _ := a.fns.registry().Statuses(); len(st) != 1 || st[0].Dir != filepath.Join(dirB, "tag-1") {
		t.Fatalf("after the dir change: %+v", st)
	}
	close(stop)
	if err := <-pubDone; err != nil {
		t.Fatal(err)
	}
	last := int(acked.Load())
	deadline = time.Now().Add(15 * time.Second)
	for {
		mu.Lock()
		missing, dups := 0, 0
		for i := 1; i <= last; i++ {
			if seen[i] == 0 {
				missing++
			}
			if seen[i] > 1 {
				dups++
			}
		}
		mu.Unlock()
		if dups > 0 {
			t.Fatalf("%d of %d messages run more than once", dups, last)
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d acknowledged messages never reached the function", missing, last)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if a.fns.registry() != reg0 {
		t.Error("the functions registry was replaced: the module restarted")
	}
	t.Logf("%d messages, 3 config changes and 3 function changes: each run once", last)
}

// TestFunctionsTUFChain: with functions.tuf the agent verifies functions
// through the repository metadata in DIR/.tuf: a listed version runs, and
// after the repository moved to version 2, replaying the older metadata
// with version 1 is refused as a rollback (health degraded, v1 not run).
func TestFunctionsTUFChain(t *testing.T) {
	dir := t.TempDir()
	repo, err := tuf.InitRepo(filepath.Join(dir, "repo"), filepath.Join(dir, "keys"), false, nil)
	if err != nil {
		t.Fatal(err)
	}
	root, err := os.ReadFile(filepath.Join(repo.MetaDir(), "root.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "root.json"), root, 0o644); err != nil {
		t.Fatal(err)
	}
	fdir := filepath.Join(dir, "functions")
	publish := func(v int, drop int) {
		t.Helper()
		vdir := filepath.Join(fdir, fmt.Sprintf("tag-%d", v))
		writeTagFn(t, vdir, "tag", "triggers: [{from: [in/#], to: [republish]}]\n")
		man := filepath.Join(vdir, function.ManifestFile)
		b, _ := os.ReadFile(man)
		_ = os.WriteFile(man, []byte(strings.Replace(string(b), "version: 1", fmt.Sprintf("version: %d", v), 1)), 0o644)
		for _, f := range []string{function.ManifestFile, "tag.wasm"} {
			if _, err := repo.AddTarget(fmt.Sprintf("functions/tag/%d/%s", v, f), filepath.Join(vdir, f), nil); err != nil {
				t.Fatal(err)
			}
			delete(repo.Targets.Targets, fmt.Sprintf("functions/tag/%d/%s", drop, f))
		}
		if err := repo.Publish(); err != nil {
			t.Fatal(err)
		}
	}
	copyMeta := func(from string) {
		t.Helper()
		to := filepath.Join(fdir, function.ChainDir)
		_ = os.RemoveAll(to)
		if err := os.MkdirAll(to, 0o755); err != nil {
			t.Fatal(err)
		}
		ents, _ := os.ReadDir(from)
		for _, e := range ents {
			b, err := os.ReadFile(filepath.Join(from, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			_ = os.WriteFile(filepath.Join(to, e.Name()), b, 0o644)
		}
	}
	publish(1, 0)
	old := filepath.Join(dir, "old-meta")
	if err := os.Rename(repo.MetaDir(), old); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(repo.MetaDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	copyMeta(old)
	// Keep the repository whole: put its metadata back.
	ents, _ := os.ReadDir(old)
	for _, e := range ents {
		b, _ := os.ReadFile(filepath.Join(old, e.Name()))
		_ = os.WriteFile(filepath.Join(repo.MetaDir(), e.Name()), b, 0o644)
	}
	cfgPath := filepath.Join(dir, "outpost.yaml")
	cfg := fmt.Sprintf(`node_id: gw
data_dir: %[1]s/data
telemetry: {address: "127.0.0.1:0"}
broker:
  listeners: [{type: tcp, address: "127.0.0.1:0"}]
  allow_anonymous: true
  anonymous_acl: [{topic: "#", access: all}]
functions:
  enabled: true
  tuf: true
  trust_root: %[1]s/root.json
  dir: %[1]s/functions
  watch: 1h
`, dir)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	a, logs := startAgent(t, cfgPath)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log:\n%s", logs)
		}
	})
	versions := func() []int {
		st, _ := a.fns.registry().Statuses()
		var v []int
		for _, s := range st {
			if !s.Signed {
				t.Errorf("%s v%d not marked signed", s.Name, s.Version)
			}
			v = append(v, s.Version)
		}
		return v
	}
	if v := versions(); len(v) != 1 || v[0] != 1 {
		t.Fatalf("at start: versions %v", v)
	}
	publish(2, 1)
	copyMeta(repo.MetaDir())
	ctx := context.Background()
	if err := a.fns.registry().Reload(ctx); !errors.Is(err, function.ErrTampered) {
		t.Fatalf("v1 dropped from targets: %v", err)
	}
	if v := versions(); len(v) != 1 || v[0] != 2 {
		t.Fatalf("after v2: versions %v", v)
	}
	copyMeta(old)
	_ = os.RemoveAll(filepath.Join(fdir, "tag-2"))
	if err := a.fns.registry().Reload(ctx); !errors.Is(err, tuf.ErrRollback) {
		t.Fatalf("replay: %v, want rollback", err)
	}
	if v := versions(); len(v) != 0 {
		t.Fatalf("after the replay: versions %v run", v)
	}
	if h := a.fns.Health(); h.State != module.StateDegraded || !strings.Contains(h.Detail, "rollback") {
		t.Errorf("health after the replay: %+v", h)
	}
}
