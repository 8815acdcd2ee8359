package uplink

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/module"
	"github.com/outpost-edge/outpost/internal/queue"
	"github.com/outpost-edge/outpost/internal/testutil/mosq"
)

func fastQueue() testQueue { return newMemQueue() }

var threeLanes = []LaneConfig{
	{Name: "alarms", Priority: PriorityHigh},
	{Name: "telemetry", Priority: PriorityNormal},
	{Name: "bulk", Priority: PriorityLow},
}

func TestDeliversInOrderPerLane(t *testing.T) {
	b := mosq.Start(t, mosq.Options{MaxQueued: -1})
	sub := mosq.Subscribe(t, b, "outpost/#")
	h := newHarness(t, testConfig(b.URL(), threeLanes...), Options{})
	const n = 2000
	for _, l := range threeLanes {
		h.appendSeq(l.Name, 1, n/2) // backlog before start
	}
	h.start()
	for _, l := range threeLanes {
		h.appendSeq(l.Name, n/2+1, n) // live
	}
	msgs := sub.Wait(t, 30*time.Second, "all records", haveAll(n, "alarms", "telemetry", "bulk"))
	for _, l := range threeLanes {
		if d := checkLane(t, laneSeqs(t, msgs, l.Name), l.Name, n); d != 0 {
			t.Errorf("lane %s: %d duplicates without any outage", l.Name, d)
		}
	}
	waitFor(t, 5*time.Second, "acks", func() bool { return h.queues["bulk"].Len() == 0 })
	st := h.u.Status()
	if !st.Connected || st.Window != 20 { // Mosquitto's default Receive Maximum is max_inflight_messages = 20
		t.Errorf("status: %s", describe(st))
	}
	if h.u.Health().State != module.StateReady {
		t.Errorf("health %+v", h.u.Health())
	}
	js, err := json.Marshal(st)
	if err != nil || !strings.Contains(string(js), `"name":"alarms","priority":"high"`) || !strings.Contains(string(js), `"acked":2000`) {
		t.Errorf("status JSON %s, %v", js, err)
	}
}

func TestBrokerDownAtStartDeliversWithoutNewPublish(t *testing.T) {
	b := mosq.Start(t, mosq.Options{Persistence: true, MaxQueued: -1})
	sub := mosq.Subscribe(t, b, "outpost/#") // persistent session: queued while it reconnects
	b.Stop()
	h := newHarness(t, testConfig(b.URL(), LaneConfig{Name: "telemetry"}), Options{})
	h.start()
	h.appendSeq("telemetry", 1, 500)
	waitFor(t, 10*time.Second, "failed connection attempts", func() bool { return h.u.m.connectErrors.Get() >= 3 })
	if hs := h.u.Health(); hs.State != module.StateDegraded || !strings.Contains(hs.Detail, "connection refused") {
		t.Fatalf("health while broker down: %+v", hs)
	}
	b.Start() // nothing is appended after this point
	msgs := sub.Wait(t, 20*time.Second, "backlog after broker start", haveAll(500, "telemetry"))
	checkLane(t, laneSeqs(t, msgs, "telemetry"), "telemetry", 500)
	waitFor(t, 5*time.Second, "health ready", func() bool { return h.u.Health().State == module.StateReady })
}

func TestBrokerRestartMidStreamLosesNothing(t *testing.T) {
	b := mosq.Start(t, mosq.Options{Persistence: true, MaxQueued: -1})
	sub := mosq.Subscribe(t, b, "outpost/#")
	lanes := []LaneConfig{{Name: "alarms", Priority: PriorityHigh}, {Name: "bulk", Priority: PriorityLow}}
	h := newHarness(t, testConfig(b.URL(), lanes...), Options{})
	h.start()
	const n = 6000
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // a steady producer, bounded in count
		defer wg.Done()
		for i := 1; i <= n; i += 100 {
			h.appendSeq("alarms", i, i+99)
			h.appendSeq("bulk", i, i+99)
			time.Sleep(2 * time.Millisecond)
		}
	}()
	sub.WaitN(t, n/3, 30*time.Second)
	b.Stop() // real outage, mid-stream
	time.Sleep(300 * time.Millisecond)
	b.Start()
	wg.Wait()
	msgs := sub.Wait(t, 60*time.Second, "all records after restart", haveAll(n, "alarms", "bulk"))
	var dups int
	for _, l := range lanes {
		dups += checkLane(t, laneSeqs(t, msgs, l.Name), l.Name, n)
	}
	st := h.u.Status()
	if st.Reconnects < 1 {
		t.Errorf("no reconnect counted: %s", describe(st))
	}
	t.Logf("restart: %d duplicates seen by the subscriber, resent by uplink: alarms %d, bulk %d", dups, h.lane("alarms").Resent, h.lane("bulk").Resent)
}

