package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/outpost-edge/outpost/internal/testutil/mosq"
)

// rulesKnobs is every key of the rules: section the reload test changes.
type rulesKnobs struct {
	dir, stateDir         string
	partitions, maxHops   int
	debounce, tick, idle  string
	site, rolloutSelector string
}

func (k rulesKnobs) config(dir string) string {
	return fmt.Sprintf(`node_id: gw
data_dir: %[1]s/data
telemetry: {address: "127.0.0.1:0"}
broker:
  listeners: [{type: tcp, address: "127.0.0.1:0"}]
  allow_anonymous: true
  anonymous_acl: [{topic: "#", access: all}]
rules:
  dir: %[2]s
  state_dir: %[3]s
  partitions: %[4]d
  debounce: %[5]s
  window_tick: %[6]s
  idle_timeout: %[7]s
  max_hops: %[8]d
  devices:
    - {id: dev-a, labels: {site: %[9]s}}
  rollouts:
    - {rule: ro, version: 2, devices: "%[10]s"}
`, dir, k.dir, k.stateDir, k.partitions, k.debounce, k.tick, k.idle, k.maxHops, k.site, k.rolloutSelector)
}

var reloadRuleFiles = map[string]string{
	// per message: no gap, no duplicate; labels follow the devices section
	"pass.sql": `CREATE RULE pass AS SELECT seq, labels.site AS site FROM 'seq/+' DO REPUBLISH 'out/pass';`,
	// gray rollout: version 2 runs where the configured selector matches
	"ro.sql": `CREATE RULE ro VERSION 1 AS SELECT seq, 1 AS v FROM 'seq/+' DO REPUBLISH 'out/ro';
CREATE RULE ro VERSION 2 AS SELECT seq, 2 AS v FROM 'seq/+' DO REPUBLISH 'out/ro';`,
	// windows over the flowing stream: every input counted exactly once
	"cnt.sql": `CREATE RULE cnt AS SELECT count(*) AS n, min(seq) AS lo, max(seq) AS hi FROM 'seq/+'
GROUP BY deviceid(), TUMBLINGWINDOW(ms, 100) DO REPUBLISH 'out/cnt';`,
	// a silent device's windows, processing and event time
	"win.sql": `CREATE RULE win AS SELECT count(*) AS n, topic(2) AS step FROM 'win/+'
GROUP BY deviceid(), TUMBLINGWINDOW(ms, 300) DO REPUBLISH 'out/win';
CREATE RULE ev AS SELECT count(*) AS n, topic(2) AS step FROM 'ev/+'
GROUP BY deviceid(), TUMBLINGWINDOW(ms, 200) TIMESTAMP BY ts DO REPUBLISH 'out/ev';`,
	"hop.sql": `CREATE RULE hop AS SELECT tag FROM 'hop/+' DO REPUBLISH 'out/hop';`,
}

// outputs collects what a subscriber to out/# receives, by topic.
type outputs struct {
	mu sync.Mutex
	by map[string][]map[string]any
}

func (o *outputs) add(topic string, payload []byte) {
	var v map[string]any
	if err := json.Unmarshal(payload, &v); err != nil {
		v = map[string]any{"_raw": string(payload)}
	}
	o.mu.Lock()
	o.by[topic] = append(o.by[topic], v)
	o.mu.Unlock()
}

func (o *outputs) get(topic string) []map[string]any {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]map[string]any(nil), o.by[topic]...)
}

// has reports whether topic received an output whose key equals val.
func (o *outputs) has(topic, key string, val any) bool {
	for _, m := range o.get(topic) {
		if fmt.Sprint(m[key]) == fmt.Sprint(val) {
			return true
		}
	}
	return false
}

func dialAnon(t *testing.T, addr, id string, onMsg func(*paho.Publish)) *paho.Client {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cfg := paho.ClientConfig{ClientID: id, Conn: conn}
	if onMsg != nil {
		cfg.OnPublishReceived = []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			onMsg(pr.Packet)
			return true, nil
		}}
	}
	c := paho.NewClient(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Connect(ctx, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Disconnect(&paho.Disconnect{}) })
	return c
}

