package agent

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/outpost-edge/outpost/internal/telemetry"
	"github.com/outpost-edge/outpost/internal/testutil/mosq"
)

// uplinkConfig is an agent config with an admin user for devices, a route of
// sensors/# to the telemetry lane and alarms/# to the alarms lane, and the
// uplink pointed at a real Mosquitto.
func uplinkConfig(dir, cloudURL, laneQueue string) string {
	return fmt.Sprintf(`node_id: gw
data_dir: %[1]s/data
telemetry: {address: "127.0.0.1:0"}
broker:
  listeners: [{type: tcp, address: "127.0.0.1:0"}]
  users:
    - {username: dev, password_hash: "%[2]s", acl: [{topic: "#", access: all}]}
pipeline:
  routes:
    - {from: ["sensors/#"], to: ["uplink:telemetry"]}
    - {from: ["alarms/#"], to: ["uplink:alarms"]}
uplink:
  enabled: true
  broker: %[3]s
  reconnect: {min: 50ms, max: 200ms}
  lanes:
    - {name: alarms, priority: high}
    - name: telemetry
      priority: normal
      queue: {%[4]s}
`, dir, aliceHash, cloudURL, laneQueue)
}

// device is a paho.golang MQTT 5 client publishing into the agent.
type device struct {
	c    *paho.Client
	msgs chan *paho.Publish
}

func dialDevice(t *testing.T, addr, id string) *device {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	d := &device{msgs: make(chan *paho.Publish, 1000)}
	d.c = paho.NewClient(paho.ClientConfig{ClientID: id, Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			d.msgs <- pr.Packet
			return true, nil
		}}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := d.c.Connect(ctx, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true,
		Username: "dev", UsernameFlag: true, Password: []byte("alice-pw"), PasswordFlag: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.c.Disconnect(&paho.Disconnect{}) })
	return d
}

// publish sends a QoS 1 message and returns the PUBACK reason code.
func (d *device) publish(t *testing.T, topic, payload string) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := d.c.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(payload)})
	if r != nil {
		return r.ReasonCode
	}
	if err != nil {
		t.Fatalf("publish %s: %v", topic, err)
	}
	return 0
}

// checkInOrder asserts that msgs hold seq 0..n-1 (each at least once) and
// that first deliveries are in order; it returns the number of duplicates.
func checkInOrder(t *testing.T, msgs []mosq.Message, n int) int {
	t.Helper()
	seen := make([]bool, n)
	dups, next := 0, 0
	for _, m := range msgs {
		seq, err := strconv.Atoi(string(m.Payload))
		if err != nil || seq < 0 || seq >= n {
			t.Fatalf("unexpected payload %q on %s", m.Payload, m.Topic)
		}
		if seen[seq] {
			dups++
			continue
		}
		if seq != next {
			t.Fatalf("out of order: got seq %d, want %d", seq, next)
		}
		seen[seq] = true
		next++
	}
	if next != n {
		t.Fatalf("lost messages: got %d distinct of %d", next, n)
	}
	return dups
}

