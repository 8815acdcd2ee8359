//go:build functions

package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/outpost-edge/outpost/internal/fleet/client"
	"github.com/outpost-edge/outpost/internal/fleet/fleettest"
	"github.com/outpost-edge/outpost/internal/fleet/server"
	"github.com/outpost-edge/outpost/internal/function"
	"github.com/outpost-edge/outpost/internal/ota/release"
	"github.com/outpost-edge/outpost/internal/ota/tuf"
)

// TestFunctionFleetDelivery: a function published into the release
// repository the fleet server hosts reaches the gateway through a fleet
// object of kind function: fetched over mTLS, verified through the TUF
// chain, loaded, and run on messages; a new version replaces it (hot
// swap, the old directory removed); a tampered module and an unpublished
// version are refused with the reason in the gateway's status while the
// running version keeps running; deleting the object unloads it.
func TestFunctionFleetDelivery(t *testing.T) {
	dir := t.TempDir()
	repoDir, keysDir := filepath.Join(dir, "repo"), filepath.Join(dir, "keys")
	if _, err := tuf.InitRepo(repoDir, keysDir, true, nil); err != nil {
		t.Fatal(err)
	}
	wasm := buildAnomaly(t)
	// publish adds version v (alerts under prefix) as the publisher does
	// (outpost functions publish): two targets, then sign.
	publish := func(v int, prefix string) {
		t.Helper()
		src := filepath.Join(dir, fmt.Sprintf("src-%d", v))
		os.MkdirAll(src, 0o755)
		os.WriteFile(filepath.Join(src, function.ManifestFile), []byte(fmt.Sprintf(anomalyManifest, v, prefix, "")), 0o644)
		os.WriteFile(filepath.Join(src, "anomaly.wasm"), wasm, 0o644)
		r, err := release.Open(repoDir, keysDir)
		if err != nil {
			t.Fatal(err)
		}
		man := &function.Manifest{Name: "anomaly", Version: v}
		for _, f := range []string{function.ManifestFile, "anomaly.wasm"} {
			if _, err := r.AddTarget(function.TargetName(man, f), filepath.Join(src, f), nil); err != nil {
				t.Fatal(err)
			}
		}
		if err := release.Sign(r); err != nil {
			t.Fatal(err)
		}
	}
	publish(1, "alerts/v1/")

	srv := fleettest.Start(t, t.TempDir(), "", server.Options{OTADir: repoDir})
	fleetDir := filepath.Join(dir, "fleet")
	if err := client.Enroll(context.Background(), client.EnrollOptions{Server: srv.URL, Token: srv.Token(t, map[string]string{"site": "a"}, "1h"),
		CAPEM: srv.CA, ID: "gw1", Dir: fleetDir}); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "outpost.yaml")
	cfg := fmt.Sprintf(`node_id: gw1
data_dir: %[1]s/data
telemetry: {address: "127.0.0.1:0"}
broker:
  listeners: [{type: tcp, address: "127.0.0.1:0"}]
  users:
    - {username: dev, password_hash: "%[2]s", acl: [{topic: "#", access: all}]}
functions:
  enabled: true
  dir: %[1]s/functions
  trust_root: %[3]s
  watch: 50ms
  cache_dir: %[4]s
fleet: {dir: %[5]s, server: "%[6]s", reconnect_max: 1s}
`, dir, aliceHash, filepath.Join(repoDir, "metadata", "1.root.json"), filepath.Join(os.TempDir(), "outpost-function-test-cache"), fleetDir, srv.URL)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	a, logs := startAgent(t, cfgPath)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log:\n%s\nserver log:\n%s", logs, srv.Logs)
		}
	})
	fdir := filepath.Join(dir, "functions")
	running := func() string {
		st, _ := a.fns.registry().Statuses()
		var out []string
		for _, s := range st {
			out = append(out, fmt.Sprintf("%s@%d:%s", s.Name, s.Version, filepath.Base(s.Dir)))
		}
		return strings.Join(out, ",")
	}
	waitRunning := func(want string) {
		t.Helper()
		fleettest.Eventually(t, 60*time.Second, "running "+want, func() bool { return running() == want })
	}
	put := func(v int) {
		t.Helper()
		srv.MustDo(t, "PUT", "/api/v1/objects/function/anomaly", map[string]any{"spec": map[string]any{"function": "anomaly", "version": v}}, 200, nil)
	}
	condition := func(want string) {
		t.Helper()
		fleettest.Eventually(t, 60*time.Second, "status "+want, func() bool {
			_, b := srv.Do(t, srv.Admin, "GET", "/api/v1/gateways/gw1", nil)
			return strings.Contains(string(b), want)
		})
	}

	addr := a.Broker.Addr("tcp")
	sub := dialDevice(t, addr, "watcher")
	if _, err := sub.c.Subscribe(t.Context(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "alerts/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	d1 := dialDevice(t, addr, "d1")
	alert := func(want string) {
		t.Helper()
		for i := 0; i < 4; i++ {
			d1.publish(t, "sensors/d1/vibration", `{"temp":20,"vibration":1}`)
		}
		d1.publish(t, "sensors/d1/vibration", `{"temp":95,"vibration":4}`)
		select {
		case m := <-sub.msgs:
			if m.Topic != want {
				t.Fatalf("alert on %s, want %s", m.Topic, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no alert, want %s", want)
		}
	}

	put(1)
	waitRunning("anomaly@1:fleet-anomaly-v1")
	alert("alerts/v1/d1")

	// Version 2: loaded next to 1, then 1 goes.
	publish(2, "alerts/v2/")
	put(2)
	waitRunning("anomaly@2:fleet-anomaly-v2")
	if _, err := os.Stat(filepath.Join(fdir, "fleet-anomaly-v1")); !os.IsNotExist(err) {
		t.Fatalf("version 1's directory is still there: %v", err)
	}
	alert("alerts/v2/d1")

	// Version 3 published, then its module altered on the server: the
	// download does not match the signed hash; 2 keeps running.
	publish(3, "alerts/v3/")
	mods, _ := filepath.Glob(filepath.Join(repoDir, "targets", "functions", "anomaly", "3", "*.anomaly.wasm"))
	if len(mods) != 1 {
		t.Fatalf("published module files: %v", mods)
	}
	bad := append([]byte(nil), wasm...)
	bad[len(bad)-1] ^= 0xff // same length, other bytes
	if err := os.WriteFile(mods[0], bad, 0o644); err != nil {
		t.Fatal(err)
	}
	put(3)
	condition("does not match its signed metadata")
	if got := running(); got != "anomaly@2:fleet-anomaly-v2" {
		t.Fatalf("after the tampered version: running %s", got)
	}
	alert("alerts/v2/d1")

	// A version nobody published.
	put(9)
	condition("functions/anomaly/9/function.yaml is not in the fleet server's signed targets")
	if got := running(); got != "anomaly@2:fleet-anomaly-v2" {
		t.Fatalf("after the unpublished version: running %s", got)
	}

	// Deleting the object unloads the function.
	srv.MustDo(t, "DELETE", "/api/v1/objects/function/anomaly", nil, 200, nil)
	// (the registry may unload it as soon as the manifest is gone, while
	// the directory is still being removed)
	fleettest.Eventually(t, 60*time.Second, "unloaded and removed", func() bool {
		left, _ := fleetFunctionDirs(fdir, "anomaly")
		return running() == "" && len(left) == 0
	})
}
