package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/outpost-edge/outpost/internal/testutil/mosq"
)

// TestKill9NothingAcknowledgedIsLost is the store-and-forward guarantee
// under crashes: devices publish sequenced QoS 1 messages into a real
// `outpost run` process that forwards them to a real Mosquitto; the agent is
// killed with SIGKILL at random moments, 20 times (OUTPOST_SOAK=1: 100), and
// restarted. At the end, every message a device saw PUBACKed has arrived at
// the cloud broker; duplicates are counted and reported, losses fail the test.
func TestKill9NothingAcknowledgedIsLost(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	iterations, minTotal := 20, 100_000
	if os.Getenv("OUTPOST_SOAK") != "" {
		iterations, minTotal = 100, 500_000
	}
	cloud := mosq.Start(t, mosq.Options{Persistence: true, MaxQueued: -1, MaxInflight: 1000})
	got := mosq.Subscribe(t, cloud, "outpost/gw/#")

	dir := t.TempDir()
	mqttAddr, httpAddr := freePort(t), freePort(t)
	cfg := fmt.Sprintf(`node_id: gw
data_dir: %s/data
telemetry: {address: "%s"}
broker:
  listeners: [{type: tcp, address: "%s"}]
  # Anonymous: a restart would otherwise re-verify 64 bcrypt logins
  # (seconds of CPU) while the next kill is due in 0.4-1.6 s.
  allow_anonymous: true
  anonymous_acl: [{topic: "#", access: all}]
  limits: {receive_maximum: 1024}
pipeline:
  partitions: 8
  routes: [{from: ["sensors/#"], to: ["uplink:telemetry"]}]
uplink:
  enabled: true
  broker: %s
  reconnect: {min: 50ms, max: 500ms}
  lanes: [{name: telemetry}]
`, dir, httpAddr, mqttAddr, cloud.URL())
	path := filepath.Join(dir, "outpost.yaml")
	os.WriteFile(path, []byte(cfg), 0o600)

	const devices = 64
	acked := make([][]int, devices) // per device: seqs acknowledged by the agent
	next := make([]int, devices)
	var total atomic.Int64
	// The kills are the test; the message count is a goal. On a busy
	// machine fewer messages get through per run: after the kills are done the loop keeps going
	// for the count only until soft, and fails only if even the kills did
	// not fit in hard or almost nothing was acknowledged.
	start := time.Now()
	soft, hard := start.Add(3*time.Minute), start.Add(8*time.Minute)
	it := 0
	for ; it < iterations || (total.Load() < int64(minTotal) && time.Now().Before(soft)); it++ {
		if time.Now().After(hard) {
			t.Fatalf("time budget exhausted after %d of %d kills, %d acknowledged", it, iterations, total.Load())
		}
		agent := startOutpost(t, path, httpAddr)
		ctx, stop := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for d := 0; d < devices; d++ {
			wg.Add(1)
			go func(d int) {
				defer wg.Done()
				c, err := dialQoS1(ctx, mqttAddr, fmt.Sprintf("dev-%d", d))
				if err != nil {
					return
				}
				for ctx.Err() == nil {
					seq := next[d]
					r, err := c.Publish(ctx, &paho.Publish{Topic: fmt.Sprintf("sensors/dev-%d", d), QoS: 1, Payload: []byte(strconv.Itoa(seq))})
					if err != nil || r == nil || r.ReasonCode != 0 {
						return // the agent died mid-publish: this one is not acknowledged
					}
					acked[d] = append(acked[d], seq)
					next[d]++
					total.Add(1)
				}
			}(d)
		}
		time.Sleep(time.Duration(400+rand.IntN(1200)) * time.Millisecond)
		agent.Process.Kill() // SIGKILL: no shutdown, no flush
		agent.Wait()
		stop()
		wg.Wait()
		for d := range next {
			next[d]++ // the in-flight message, if any, may or may not have been stored
		}
	}
	if n := total.Load(); n < int64(minTotal) {
		if n < 5_000 {
			t.Fatalf("only %d messages acknowledged in %d kills and %s: too few to test anything", n, it, time.Since(start).Round(time.Second))
		}
		t.Logf("%d messages acknowledged in %d kills (goal %d; the machine is busy)", n, it, minTotal)
	}
	// Restart once more and let the backlog drain to the cloud.
	agent := startOutpost(t, path, httpAddr)
	defer func() { agent.Process.Signal(os.Interrupt); agent.Wait() }()
	want := total.Load()
	got.Wait(t, 3*time.Minute, "at least as many messages as were acknowledged", func(ms []mosq.Message) bool {
		return int64(len(ms)) >= want
	})
	// Wait until every acknowledged one is there (duplicates inflate len).
	check := func(ms []mosq.Message) (lost int, dups int, firstLost string) {
		seen := make([]map[int]int, devices)
		for d := range seen {
			seen[d] = map[int]int{}
		}
		for _, m := range ms {
			d, err := strconv.Atoi(strings.TrimPrefix(m.Topic, "outpost/gw/sensors/dev-"))
			seq, err2 := strconv.Atoi(string(m.Payload))
			if err != nil || err2 != nil || d < 0 || d >= devices {
				t.Fatalf("unexpected message %s %q", m.Topic, m.Payload)
			}
			seen[d][seq]++
		}
		for d := range acked {
			for _, s := range acked[d] {
				if seen[d][s] == 0 {
					lost++
					if firstLost == "" {
						firstLost = fmt.Sprintf("dev-%d seq %d", d, s)
					}
				}
			}
			for _, n := range seen[d] {
				dups += n - 1
			}
		}
		return
	}
	msgs := got.Wait(t, time.Minute, "no acknowledged message missing", func(ms []mosq.Message) bool {
		lost, _, _ := check(ms)
		return lost == 0
	})
	lost, dups, _ := check(msgs)
	t.Logf("%d iterations of kill -9, %d messages acknowledged to devices, %d received by the cloud broker: %d lost, %d duplicates",
		it, want, len(msgs), lost, dups)
}