func TestUplinkEndToEndAndDownlink(t *testing.T) {
	cloud := mosq.Start(t, mosq.Options{})
	got := mosq.Subscribe(t, cloud, "outpost/gw/#")
	dir := t.TempDir()
	path := filepath.Join(dir, "outpost.yaml")
	os.WriteFile(path, []byte(uplinkConfig(dir, cloud.URL(), "")), 0o600)
	a, _ := startAgent(t, path)
	dev := dialDevice(t, a.Broker.Addr("tcp"), "d1")
	const n = 500
	for i := 0; i < n; i++ {
		if rc := dev.publish(t, "sensors/d1/temp", strconv.Itoa(i)); rc != 0 {
			t.Fatalf("PUBACK 0x%x", rc)
		}
	}
	msgs := got.WaitN(t, n, 20*time.Second)
	if msgs[0].Topic != "outpost/gw/sensors/d1/temp" {
		t.Fatalf("cloud topic %s", msgs[0].Topic)
	}
	checkInOrder(t, msgs, n)

	// Downlink: a command from the cloud reaches a local subscriber.
	ctx := context.Background()
	if _, err := dev.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "cmd/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	pub := mosq.NewPublisher(t, cloud)
	deadline := time.Now().Add(10 * time.Second)
	for {
		pub.Publish(ctx, t, "outpost/gw/cmd/valve/open", []byte("now"), nil)
		select {
		case m := <-dev.msgs:
			if m.Topic != "cmd/valve/open" || string(m.Payload) != "now" {
				t.Fatalf("downlink got %s %q", m.Topic, m.Payload)
			}
			return
		case <-time.After(500 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("downlink command never arrived")
		}
	}
}

// TestOfflineWithRestartsLosesNothing: the cloud broker is down for the whole
// run, the agent is restarted twice while offline, then the broker comes back:
// every acknowledged message arrives, in order per lane, without any new
// publish to trigger the reconnect.
func TestOfflineWithRestartsLosesNothing(t *testing.T) {
	// MaxQueued -1: the subscriber may reconnect after the gateway, so its
	// offline session must hold all 1800 messages (Mosquitto keeps 1000).
	cloud := mosq.Start(t, mosq.Options{Persistence: true, MaxQueued: -1})
	got := mosq.Subscribe(t, cloud, "outpost/gw/#")
	cloud.Stop()
	dir := t.TempDir()
	path := filepath.Join(dir, "outpost.yaml")
	os.WriteFile(path, []byte(uplinkConfig(dir, cloud.URL(), "")), 0o600)
	const perRun = 300
	seq := 0
	for run := 0; run < 3; run++ {
		cfg, err := Load(path)
		if err != nil {
			t.Fatal(err)
		}
		a, err := New(cfg, "", telemetry.NewLogs(&syncBuffer{}, cfg.Log))
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		dev := dialDevice(t, a.Broker.Addr("tcp"), fmt.Sprintf("d-run%d", run))
		for i := 0; i < perRun; i++ {
			if rc := dev.publish(t, "sensors/d1/temp", strconv.Itoa(seq)); rc != 0 {
				t.Fatalf("PUBACK 0x%x while offline", rc)
			}
			if rc := dev.publish(t, "alarms/d1", strconv.Itoa(seq)); rc != 0 {
				t.Fatalf("PUBACK 0x%x while offline", rc)
			}
			seq++
		}
		dev.c.Disconnect(&paho.Disconnect{})
		if err := a.Stop(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	// Last start: the broker comes back while the agent runs; nothing is
	// published any more, the uplink reconnects on its own.
	cfg, _ := Load(path)
	a, err := New(cfg, "", telemetry.NewLogs(&syncBuffer{}, cfg.Log))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer a.Stop(context.Background())
	time.Sleep(300 * time.Millisecond)
	cloud.Start()
	msgs := got.Wait(t, 30*time.Second, "all messages of both lanes", func(ms []mosq.Message) bool {
		return len(distinctByTopic(ms)["outpost/gw/alarms/d1"]) >= seq && len(distinctByTopic(ms)["outpost/gw/sensors/d1/temp"]) >= seq
	})
	byLane := map[string][]mosq.Message{}
	for _, m := range msgs {
		byLane[m.Topic] = append(byLane[m.Topic], m)
	}
	dups := 0
	for _, topic := range []string{"outpost/gw/alarms/d1", "outpost/gw/sensors/d1/temp"} {
		dups += checkInOrder(t, byLane[topic], seq)
	}
	t.Logf("%d messages per lane delivered after 3 offline runs, %d duplicates", seq, dups)
}

func distinctByTopic(ms []mosq.Message) map[string]map[string]bool {
	out := map[string]map[string]bool{}
	for _, m := range ms {
		if out[m.Topic] == nil {
			out[m.Topic] = map[string]bool{}
		}
		out[m.Topic][string(m.Payload)] = true
	}
	return out
}

// TestLaneFullRejectsThenAcceptsAfterDrain: a lane at max_bytes with
// on_full: reject_new refuses new QoS 1 publishes with PUBACK 0x97 (the
// agent stays up and counts them); once the cloud is back and the lane
// drains, publishes are accepted again.
func TestLaneFullRejectsThenAcceptsAfterDrain(t *testing.T) {
	// persistence: the cloud subscriber's session (and what is queued for it)
	// survives the broker restart, so every record the uplink delivers counts.
	cloud := mosq.Start(t, mosq.Options{Persistence: true, MaxQueued: -1})
	got := mosq.Subscribe(t, cloud, "outpost/gw/#")
	cloud.Stop()
	dir := t.TempDir()
	path := filepath.Join(dir, "outpost.yaml")
	os.WriteFile(path, []byte(uplinkConfig(dir, cloud.URL(), "max_bytes: 256KiB, segment_size: 64KiB, on_full: reject_new")), 0o600)
	a, _ := startAgent(t, path)
	dev := dialDevice(t, a.Broker.Addr("tcp"), "d1")
	payload := strings.Repeat("x", 1000)
	accepted, rejected := 0, 0
	for i := 0; i < 1000 && rejected == 0; i++ {
		switch rc := dev.publish(t, "sensors/d1/blob", payload); rc {
		case 0:
			accepted++
		case 0x97:
			rejected++
		default:
			t.Fatalf("PUBACK 0x%x", rc)
		}
	}
	if rejected == 0 || accepted < 100 {
		t.Fatalf("accepted %d, rejected %d: the lane limit was not applied", accepted, rejected)
	}
	if v := metric(t, a, `outpost_queue_rejected_total{lane="telemetry"}`); v == "" || v == "0" {
		t.Fatalf("rejections not counted (metric %q)", v)
	}
	if v := metric(t, a, `outpost_broker_messages_dropped_total{reason="pipeline_rejected"}`); v == "" || v == "0" {
		t.Fatalf("broker did not count the refused publishes (%q)", v)
	}
	cloud.Start()
	got.Wait(t, 30*time.Second, "backlog drained", func(ms []mosq.Message) bool { return len(ms) >= accepted })
	waitUntil(t, "lane accepts again", func() bool { return dev.publish(t, "sensors/d1/blob", payload) == 0 })
}