func TestTLS(t *testing.T) {
	b := mosq.Start(t, mosq.Options{TLS: true})
	sub := mosq.Subscribe(t, b, "outpost/#")
	cfg := testConfig(b.URL(), LaneConfig{Name: "telemetry"})
	cfg.TLS.CAFile = b.Certs.CAFile
	h := newHarness(t, cfg, Options{})
	h.appendSeq("telemetry", 1, 50)
	h.start()
	checkLane(t, laneSeqs(t, sub.Wait(t, 10*time.Second, "tls delivery", haveAll(50, "telemetry")), "telemetry"), "telemetry", 50)

	// A CA that did not sign the server certificate is refused, clearly.
	other, err := mosq.GenerateCerts(t.TempDir(), "other-")
	if err != nil {
		t.Fatal(err)
	}
	cfg.TLS.CAFile = other.CAFile
	bad := newHarness(t, cfg, Options{})
	bad.start()
	waitFor(t, 10*time.Second, "tls refusal", func() bool { return bad.u.LastError() != nil })
	err = bad.u.LastError()
	if !errors.Is(err, ErrTLS) || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Fatalf("wrong CA: err = %v", err)
	}
	if hs := bad.u.Health(); hs.State != module.StateDegraded || !strings.Contains(hs.Detail, "TLS handshake failed") {
		t.Fatalf("health %+v", hs)
	}
	t.Logf("wrong CA error: %v", err)
}

func TestMutualTLS(t *testing.T) {
	b := mosq.Start(t, mosq.Options{RequireCertificate: true})
	sub := mosq.Subscribe(t, b, "outpost/#")
	cfg := testConfig(b.URL(), LaneConfig{Name: "telemetry"})
	cfg.TLS = TLSConfig{CAFile: b.Certs.CAFile, CertFile: b.Certs.ClientCert, KeyFile: b.Certs.ClientKey, ServerName: "localhost"}
	h := newHarness(t, cfg, Options{})
	h.appendSeq("telemetry", 1, 50)
	h.start()
	checkLane(t, laneSeqs(t, sub.Wait(t, 10*time.Second, "mTLS delivery", haveAll(50, "telemetry")), "telemetry"), "telemetry", 50)

	// Without a client certificate the broker refuses the connection.
	cfg.TLS.CertFile, cfg.TLS.KeyFile = "", ""
	bad := newHarness(t, cfg, Options{})
	bad.start()
	waitFor(t, 10*time.Second, "mTLS refusal", func() bool { return bad.u.LastError() != nil })
	if err := bad.u.LastError(); !errors.Is(err, ErrTLS) || !strings.Contains(err.Error(), "requires a client certificate") {
		t.Fatalf("no client cert: err = %v", err)
	} else {
		t.Logf("no client certificate error: %v", err)
	}
}

