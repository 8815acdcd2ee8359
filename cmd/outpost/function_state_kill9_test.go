//go:build functions

package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/outpost-edge/outpost/internal/function"
)

// kvModule is internal/function's kvGuest(): it stores its whole encoded
// input under key "k" of its device.
const kvModule = "0061736d0100000001220660017f017f60027f7f017f60027f7f0060047f7f7f7f017f60037f7f7f00600000025205076f7574706f737406726573756c740002076f7574706f7374046661696c0002076f7574706f73740973746174655f7075740003076f7574706f737404656d69740003076f7574706f7374036c6f6700040304030001010503010001073e04066d656d6f727902000d6f7574706f73745f616c6c6f630005126f7574706f73745f6f6e5f6d65737361676500060c6f7574706f73745f63616c6c00070a1c0305004180080b0f00410041012000200110021a41000b040041000b0b07010041000b016b"

// TestFunctionStateSurvivesAgentKill9: a real `outpost run` with a
// function that stores each device's latest message in its state is
// killed with SIGKILL 4 times while 4 devices publish QoS 1 sequences; the
// state file then holds, for every device, at least the last sequence
// number the agent acknowledged (the PUBACK waits for the state fsync).
func TestFunctionStateSurvivesAgentKill9(t *testing.T) {
	dir := t.TempDir()
	fdir := filepath.Join(dir, "functions", "kv-1")
	if err := os.MkdirAll(fdir, 0o755); err != nil {
		t.Fatal(err)
	}
	wasm, _ := hex.DecodeString(kvModule)
	_ = os.WriteFile(filepath.Join(fdir, "kv.wasm"), wasm, 0o644)
	_ = os.WriteFile(filepath.Join(fdir, "function.yaml"), []byte("name: kv\nversion: 1\nmodule: kv.wasm\ntriggers: [{from: [sensors/#], to: [republish]}]\n"), 0o644)
	mqttAddr, httpAddr := freePort(t), freePort(t)
	cfg := fmt.Sprintf(`node_id: gw
data_dir: %[1]s/data
telemetry: {address: "%[2]s"}
broker:
  listeners: [{type: tcp, address: "%[3]s"}]
  allow_anonymous: true
  anonymous_acl: [{topic: "#", access: all}]
functions:
  enabled: true
  allow_unsigned: true
  dir: %[1]s/functions
`, dir, httpAddr, mqttAddr)
	path := filepath.Join(dir, "outpost.yaml")
	_ = os.WriteFile(path, []byte(cfg), 0o600)
	const devices = 4
	acked := make([]int, devices)
	next := make([]int, devices)
	for d := range next {
		next[d] = 1
	}
	total := 0
	for it := 0; it < 4; it++ {
		agent := startOutpost(t, path, httpAddr)
		ctx, stop := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		var mu sync.Mutex
		for d := 0; d < devices; d++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := dialQoS1(ctx, mqttAddr, fmt.Sprintf("dev-%d", d))
				if err != nil {
					return
				}
				for ctx.Err() == nil {
					seq := next[d]
					r, err := c.Publish(ctx, &paho.Publish{Topic: fmt.Sprintf("sensors/dev-%d", d), QoS: 1, Payload: []byte(strconv.Itoa(seq))})
					if err != nil || r == nil || r.ReasonCode != 0 {
						return // the agent died mid-publish: not acknowledged
					}
					mu.Lock()
					acked[d] = seq
					total++
					mu.Unlock()
					next[d]++
				}
			}()
		}
		time.Sleep(time.Duration(300+rand.IntN(600)) * time.Millisecond)
		_ = agent.Process.Kill() // SIGKILL
		_ = agent.Wait()
		stop()
		wg.Wait()
		for d := range next {
			next[d]++ // the in-flight one may or may not be stored
		}
	}
	if total < 20 {
		t.Fatalf("only %d messages acknowledged in 4 runs", total)
	}
	st, err := function.OpenState(filepath.Join(dir, "data", "functions-state", "kv.state"), function.DefaultState)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for d := range acked {
		v, ok := st.Get(fmt.Sprintf("dev-%d", d), "k")
		have := 0
		if ok {
			in, err := function.DecodeInput(v)
			if err != nil {
				t.Fatal(err)
			}
			have, _ = strconv.Atoi(string(in.Payload))
		}
		if have < acked[d] {
			t.Errorf("dev-%d: state holds seq %d, %d was acknowledged: lost", d, have, acked[d])
		}
	}
	if t.Failed() {
		return
	}
	t.Logf("4 kills, %d acknowledged messages; every device's state at or after its last acknowledged one", total)
}
