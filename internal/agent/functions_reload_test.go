//go:build functions

package agent

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/outpost-edge/outpost/internal/function"
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