func TestWrongPassword(t *testing.T) {
	b := mosq.Start(t, mosq.Options{Users: map[string]string{"gw": "right"}})
	cfg := testConfig(b.URL(), LaneConfig{Name: "telemetry"})
	cfg.Username, cfg.Password = "gw", "wrong-s3cret"
	h := newHarness(t, cfg, Options{})
	h.appendSeq("telemetry", 1, 10)
	h.start()
	waitFor(t, 10*time.Second, "3 refused attempts", func() bool { return h.u.m.connectErrors.Get() >= 3 })
	err := h.u.LastError()
	var ce *ConnectError
	if !errors.Is(err, ErrNotAuthorized) || !errors.As(err, &ce) || (ce.Code != 0x86 && ce.Code != 0x87) {
		t.Fatalf("err = %v, want ConnectError 0x86 or 0x87 (Mosquitto) wrapping ErrNotAuthorized", err)
	}
	hs := h.u.Health()
	if hs.State != module.StateDegraded || !strings.Contains(hs.Detail, "not authorized") || !strings.Contains(hs.Detail, "retry") {
		t.Fatalf("health %+v", hs)
	}
	if strings.Contains(h.logs.String(), "wrong-s3cret") || strings.Contains(hs.Detail, "wrong-s3cret") {
		t.Fatal("password logged")
	}
	if h.queues["telemetry"].Len() != 10 {
		t.Fatal("records lost while refused")
	}
	t.Logf("health: %s", hs.Detail)

	// The right password from the environment connects.
	t.Setenv("UPLINK_TEST_PW", "right")
	cfg.Password, cfg.PasswordEnv = "", "UPLINK_TEST_PW"
	sub := mosq.Subscribe(t, b, "outpost/#")
	ok := newHarness(t, cfg, Options{})
	ok.appendSeq("telemetry", 1, 10)
	ok.start()
	sub.Wait(t, 10*time.Second, "delivery with env password", haveAll(10, "telemetry"))
}

func TestPriorityBacklogAlarmsFirst(t *testing.T) {
	b := mosq.Start(t, mosq.Options{Persistence: true, MaxQueued: -1})
	sub := mosq.Subscribe(t, b, "outpost/#")
	b.Stop()
	h := newHarness(t, testConfig(b.URL(), threeLanes...), Options{})
	h.start()
	h.appendSeq("bulk", 1, 3000)
	h.appendSeq("telemetry", 1, 100)
	h.appendSeq("alarms", 1, 20) // appended last, while offline
	waitFor(t, 10*time.Second, "offline attempts", func() bool { return h.u.m.connectErrors.Get() >= 2 })
	b.Start()
	msgs := sub.Wait(t, 30*time.Second, "everything", haveAll(3000, "bulk"))
	for i, m := range msgs[:20] {
		if m.Topic != "outpost/n1/t/alarms" {
			t.Fatalf("message %d is %s: alarms were not first", i, m.Topic)
		}
	}
	for i, m := range msgs[20:120] {
		if m.Topic != "outpost/n1/t/telemetry" {
			t.Fatalf("message %d is %s: telemetry did not follow alarms", 20+i, m.Topic)
		}
	}
	checkLane(t, laneSeqs(t, msgs, "bulk"), "bulk", 3000)
}

func TestLiveAlarmOvertakesDrainingBacklog(t *testing.T) {
	b := mosq.Start(t, mosq.Options{MaxInflight: 1000})
	h := newHarness(t, testConfig(b.URL(), threeLanes...), Options{}, fastQueue)
	const backlog = 100000
	h.appendSeq("bulk", 1, backlog)
	h.start()
	waitFor(t, 30*time.Second, "drain started", func() bool { return h.lane("bulk").Acked >= 2000 })
	before := h.lane("bulk").Acked
	h.appendSeq("alarms", 1, 1)
	waitFor(t, 10*time.Second, "alarm acked", func() bool { return h.lane("alarms").Acked == 1 })
	after := h.lane("bulk").Acked
	st := h.u.Status()
	// The alarm waited for at most about one window of bulk, not the backlog.
	if after-before > uint64(2*st.Window+2*prefetch) || after >= backlog {
		t.Fatalf("alarm waited for %d bulk records (window %d, backlog %d)", after-before, st.Window, backlog)
	}
	t.Logf("alarm overtook the backlog: %d bulk acks between append and alarm ack (window %d)", after-before, st.Window)
}