func pub(t *testing.T, c *paho.Client, topic, payload string, hops string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p := &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(payload)}
	if hops != "" {
		p.Properties = &paho.PublishProperties{User: paho.UserProperties{{Key: "outpost-hops", Value: hops}}}
	}
	if r, err := c.Publish(ctx, p); err != nil || (r != nil && r.ReasonCode != 0) {
		t.Fatalf("publish %s: %v %v", topic, err, r)
	}
}

// TestRulesConfigReloadKeepsEngineLive changes every key of the rules:
// section of a running agent, one at a time, while a device publishes a
// sequence: each output of a per-message rule arrives exactly once (no gap,
// no duplicate) and follows the new labels and rollouts; windows over the
// stream count every input once; a silent device's processing-time and
// event-time windows still close on time after each reload; and the rule
// file watcher (on the new directory after a dir change) still applies
// edits.
func TestRulesConfigReloadKeepsEngineLive(t *testing.T) {
	dir := t.TempDir()
	dir1, dir2 := filepath.Join(dir, "rules1"), filepath.Join(dir, "rules2")
	for _, d := range []string{dir1, dir2} {
		os.MkdirAll(d, 0o755)
		for n, src := range reloadRuleFiles {
			if err := os.WriteFile(filepath.Join(d, n), []byte(src), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	k := rulesKnobs{dir: dir1, stateDir: filepath.Join(dir, "state1"), partitions: 64, maxHops: 8,
		debounce: "20ms", tick: "20ms", idle: "250ms", site: "s1", rolloutSelector: "deviceid() = 'nobody'"}
	path := filepath.Join(dir, "outpost.yaml")
	os.WriteFile(path, []byte(k.config(dir)), 0o600)
	a, logs := startAgent(t, path)
	addr := a.Broker.Addr("tcp")

	out := &outputs{by: map[string][]map[string]any{}}
	sub := dialAnon(t, addr, "watcher", func(p *paho.Publish) { out.add(p.Topic, p.Payload) })
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	if _, err := sub.Subscribe(sctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "out/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	scancel()
	quiet := dialAnon(t, addr, "quiet", nil)
	hopper := dialAnon(t, addr, "hopper", nil)

	// the flow: dev-a publishes seq 0, 1, 2, ... until told to stop
	dev := dialAnon(t, addr, "dev-a", nil)
	stop := make(chan struct{})
	var sent int
	pubDone := make(chan error, 1)
	go func() {
		tk := time.NewTicker(time.Millisecond)
		defer tk.Stop()
		for seq := 0; seq < 200_000; seq++ {
			select {
			case <-stop:
				pubDone <- nil
				return
			case <-tk.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			r, err := dev.Publish(ctx, &paho.Publish{Topic: "seq/dev-a", QoS: 1, Payload: []byte(fmt.Sprintf(`{"seq":%d}`, seq))})
			cancel()
			if err != nil || r.ReasonCode != 0 {
				pubDone <- fmt.Errorf("publish seq %d: %v %v", seq, err, r)
				return
			}
			sent = seq + 1
		}
		pubDone <- nil
	}()

	// silentWindows: a device publishes once and goes silent; its
	// processing-time and event-time windows must still be emitted.
	silentWindows := func(step string, evMustClose bool) {
		t.Helper()
		pub(t, quiet, "win/"+step, `{}`, "")
		pub(t, quiet, "ev/"+step, fmt.Sprintf(`{"ts":%d}`, time.Now().UnixMilli()), "")
		waitUntil(t, step+": silent device's processing-time window closed", func() bool { return out.has("out/win", "step", step) })
		if evMustClose {
			waitUntil(t, step+": silent device's event-time window closed (idle timeout)", func() bool { return out.has("out/ev", "step", step) })
		}
	}
	waitUntil(t, "first outputs", func() bool { return len(out.get("out/pass")) > 10 })
	silentWindows("start", true)
	pub(t, hopper, "hop/x", `{"tag":"hops3-before"}`, "3")
	waitUntil(t, "hop output before max_hops change", func() bool { return out.has("out/hop", "tag", "hops3-before") })

	reload := func(step string, change func(*rulesKnobs)) {
		t.Helper()
		change(&k)
		before := a.reloadOK.Get()
		tmp := path + ".tmp"
		os.WriteFile(tmp, []byte(k.config(dir)), 0o600)
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, step+": config reloaded", func() bool { return a.reloadOK.Get() > before || a.reloadRejected.Get() > 0 })
		if a.reloadRejected.Get() > 0 {
			t.Fatalf("%s: reload rejected:\n%s", step, logs.String())
		}
	}

	reload("labels", func(k *rulesKnobs) { k.site = "s2" })
	waitUntil(t, "new label in outputs", func() bool { return out.has("out/pass", "site", "s2") })
	silentWindows("labels", true)

	reload("rollouts", func(k *rulesKnobs) { k.rolloutSelector = "deviceid() = 'dev-a'" })
	waitUntil(t, "rolled-out version 2 in outputs", func() bool { return out.has("out/ro", "v", 2) })
	silentWindows("rollouts", true)

	reload("window_tick", func(k *rulesKnobs) { k.tick = "35ms" })
	silentWindows("window_tick", true)

	reload("idle_timeout off", func(k *rulesKnobs) { k.idle = "-1s" })
	silentWindows("idle-off", false)
	// with no idle timeout the event-time window waits for traffic
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		if out.has("out/ev", "step", "idle-off") {
			t.Fatal("idle_timeout: -1s not applied: the event-time window closed without traffic")
		}
		time.Sleep(20 * time.Millisecond)
	}
	reload("idle_timeout on", func(k *rulesKnobs) { k.idle = "200ms" })
	waitUntil(t, "window held while idle_timeout was off closes once it is back", func() bool { return out.has("out/ev", "step", "idle-off") })
	silentWindows("idle-on", true)

	reload("max_hops", func(k *rulesKnobs) { k.maxHops = 2 })
	pub(t, hopper, "hop/x", `{"tag":"hops3-after"}`, "3")
	pub(t, hopper, "hop/x", `{"tag":"sentinel"}`, "")
	waitUntil(t, "hop sentinel", func() bool { return out.has("out/hop", "tag", "sentinel") })
	if out.has("out/hop", "tag", "hops3-after") {
		t.Fatal("max_hops: 2 not applied: a message with 3 hops was evaluated")
	}
	silentWindows("max_hops", true)

	reload("partitions", func(k *rulesKnobs) { k.partitions = 4 })
	silentWindows("partitions", true)
	reload("debounce", func(k *rulesKnobs) { k.debounce = "40ms" })
	silentWindows("debounce", true)
	reload("state_dir", func(k *rulesKnobs) { k.stateDir = filepath.Join(dir, "state2") })
	silentWindows("state_dir", true)
	reload("dir", func(k *rulesKnobs) { k.dir = dir2 })
	silentWindows("dir", true)

	// the watcher follows the (new) directory
	edited := strings.Replace(reloadRuleFiles["pass.sql"], "labels.site AS site", "labels.site AS site, 'yes' AS edited", 1)
	if err := os.WriteFile(filepath.Join(dir2, "pass.sql"), []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "rule file edit after the reloads applied", func() bool { return out.has("out/pass", "edited", "yes") })
	os.WriteFile(filepath.Join(dir1, "hop.sql"), []byte(`CREATE RULE hop AS SELECT 'old-dir' AS tag FROM 'hop/+' DO REPUBLISH 'out/hop';`), 0o644)

	close(stop)
	if err := <-pubDone; err != nil {
		t.Fatal(err)
	}
	n := sent
	if n < 100 {
		t.Fatalf("only %d messages published", n)
	}
	pub(t, hopper, "hop/x", `{"tag":"last"}`, "")
	waitUntil(t, "every per-message output", func() bool { return len(out.get("out/pass")) >= n && len(out.get("out/ro")) >= n })
	waitUntil(t, "every input counted by the windows", func() bool {
		total := 0
		for _, m := range out.get("out/cnt") {
			total += int(m["n"].(float64))
		}
		return total >= n
	})
	waitUntil(t, "hop output", func() bool { return out.has("out/hop", "tag", "last") })
	if out.has("out/hop", "tag", "old-dir") {
		t.Error("an edit in the old rules directory was applied after dir changed")
	}

	// per-message rules: each seq exactly once; labels and versions switch
	// once and never back
	for _, tc := range []struct{ topic, key, first, second string }{
		{"out/pass", "site", "s1", "s2"},
		{"out/ro", "v", "1", "2"},
	} {
		seen := make([]int, n)
		switched := false
		for _, m := range out.get(tc.topic) {
			seq := int(m["seq"].(float64))
			if seq < 0 || seq >= n {
				t.Fatalf("%s: seq %d out of range", tc.topic, seq)
			}
			seen[seq]++
			switch v := fmt.Sprint(m[tc.key]); {
			case v == tc.second:
				switched = true
			case v == tc.first && switched:
				t.Errorf("%s: seq %d has %s=%s after the switch to %s", tc.topic, seq, tc.key, v, tc.second)
			case v != tc.first:
				t.Errorf("%s: seq %d has %s=%s", tc.topic, seq, tc.key, v)
			}
		}
		for seq, c := range seen {
			if c != 1 {
				t.Fatalf("%s: seq %d output %d times (want exactly once; %d published)", tc.topic, seq, c, n)
			}
		}
	}
	// windows: contiguous, non-overlapping ranges covering 0..n-1
	cnt := out.get("out/cnt")
	sort.Slice(cnt, func(i, j int) bool { return cnt[i]["lo"].(float64) < cnt[j]["lo"].(float64) })
	next := 0
	for _, m := range cnt {
		lo, hi, c := int(m["lo"].(float64)), int(m["hi"].(float64)), int(m["n"].(float64))
		if lo != next || hi-lo+1 != c {
			t.Fatalf("window output %v: want a window starting at seq %d holding every seq up to hi once", m, next)
		}
		next = hi + 1
	}
	if next != n {
		t.Fatalf("windows cover seq 0..%d, want 0..%d", next-1, n-1)
	}
	t.Logf("%d messages through 11 rules-section reloads: every output exactly once", n)
}

// TestUplinkRuleLoadsAtStart: a rule file with an UPLINK action is loaded
// when the agent starts (the lanes start before the rule engine; they used
// to start after it, and such a rule was rejected with "unknown lane") and
// its output reaches the cloud.
func TestUplinkRuleLoadsAtStart(t *testing.T) {
	cloud := mosq.Start(t, mosq.Options{})
	got := mosq.Subscribe(t, cloud, "outpost/gw/#")
	dir := t.TempDir()
	rulesDir := filepath.Join(dir, "rules")
	os.MkdirAll(rulesDir, 0o755)
	os.WriteFile(filepath.Join(rulesDir, "up.sql"), []byte(`CREATE RULE up AS SELECT v FROM 'r/+' DO UPLINK LANE 'alarms' TOPIC 'ruled/${topic(2)}';`), 0o644)
	path := filepath.Join(dir, "outpost.yaml")
	os.WriteFile(path, []byte(uplinkConfig(dir, cloud.URL(), "")+"rules: {dir: "+rulesDir+"}\n"), 0o600)
	a, logs := startAgent(t, path)
	for _, f := range a.Rules.Store().Status() {
		if len(f.Errors) > 0 {
			t.Fatalf("rule file rejected at start: %v\n%s", f.Errors, logs.String())
		}
	}
	dev := dialDevice(t, a.Broker.Addr("tcp"), "d1")
	if rc := dev.publish(t, "r/x", `{"v":7}`); rc != 0 {
		t.Fatalf("PUBACK 0x%x", rc)
	}
	msgs := got.WaitN(t, 1, 20*time.Second)
	if msgs[0].Topic != "outpost/gw/ruled/x" || string(msgs[0].Payload) != `{"v":7}` {
		t.Fatalf("cloud got %s %q", msgs[0].Topic, msgs[0].Payload)
	}
}
