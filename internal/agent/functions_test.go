//go:build functions

package agent

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/outpost-edge/outpost/internal/function"
	"github.com/outpost-edge/outpost/internal/ota/tuf"
)

// buildAnomaly compiles examples/functions/anomaly for GOOS=wasip1.
func buildAnomaly(t *testing.T) []byte {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	out := filepath.Join(t.TempDir(), "anomaly.wasm")
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(gobin, "build", "-trimpath", "-buildmode=c-shared", "-o", out, "./examples/functions/anomaly")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// writeSigned writes a function version directory and signs it.
func writeSigned(t *testing.T, dir, manifest string, wasm []byte, key ed25519.PrivateKey) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "anomaly.wasm"), wasm, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, function.ManifestFile), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := function.Sign(dir, time.Hour, key); err != nil {
		t.Fatal(err)
	}
}

// writeRoot writes a release root.json whose targets role is key.
func writeRoot(t *testing.T, path string, key ed25519.PrivateKey) {
	t.Helper()
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
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}
}

const anomalyManifest = `name: anomaly
version: %d
module: anomaly.wasm
entry: {callable: true}
triggers:
  - {from: ["sensors/+/vibration"], to: [republish]}
limits: {timeout: 500ms}
config: {alert_prefix: "%s"}
%s`

// The example function runs from a rule (fn()) and standalone (trigger) in
// the real agent; a signed version 2 for canary devices is hot-loaded and
// runs only for the canary device; the HTTP status and metrics show it.
func TestFunctionsEndToEnd(t *testing.T) {
	dir := t.TempDir()
	wasm := buildAnomaly(t)
	key := tuf.GenerateKey()
	writeRoot(t, filepath.Join(dir, "root.json"), key)
	fdir := filepath.Join(dir, "functions")
	writeSigned(t, filepath.Join(fdir, "anomaly-1"), fmt.Sprintf(anomalyManifest, 1, "alerts/v1/", ""), wasm, key)
	rulesDir := filepath.Join(dir, "rules")
	if err := os.MkdirAll(rulesDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rulesDir, "hot.sql"), []byte(
		`CREATE RULE hot AS SELECT fn('anomaly', temp, vibration) AS anomalous FROM 'rule/+' DO REPUBLISH 'out/${deviceid()}';
CREATE RULE act AS SELECT temp, vibration FROM 'act/+' DO FUNCTION 'anomaly';`), 0o644); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "outpost.yaml")
	cfg := fmt.Sprintf(`node_id: test
data_dir: %[1]s/data
telemetry: {address: "127.0.0.1:0"}
broker:
  listeners: [{type: tcp, address: "127.0.0.1:0"}]
  users:
    - {username: dev, password_hash: "%[2]s", acl: [{topic: "#", access: all}]}
rules:
  dir: %[1]s/rules
  devices:
    - {id: canary, labels: {ring: canary}}
functions:
  enabled: true
  dir: %[1]s/functions
  trust_root: %[1]s/root.json
  watch: 50ms
  cache_dir: %[3]s
`, dir, aliceHash, filepath.Join(os.TempDir(), "outpost-function-test-cache"))
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	a, logs := startAgent(t, cfgPath)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log:\n%s", logs)
		}
	})
	addr := a.Broker.Addr("tcp")
	sub := dialDevice(t, addr, "watcher")
	ctx := t.Context()
	if _, err := sub.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "out/#", QoS: 1}, {Topic: "alerts/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	next := func(want string) {
		t.Helper()
		select {
		case m := <-sub.msgs:
			if got := m.Topic + " " + string(m.Payload); got != want {
				t.Fatalf("got %s, want %s", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("nothing received, want %s", want)
		}
	}
	// From a rule: the function's per-device state learns a baseline.
	d1 := dialDevice(t, addr, "d1")
	for i := 0; i < 3; i++ {
		d1.publish(t, "rule/d1", `{"temp":20,"vibration":1}`)
		next(`out/d1 {"anomalous":false}`)
	}
	d1.publish(t, "rule/d1", `{"temp":90,"vibration":4}`)
	next(`out/d1 {"anomalous":true}`)

	// Standalone: a trigger message, its output republished.
	feed := func(d *device, id string) {
		for i := 0; i < 4; i++ {
			d.publish(t, "sensors/"+id+"/vibration", `{"temp":20,"vibration":1}`)
		}
		d.publish(t, "sensors/"+id+"/vibration", `{"temp":95,"vibration":4}`)
	}
	feed(d1, "d1")
	next(`alerts/v1/d1 {"device":"d1","temp":95,"vibration":4}`)

	// From a rule's action: DO FUNCTION runs it on the rule's output.
	d5 := dialDevice(t, addr, "d5")
	for i := 0; i < 4; i++ {
		d5.publish(t, "act/d5", `{"temp":20,"vibration":1,"extra":"dropped by the rule"}`)
	}
	d5.publish(t, "act/d5", `{"temp":95,"vibration":4}`)
	next(`alerts/v1/d5 {"device":"d5","temp":95,"vibration":4}`)

	// Hot load of a canary version: only the canary device runs it.
	writeSigned(t, filepath.Join(fdir, "anomaly-2"), fmt.Sprintf(anomalyManifest, 2, "alerts/v2/", "devices: {ring: canary}\n"), wasm, key)
	waitUntil(t, "version 2 loaded", func() bool {
		st, _ := a.fns.registry().Statuses()
		return len(st) == 2
	})
	canary := dialDevice(t, addr, "canary")
	feed(canary, "canary")
	next(`alerts/v2/canary {"device":"canary","temp":95,"vibration":4}`)
	d1.publish(t, "sensors/d1/vibration", `{"temp":99,"vibration":5}`)
	next(`alerts/v1/d1 {"device":"d1","temp":99,"vibration":5}`)

	// A tampered version 3 is refused; both versions keep running.
	// (prepared outside the watched directory and renamed in, so the
	// watcher never sees the signed original)
	stage := filepath.Join(dir, "anomaly-3")
	writeSigned(t, stage, fmt.Sprintf(anomalyManifest, 3, "alerts/v3/", ""), wasm, key)
	if err := os.WriteFile(filepath.Join(stage, "anomaly.wasm"), append(wasm[:len(wasm):len(wasm)], 0), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(stage, filepath.Join(fdir, "anomaly-3")); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "version 3 refused", func() bool {
		_, p := a.fns.registry().Statuses()
		return len(p) == 1 && strings.Contains(p[0].Err, "does not match its signed metadata")
	})
	d1.publish(t, "sensors/d1/vibration", `{"temp":99,"vibration":5}`)
	next(`alerts/v1/d1 {"device":"d1","temp":99,"vibration":5}`)

	// Status and metrics over HTTP.
	base := "http://" + a.Telemetry.Addr()
	body := httpGet(t, base+"/functions")
	var st struct {
		Functions []function.Status  `json:"functions"`
		Problems  []function.Problem `json:"problems"`
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil || len(st.Functions) != 2 || !st.Functions[0].Signed || len(st.Problems) != 1 {
		t.Fatalf("/functions: %v %s", err, body)
	}
	m := httpGet(t, base+"/metrics")
	for _, want := range []string{`outpost_function_invocations_total{function="anomaly",entry="call"} 4`,
		`outpost_function_duration_seconds{function="anomaly",quantile="0.99"}`, `outpost_function_memory_high_water_bytes{function="anomaly"}`} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	r, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	if r.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", url, r.StatusCode, b)
	}
	return string(b)
}