func TestBandwidthCap(t *testing.T) {
	b := mosq.Start(t, mosq.Options{MaxInflight: 1000})
	const rate = 100 << 10 // 100 KiB/s
	cfg := testConfig(b.URL(), LaneConfig{Name: "bulk"})
	cfg.Bandwidth = rate
	h := newHarness(t, cfg, Options{})
	payload := strings.Repeat("x", 200)
	q := h.queues["bulk"]
	for range 1000 { // ~230 KB of PUBLISH packets: ~2.2 s at the cap
		if _, err := q.Append(context.Background(), message.Encode(&message.Message{Topic: "t/bulk", Payload: []byte(payload)})); err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Now()
	h.start()
	waitFor(t, 60*time.Second, "drain", func() bool { return q.Len() == 0 })
	el := time.Since(t0).Seconds()
	bytes := float64(h.lane("bulk").AckedBytes)
	got := bytes / el
	t.Logf("bandwidth cap %d B/s: %.0f bytes in %.2fs = %.0f B/s (%.2f of cap)", rate, bytes, el, got, got/rate)
	// Loose bounds: the cap holds (burst is 100 ms), and the cap is not a crawl.
	if got > 1.3*rate || got < 0.3*rate {
		t.Fatalf("rate %.0f B/s outside [0.3, 1.3] × cap", got)
	}
}

func TestBandwidthShares(t *testing.T) {
	b := mosq.Start(t, mosq.Options{MaxInflight: 1000})
	cfg := testConfig(b.URL(), LaneConfig{Name: "alarms", Priority: PriorityHigh, Share: 3}, LaneConfig{Name: "bulk", Priority: PriorityLow, Share: 1})
	cfg.Bandwidth = 200 << 10
	h := newHarness(t, cfg, Options{}, fastQueue)
	h.appendSeq("alarms", 1, 20000)
	h.appendSeq("bulk", 1, 20000)
	h.start()
	waitFor(t, 30*time.Second, "some traffic", func() bool { return h.lane("alarms").AckedBytes+h.lane("bulk").AckedBytes > 150<<10 })
	a, bk := float64(h.lane("alarms").AckedBytes), float64(h.lane("bulk").AckedBytes)
	frac := bk / (a + bk)
	t.Logf("shares 3:1 under a cap, both backlogged: bulk got %.2f of the bytes; %s", frac, describe(h.u.Status()))
	if frac < 0.10 || frac > 0.45 { // target 0.25
		t.Fatalf("bulk fraction %.2f, want about 0.25 (share 1 of 4)", frac)
	}
}

type downlinkRecorder struct {
	mu   sync.Mutex
	msgs []*message.Message
	err  error
}

func (d *downlinkRecorder) Deliver(_ context.Context, m *message.Message) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.msgs = append(d.msgs, m.Clone())
	return d.err
}

func (d *downlinkRecorder) got() []*message.Message {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]*message.Message(nil), d.msgs...)
}

func TestDownlinkRoundTrip(t *testing.T) {
	b := mosq.Start(t, mosq.Options{})
	dl := &downlinkRecorder{}
	h := newHarness(t, testConfig(b.URL(), LaneConfig{Name: "telemetry"}), Options{Downlink: dl})
	h.start()
	waitFor(t, 10*time.Second, "connected", func() bool { return h.u.Status().Connected })
	// The subscription is made right after CONNACK; wait until the broker has it.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pub := mosq.NewPublisher(t, b)
	waitFor(t, 10*time.Second, "command delivered", func() bool {
		pub.Publish(ctx, t, "outpost/n1/cmd/valve/open", []byte(`{"pct":40}`), map[string]string{"req": "7"})
		return len(dl.got()) > 0
	})
	m := dl.got()[0]
	if m.Topic != "cmd/valve/open" || string(m.Payload) != `{"pct":40}` || len(m.Props.User) != 1 || m.Props.User[0].Value != "7" {
		t.Fatalf("downlink message %+v", m)
	}
	// Commands for another node are not delivered.
	pub.Publish(ctx, t, "outpost/n2/cmd/valve/open", []byte("x"), nil)
	pub.Publish(ctx, t, "outpost/n1/cmd/last", []byte("y"), nil)
	waitFor(t, 10*time.Second, "second command", func() bool { return len(dl.got()) >= 2 })
	for _, m := range dl.got() {
		if string(m.Payload) == "x" {
			t.Fatal("command for node n2 delivered to n1")
		}
	}
	if st := h.u.Status(); st.Downlink != "outpost/n1/cmd/#" {
		t.Fatalf("status downlink %q", st.Downlink)
	}
}