func startOutpost(t *testing.T, cfgPath, httpAddr string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(binary, "run", "--config", cfgPath)
	logf, _ := os.OpenFile(filepath.Join(filepath.Dir(cfgPath), "agent.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get("http://" + httpAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return cmd
			}
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			log, _ := os.ReadFile(filepath.Join(filepath.Dir(cfgPath), "agent.log"))
			t.Fatalf("agent not ready:\n%s", log)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func dialQoS1(ctx context.Context, addr, id string) (*paho.Client, error) {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return nil, err
	}
	c := paho.NewClient(paho.ClientConfig{ClientID: id, Conn: conn})
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := c.Connect(cctx, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true}); err != nil {
		conn.Close()
		return nil, err
	}
	go func() { <-ctx.Done(); conn.Close() }()
	return c, nil
}

// TestKill9ThroughRuleNothingAcknowledgedIsLost is the same guarantee
// through the rule engine: devices publish sequenced QoS 1 messages that no
// route sends to the uplink; only rules do (UPLINK LANE): a per-message rule
// for 12 devices, a tumbling-window aggregate for 4 more. The agent is
// killed with SIGKILL at random moments and restarted. Every message a
// device saw PUBACKed must reach the cloud broker as the per-message rule's
// output, or be counted in a window output (restored from the state
// checkpoint after a kill). Smaller than the store-and-forward test (8
// kills, 16 devices) so it stays well under a minute.
func TestKill9ThroughRuleNothingAcknowledgedIsLost(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	const iterations, devices, perMessage = 8, 16, 12 // devices >= perMessage feed the window
	cloud := mosq.Start(t, mosq.Options{Persistence: true, MaxQueued: -1, MaxInflight: 1000})
	got := mosq.Subscribe(t, cloud, "outpost/gw/#")

	dir := t.TempDir()
	rulesDir := filepath.Join(dir, "rules")
	os.MkdirAll(rulesDir, 0o755)
	// the rule re-shapes the payload so the test sees that the rule, not a
	// route, delivered it
	os.WriteFile(filepath.Join(rulesDir, "fwd.sql"), []byte(
		`CREATE RULE fwd AS SELECT seq FROM 'sensors/+' WHERE seq >= 0 DO UPLINK LANE 'telemetry' TOPIC 'ruled/${topic(2)}';
CREATE RULE agg AS SELECT deviceid() AS d, count(*) AS n, min(seq) AS lo, max(seq) AS hi FROM 'agg/+'
  GROUP BY deviceid(), TUMBLINGWINDOW(ms, 200) DO UPLINK LANE 'telemetry' TOPIC 'agg/${d}';`), 0o644)
	mqttAddr, httpAddr := freePort(t), freePort(t)
	cfg := fmt.Sprintf(`node_id: gw
data_dir: %s/data
telemetry: {address: "%s"}
broker:
  listeners: [{type: tcp, address: "%s"}]
  allow_anonymous: true
  anonymous_acl: [{topic: "#", access: all}]
  limits: {receive_maximum: 1024}
pipeline:
  partitions: 4
rules:
  dir: %s
uplink:
  enabled: true
  broker: %s
  reconnect: {min: 50ms, max: 500ms}
  lanes: [{name: telemetry}]
`, dir, httpAddr, mqttAddr, rulesDir, cloud.URL())
	path := filepath.Join(dir, "outpost.yaml")
	os.WriteFile(path, []byte(cfg), 0o600)

	acked := make([][]int, devices)
	next := make([]int, devices)
	var total, windowed atomic.Int64
	start := time.Now()
	for it := 0; it < iterations; it++ {
		agent := startOutpost(t, path, httpAddr)
		ctx, stop := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for d := 0; d < devices; d++ {
			wg.Add(1)
			go func(d int) {
				defer wg.Done()
				c, err := dialQoS1(ctx, mqttAddr, fmt.Sprintf("dev-%d", d))
				if err != nil {
					return
				}
				topic := fmt.Sprintf("sensors/dev-%d", d)
				if d >= perMessage {
					topic = fmt.Sprintf("agg/dev-%d", d)
				}
				for ctx.Err() == nil {
					seq := next[d]
					r, err := c.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(fmt.Sprintf(`{"seq":%d}`, seq))})
					if err != nil || r == nil || r.ReasonCode != 0 {
						return
					}
					acked[d] = append(acked[d], seq)
					next[d]++
					total.Add(1)
					if d >= perMessage {
						windowed.Add(1)
					}
				}
			}(d)
		}
		time.Sleep(time.Duration(400+rand.IntN(1000)) * time.Millisecond)
		agent.Process.Kill()
		agent.Wait()
		stop()
		wg.Wait()
		for d := range next {
			next[d]++
		}
	}
	if n, w := total.Load(), windowed.Load(); n < 1_000 || w < 100 {
		t.Fatalf("only %d messages (%d to the window) acknowledged in %d kills: too few to test anything", n, w, iterations)
	}
	agent := startOutpost(t, path, httpAddr)
	defer func() { agent.Process.Signal(os.Interrupt); agent.Wait() }()
	want := total.Load()
	// check returns the acknowledged inputs missing from the rules' outputs:
	// per-message outputs by seq; for the window, an acknowledged seq must
	// lie in a window output's [lo, hi], and no window output may count
	// fewer inputs than were acknowledged in its range
	check := func(ms []mosq.Message) (lost int, dups int, firstLost string) {
		seen := make([]map[int]int, devices)
		for d := range seen {
			seen[d] = map[int]int{}
		}
		type window struct{ n, lo, hi int }
		wins := make([][]window, devices)
		for _, m := range ms {
			if rest, ok := strings.CutPrefix(m.Topic, "outpost/gw/agg/dev-"); ok {
				d, err := strconv.Atoi(rest)
				var w struct{ N, Lo, Hi int }
				if err2 := json.Unmarshal(m.Payload, &w); err != nil || err2 != nil || d < perMessage || d >= devices {
					t.Fatalf("unexpected window output %s %q", m.Topic, m.Payload)
				}
				wins[d] = append(wins[d], window{w.N, w.Lo, w.Hi})
				continue
			}
			d, err := strconv.Atoi(strings.TrimPrefix(m.Topic, "outpost/gw/ruled/dev-"))
			var seq int
			_, err2 := fmt.Sscanf(string(m.Payload), `{"seq":%d}`, &seq)
			if err != nil || err2 != nil || d < 0 || d >= perMessage {
				t.Fatalf("unexpected message %s %q", m.Topic, m.Payload)
			}
			seen[d][seq]++
		}
		miss := func(d, s int) {
			lost++
			if firstLost == "" {
				firstLost = fmt.Sprintf("dev-%d seq %d", d, s)
			}
		}
		for d := range acked {
			if d < perMessage {
				for _, s := range acked[d] {
					if seen[d][s] == 0 {
						miss(d, s)
					}
				}
				for _, n := range seen[d] {
					dups += n - 1
				}
				continue
			}
			for _, s := range acked[d] {
				in := false
				for _, w := range wins[d] {
					in = in || w.lo <= s && s <= w.hi
				}
				if !in {
					miss(d, s)
				}
			}
			for _, w := range wins[d] {
				a := 0
				for _, s := range acked[d] {
					if w.lo <= s && s <= w.hi {
						a++
					}
				}
				if w.n < a {
					lost += a - w.n
					if firstLost == "" {
						firstLost = fmt.Sprintf("dev-%d window %+v counts %d of %d acknowledged inputs", d, w, w.n, a)
					}
				}
			}
		}
		return
	}
	// wait until nothing is missing, or (on a loss) until the count has
	// stopped growing for 5 s, so a loss fails fast and says how many
	var msgs []mosq.Message
	deadline, lastGrowth, lastLen := time.Now().Add(2*time.Minute), time.Now(), -1
	for {
		msgs = got.Messages()
		if lost, _, _ := check(msgs); lost == 0 {
			break
		}
		if len(msgs) != lastLen {
			lastLen, lastGrowth = len(msgs), time.Now()
		}
		if time.Since(lastGrowth) > 5*time.Second || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	lost, dups, first := check(msgs)
	if lost > 0 {
		log, _ := os.ReadFile(filepath.Join(dir, "agent.log"))
		if len(log) > 4000 {
			log = log[len(log)-4000:]
		}
		t.Fatalf("%d of %d acknowledged inputs lost through the rules (first: %s); %d outputs at the cloud; agent log tail:\n%s", lost, want, first, len(msgs), log)
	}
	t.Logf("%d kills, %d inputs acknowledged (%d into the window), %d rule outputs at the cloud broker: 0 lost, %d per-message duplicates (%s)",
		iterations, want, windowed.Load(), len(msgs), dups, time.Since(start).Round(time.Second))
}