func TestNegativePubackDeadLetters(t *testing.T) {
	// Anonymous clients may publish only under outpost/n1/t/ok.
	b := mosq.Start(t, mosq.Options{ACL: "topic readwrite outpost/n1/t/ok\ntopic read outpost/#\n"})
	sub := mosq.Subscribe(t, b, "outpost/#")
	cfg := testConfig(b.URL(), LaneConfig{Name: "telemetry"})
	cfg.MaxRejects = 2
	var dlMu sync.Mutex
	var dead []string
	h := newHarness(t, cfg, Options{DeadLetter: deadLetterFunc(func(lane string, rec queue.Record, reason string) {
		dlMu.Lock()
		dead = append(dead, lane+":"+reason)
		dlMu.Unlock()
	})})
	q := h.queues["telemetry"]
	for i, topic := range []string{"t/ok", "t/denied", "t/ok"} {
		q.Append(context.Background(), message.Encode(&message.Message{Topic: topic, Payload: []byte{byte('0' + i)}}))
	}
	h.start()
	sub.WaitN(t, 2, 10*time.Second)
	waitFor(t, 10*time.Second, "dead letter", func() bool { return h.lane("telemetry").DeadLettered == 1 })
	waitFor(t, 5*time.Second, "queue empty", func() bool { return q.Len() == 0 })
	ls := h.lane("telemetry")
	dlMu.Lock()
	defer dlMu.Unlock()
	if ls.Rejected != 2 || len(dead) != 1 || dead[0] != "telemetry:rejected_0x87" {
		t.Fatalf("rejected %d, dead letters %v", ls.Rejected, dead)
	}
}

type deadLetterFunc func(string, queue.Record, string)

func (f deadLetterFunc) DeadLetter(lane string, rec queue.Record, reason string) {
	f(lane, rec, reason)
}

func TestStopStartKeepsRecords(t *testing.T) {
	b := mosq.Start(t, mosq.Options{MaxQueued: -1})
	sub := mosq.Subscribe(t, b, "outpost/#")
	cfg := testConfig(b.URL(), LaneConfig{Name: "telemetry"})
	cfg.Bandwidth = 20 << 10 // slow: Stop comes mid-drain, with records read ahead but not sent
	h := newHarness(t, cfg, Options{})
	h.appendSeq("telemetry", 1, 3000)
	h.start()
	sub.WaitN(t, 100, 10*time.Second)
	h.stop()
	if h.u.Health().State != module.StateStopped {
		t.Fatalf("health after stop %+v", h.u.Health())
	}
	if got := sub.Len(); got >= 3000 {
		t.Fatalf("drain finished before Stop (%d): test proves nothing", got)
	}
	h.appendSeq("telemetry", 3001, 4000)
	if err := module.Of[Config](h.u).Init(context.Background(), testConfig(b.URL(), LaneConfig{Name: "telemetry"})); err != nil {
		t.Fatal(err)
	}
	h.start()
	msgs := sub.Wait(t, 20*time.Second, "all after restart", haveAll(4000, "telemetry"))
	checkLane(t, laneSeqs(t, msgs, "telemetry"), "telemetry", 4000)
}

func TestStopWhileOfflineThenStart(t *testing.T) {
	b := mosq.Start(t, mosq.Options{Persistence: true, MaxQueued: -1})
	sub := mosq.Subscribe(t, b, "outpost/#")
	b.Stop()
	cfg := testConfig(b.URL(), LaneConfig{Name: "telemetry"})
	h := newHarness(t, cfg, Options{})
	h.appendSeq("telemetry", 1, 1000)
	h.start()
	waitFor(t, 10*time.Second, "offline attempts", func() bool { return h.u.m.connectErrors.Get() >= 2 })
	h.stop() // records were read ahead while offline
	b.Start()
	if err := module.Of[Config](h.u).Init(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	h.start()
	msgs := sub.Wait(t, 20*time.Second, "all after offline stop/start", haveAll(1000, "telemetry"))
	checkLane(t, laneSeqs(t, msgs, "telemetry"), "telemetry", 1000)
}

func TestDisabled(t *testing.T) {
	u := New(Options{})
	if err := module.Of[Config](u).Init(context.Background(), Config{}); err != nil {
		t.Fatal(err)
	}
	if err := u.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if h := u.Health(); h.State != module.StateReady || h.Detail != "disabled" {
		t.Fatalf("health %+v", h)
	}
	if err := u.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := module.Of[Config](u).Init(context.Background(), 42); err == nil {
		t.Fatal("Init accepted an int")
	}
}
