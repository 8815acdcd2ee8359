package broker

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// The attacks of issue 10 on sessions, wills, shared subscriptions and the
// stores, reproduced over real TCP against the embedded broker, in MQTT
// 3.1.1 and 5 where both apply. The probe's setup: user dev may publish
// sensors/<client id>/# and subscribe cmd/<client id>/#; admin may do all.

func probeConfig() *Config {
	return &Config{
		Listeners: []Listener{{Type: TypeTCP, Address: "127.0.0.1:0"}},
		Users: []User{
			{Username: "dev", PasswordHash: testHash, ACL: []ACLRule{
				{Topic: "sensors/%c/#", Access: AccessPublish},
				{Topic: "cmd/%c/#", Access: AccessSubscribe},
			}},
			{Username: "admin", PasswordHash: testHash, ACL: []ACLRule{{Topic: "#", Access: AccessAll}}},
		},
	}
}

// rawOpts describe a CONNECT written byte by byte, in either protocol.
type rawOpts struct {
	v          byte // 4 (3.1.1) or 5
	id, user   string
	persistent bool // clean session 0; in MQTT 5 with a session expiry of an hour
	will       string
	willRetain bool
	willDelay  uint32 // MQTT 5 will delay interval, seconds
	receiveMax uint16 // MQTT 5 Receive Maximum (0: not sent)
}

type rawClient struct {
	net.Conn
	v byte
	r *packetReader
}

const noConnack = 0xFF // the broker closed the connection without a CONNACK

// rawConnect connects and returns the CONNACK's reason code (or noConnack)
// and session-present flag; the connection is closed by the test's cleanup.
func rawConnectOpts(t *testing.T, addr string, o rawOpts) (*rawClient, byte, bool) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	flags := byte(0)
	if !o.persistent {
		flags |= 0x02
	}
	var payload []byte
	payload = append(payload, mqttString(o.id)...)
	if o.will != "" {
		flags |= 0x04
		if o.willRetain {
			flags |= 0x20
		}
		if o.v == 5 {
			if o.willDelay > 0 {
				d := o.willDelay
				payload = append(payload, 5, 0x18, byte(d>>24), byte(d>>16), byte(d>>8), byte(d))
			} else {
				payload = append(payload, 0)
			}
		}
		payload = append(payload, mqttString(o.will)...)
		payload = append(payload, mqttString("gone")...)
	}
	if o.user != "" {
		flags |= 0x80 | 0x40
		payload = append(payload, mqttString(o.user)...)
		payload = append(payload, mqttString("secret")...)
	}
	vh := append(mqttString("MQTT"), o.v, flags, 0, 60)
	if o.v == 5 {
		var props []byte
		if o.persistent {
			props = append(props, 0x11, 0, 0, 0x0e, 0x10) // session expiry 3600 s
		}
		if o.receiveMax > 0 {
			props = append(props, 0x21, byte(o.receiveMax>>8), byte(o.receiveMax))
		}
		vh = append(append(vh, byte(len(props))), props...)
	}
	body := append(vh, payload...)
	if _, err := conn.Write(append(append([]byte{0x10}, remLen(len(body))...), body...)); err != nil {
		t.Fatal(err)
	}
	c := &rawClient{Conn: conn, v: o.v, r: newPacketReader(conn)}
	conn.SetReadDeadline(time.Now().Add(testTimeout))
	defer conn.SetReadDeadline(time.Time{})
	typ, b, err := c.r.next()
	if err != nil {
		return c, noConnack, false
	}
	if typ != 0x20 || len(b) < 2 {
		t.Fatalf("want CONNACK, got packet 0x%02x % x", typ, b)
	}
	return c, b[1], b[0]&1 == 1
}

func mustRaw(t *testing.T, addr string, o rawOpts) *rawClient {
	t.Helper()
	c, code, _ := rawConnectOpts(t, addr, o)
	if code != 0 {
		t.Fatalf("connect %s as %s (v%d): CONNACK 0x%02x", o.id, o.user, o.v, code)
	}
	return c
}

// subscribe sends one SUBSCRIBE (QoS 1) and returns the SUBACK's code.
func (c *rawClient) subscribe(t *testing.T, filter string) byte {
	t.Helper()
	body := []byte{0, 1}
	if c.v == 5 {
		body = append(body, 0)
	}
	body = append(append(body, mqttString(filter)...), 1)
	if _, err := c.Write(append(append([]byte{0x82}, remLen(len(body))...), body...)); err != nil {
		t.Fatal(err)
	}
	typ, b := c.expect(t, 0x90)
	_ = typ
	return b[len(b)-1]
}

// publish sends a QoS 1 publish and returns the PUBACK's reason code (0 for
// a 3.1.1 PUBACK), or noConnack if the broker closed the connection.
func (c *rawClient) publish(t *testing.T, topic string, retain bool, payload string) byte {
	t.Helper()
	h := byte(0x32)
	if retain {
		h |= 1
	}
	body := append(mqttString(topic), 0, 7)
	if c.v == 5 {
		body = append(body, 0)
	}
	body = append(body, payload...)
	if _, err := c.Write(append(append([]byte{h}, remLen(len(body))...), body...)); err != nil {
		return noConnack
	}
	c.SetReadDeadline(time.Now().Add(testTimeout))
	defer c.SetReadDeadline(time.Time{})
	for {
		typ, b, err := c.r.next()
		if err != nil {
			return noConnack
		}
		if typ == 0x40 {
			if len(b) > 2 {
				return b[2]
			}
			return 0
		}
	}
}

func (c *rawClient) expect(t *testing.T, want byte) (byte, []byte) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(testTimeout))
	defer c.SetReadDeadline(time.Time{})
	for {
		typ, b, err := c.r.next()
		if err != nil {
			t.Fatalf("waiting for packet 0x%02x: %v", want, err)
		}
		if typ&0xF0 == want {
			return typ, b
		}
	}
}

// topics reads the publishes that arrive within d, acknowledging QoS 1 ones.
func (c *rawClient) topics(t *testing.T, d time.Duration) []string {
	t.Helper()
	return c.topicsN(t, -1, d)
}

// topicsN reads publishes until n have come (then waits 200 ms for any
// extra one) or d has passed.
func (c *rawClient) topicsN(t *testing.T, n int, d time.Duration) []string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	defer c.SetReadDeadline(time.Time{})
	var out []string
	for {
		if len(out) == n {
			c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		}
		typ, b, err := c.r.next()
		if err != nil {
			return out
		}
		if typ>>4 != 3 {
			continue
		}
		tl := int(b[0])<<8 | int(b[1])
		out = append(out, string(b[2:2+tl]))
		if typ&0x06 != 0 {
			id := b[2+tl : 4+tl]
			c.Write([]byte{0x40, 0x02, id[0], id[1]})
		}
	}
}

func versionName(v byte) string {
	if v == 5 {
		return "v5"
	}
	return "v3.1.1"
}

// Attack 1: a will is a publish made later. dev must not command another
// device, write $SYS, or retain a message named cmd/# through it.
func TestWillMustBeAllowedToPublish(t *testing.T) {
	tb := startBroker(t, probeConfig(), "")
	obs := mustV5(t, tb.addr, "observer", "admin", "secret")
	obs.sub(t, "cmd/#", 1)
	obs.sub(t, "sensors/#", 1)
	for _, v := range []byte{4, 5} {
		for _, tc := range []struct {
			name   string
			will   string
			retain bool
			v5, v3 byte // CONNACK codes
		}{
			{"another device's command topic", "cmd/victim/reboot", false, 0x87, 0x05},
			{"$SYS topic", "$SYS/broker/version", false, 0x87, 0x05},
			{"retained wildcard topic", "cmd/#", true, 0x82, noConnack},
			{"plus wildcard", "sensors/+/x", false, 0x82, noConnack},
			{"own topic (allowed)", "sensors/dev1/status", false, 0, 0},
		} {
			t.Run(versionName(v)+"/"+tc.name, func(t *testing.T) {
				want := tc.v3
				if v == 5 {
					want = tc.v5
				}
				c, code, _ := rawConnectOpts(t, tb.addr, rawOpts{v: v, id: "dev1", user: "dev", will: tc.will, willRetain: tc.retain})
				if code != want {
					t.Fatalf("CONNACK 0x%02x, want 0x%02x", code, want)
				}
				c.Close() // no DISCONNECT: the will fires if it was accepted
				if want == 0 {
					expectMsg(t, obs.msgs, tc.will)
				}
			})
		}
	}
	if _, ok := tb.server().Topics.Retained.Get("cmd/#"); ok {
		t.Fatal("a message named cmd/# was retained")
	}
	expectNone(t, obs.msgs, 200*time.Millisecond)
}

// A will accepted at CONNECT is checked again when it fires: the ACL may
// have been reloaded meanwhile (here dev lost the right to publish it). An
// admin client with the same will delay drops at the same time; its will
// shows when dev's would have fired.
func TestWillCheckedAgainWhenItFires(t *testing.T) {
	for _, delay := range []uint32{0, 1} {
		t.Run(fmt.Sprintf("will_delay=%ds", delay), func(t *testing.T) {
			tb := startBroker(t, probeConfig(), "")
			obs := mustV5(t, tb.addr, "observer", "admin", "secret")
			obs.sub(t, "sensors/#", 1)
			dev := mustRaw(t, tb.addr, rawOpts{v: 5, id: "dev1", user: "dev", will: "sensors/dev1/status", willDelay: delay})
			ctl := mustRaw(t, tb.addr, rawOpts{v: 5, id: "ctl", user: "admin", will: "sensors/ctl/status", willDelay: delay})
			c := probeConfig()
			c.Users[0].ACL = []ACLRule{{Topic: "sensors/%c/data", Access: AccessPublish}}
			c.SetDefaults()
			if err := tb.Reconfigure(context.Background(), c); err != nil {
				t.Fatal(err)
			}
			dev.Close()
			waitFor(t, func() bool { return tb.Clients() == 2 }, "dev's disconnect")
			ctl.Close()
			for done := false; !done; {
				select {
				case m := <-obs.msgs:
					if m.Topic == "sensors/dev1/status" {
						t.Fatal("dev's will fired although dev may no longer publish it")
					}
					done = m.Topic == "sensors/ctl/status"
				case <-time.After(testTimeout):
					t.Fatal("the control client's will never came")
				}
			}
			expectNone(t, obs.msgs, 300*time.Millisecond)
		})
	}
}

// Attack 2: dev connects with admin's persistent client id. It must not get
// admin's session (subscriptions and queued messages), nor kick admin; and
// the owner is remembered across a restart.
func TestSessionBelongsToTheUserThatCreatedIt(t *testing.T) {
	for _, v := range []byte{4, 5} {
		t.Run(versionName(v), func(t *testing.T) {
			dir := t.TempDir()
			c := probeConfig()
			tb := startBroker(t, c, dir)
			own := mustRaw(t, tb.addr, rawOpts{v: v, id: "console", user: "admin", persistent: true})
			if code := own.subscribe(t, "secret/#"); code != 1 {
				t.Fatalf("SUBACK 0x%02x", code)
			}
			own.Close()
			waitFor(t, func() bool { return tb.Clients() == 0 }, "admin's disconnect")
			pub := mustV5(t, tb.addr, "publisher", "admin", "secret")
			if rc, err := pub.pub(t, "secret/key", 1, "s3cr3t"); rc != 0 || err != nil {
				t.Fatalf("publish: %d %v", rc, err)
			}
			want := byte(0x05)
			if v == 5 {
				want = 0x87
			}
			steal := func(addr string) {
				t.Helper()
				for _, persistent := range []bool{true, false} {
					thief, code, present := rawConnectOpts(t, addr, rawOpts{v: v, id: "console", user: "dev", persistent: persistent})
					if code != want {
						got := thief.topics(t, 500*time.Millisecond)
						t.Fatalf("dev with admin's client id (persistent %v): CONNACK 0x%02x session present %v, got %v; want CONNACK 0x%02x",
							persistent, code, present, got, want)
					}
				}
			}
			steal(tb.addr)

			// The owner survives a restart: the persisted session remembers it.
			if err := tb.Stop(context.Background()); err != nil {
				t.Fatal(err)
			}
			tb2 := startBroker(t, probeConfig(), dir)
			steal(tb2.addr)
			back, code, present := rawConnectOpts(t, tb2.addr, rawOpts{v: v, id: "console", user: "admin", persistent: true})
			if code != 0 || !present {
				t.Fatalf("owner back: CONNACK 0x%02x session present %v", code, present)
			}
			if got := back.topicsN(t, 1, testTimeout); len(got) != 1 || got[0] != "secret/key" {
				t.Fatalf("owner got %v, want its queued secret/key", got)
			}
		})
	}
}

// Nor can another user kick a connected owner (clean session) off by
// reusing its client id.
func TestForeignClientCannotKickOwner(t *testing.T) {
	tb := startBroker(t, probeConfig(), "")
	owner := mustV5(t, tb.addr, "console", "admin", "secret")
	owner.sub(t, "jobs/#", 1)
	for _, v := range []byte{4, 5} {
		if _, code, _ := rawConnectOpts(t, tb.addr, rawOpts{v: v, id: "console", user: "dev"}); code == 0 {
			t.Fatalf("v%d: dev connected with the connected owner's client id", v)
		}
	}
	pub := mustV5(t, tb.addr, "publisher", "admin", "secret")
	pub.pub(t, "jobs/1", 1, "x")
	expectMsg(t, owner.msgs, "jobs/1") // still connected and subscribed
}

// With foreign_session: fresh, the other user starts a fresh session: it
// gets none of the owner's subscriptions or queued messages.
func TestForeignSessionFresh(t *testing.T) {
	c := probeConfig()
	c.ForeignSession = ForeignSessionFresh
	tb := startBroker(t, c, "")
	own := mustRaw(t, tb.addr, rawOpts{v: 5, id: "console", user: "admin", persistent: true})
	own.subscribe(t, "#")
	own.Close()
	waitFor(t, func() bool { return tb.Clients() == 0 }, "admin's disconnect")
	pub := mustV5(t, tb.addr, "publisher", "admin", "secret")
	pub.pub(t, "cmd/console/x", 1, "for admin")
	thief, code, present := rawConnectOpts(t, tb.addr, rawOpts{v: 5, id: "console", user: "dev", persistent: true})
	if code != 0 || present {
		t.Fatalf("CONNACK 0x%02x session present %v, want a fresh session", code, present)
	}
	pub.pub(t, "cmd/console/y", 1, "after")
	if got := thief.topics(t, 500*time.Millisecond); len(got) != 0 {
		t.Fatalf("fresh session got %v", got)
	}
}

// Queued messages are checked against the ACL when they are delivered, not
// only when they were queued: a reload that denies a topic stops delivery
// of what was queued on it.
func TestQueuedMessagesCheckedAtDelivery(t *testing.T) {
	tb := startBroker(t, probeConfig(), "")
	own := mustRaw(t, tb.addr, rawOpts{v: 5, id: "console", user: "admin", persistent: true})
	own.subscribe(t, "jobs/#")
	own.Close()
	waitFor(t, func() bool { return tb.Clients() == 0 }, "disconnect")
	pub := mustV5(t, tb.addr, "publisher", "admin", "secret")
	pub.pub(t, "jobs/secret/1", 1, "x")
	pub.pub(t, "jobs/ok/1", 1, "y")
	c := probeConfig()
	c.Users[1].ACL = append([]ACLRule{{Topic: "jobs/secret/#", Access: AccessDeny}}, c.Users[1].ACL...)
	c.SetDefaults()
	if err := tb.Reconfigure(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	back, code, present := rawConnectOpts(t, tb.addr, rawOpts{v: 5, id: "console", user: "admin", persistent: true})
	if code != 0 || !present {
		t.Fatalf("CONNACK 0x%02x present %v", code, present)
	}
	if got := back.topicsN(t, 1, testTimeout); len(got) != 1 || got[0] != "jobs/ok/1" {
		t.Fatalf("got %v, want only jobs/ok/1", got)
	}
}

// The same holds for messages parked because the subscriber's Receive
// Maximum was reached: they are checked when a PUBACK releases them.
func TestParkedMessagesCheckedAtRelease(t *testing.T) {
	tb := startBroker(t, probeConfig(), "")
	sub := mustRaw(t, tb.addr, rawOpts{v: 5, id: "slow", user: "admin", receiveMax: 1})
	sub.subscribe(t, "jobs/#")
	pub := mustV5(t, tb.addr, "publisher", "admin", "secret")
	for _, topic := range []string{"jobs/ok/1", "jobs/secret/2", "jobs/ok/3"} {
		if rc, err := pub.pub(t, topic, 1, "x"); rc != 0 || err != nil {
			t.Fatalf("publish %s: %d %v", topic, rc, err)
		}
	}
	_, first := sub.expect(t, 0x30) // in flight; the other two are parked
	c := probeConfig()
	c.Users[1].ACL = append([]ACLRule{{Topic: "jobs/secret/#", Access: AccessDeny}}, c.Users[1].ACL...)
	c.SetDefaults()
	if err := tb.Reconfigure(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	tl := int(first[0])<<8 | int(first[1])
	id := first[2+tl : 4+tl]
	if _, err := sub.Write([]byte{0x40, 0x02, id[0], id[1]}); err != nil {
		t.Fatal(err)
	}
	if got := sub.topicsN(t, 1, testTimeout); len(got) != 1 || got[0] != "jobs/ok/3" {
		t.Fatalf("released %v, want only jobs/ok/3", got)
	}
}

// Attack 6: dev joins the backend's shared subscription group (granted,
// because # overlaps cmd/dev1/#). The broker must not hand dev a share of
// messages dev may not read: the backend gets all of them.
func TestSharedGroupMemberMustBeAllowed(t *testing.T) {
	tb := startBroker(t, probeConfig(), "")
	backend := mustV5(t, tb.addr, "backend", "admin", "secret")
	backend.sub(t, "$share/workers/#", 1)
	dev := mustRaw(t, tb.addr, rawOpts{v: 5, id: "dev1", user: "dev"})
	if code := dev.subscribe(t, "$share/workers/#"); code >= 0x80 {
		t.Logf("dev's shared subscription refused (0x%02x)", code)
	}
	pub := mustV5(t, tb.addr, "publisher", "admin", "secret")
	const n = 40
	for i := range n {
		if rc, err := pub.pub(t, fmt.Sprintf("jobs/%d", i), 1, "work"); rc != 0 || err != nil {
			t.Fatalf("publish %d: %d %v", i, rc, err)
		}
	}
	got := 0
	deadline := time.After(10 * time.Second)
	for got < n {
		select {
		case <-backend.msgs:
			got++
		case <-deadline:
			t.Fatalf("backend got %d of %d messages", got, n)
		}
	}
	// dev is still picked for what it may read.
	if rc, err := pub.pub(t, "cmd/dev1/go", 1, "x"); rc != 0 || err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-backend.msgs:
		if m.Topic != "cmd/dev1/go" {
			t.Fatalf("backend got extra %s", m.Topic)
		}
	case <-time.After(100 * time.Millisecond):
	}
}

// Attack 5 (store half): one record whose key is over bbolt's 32 KiB limit
// (a 40 KiB client id, possible when max_client_id_length is raised) fails
// alone and is counted; the other clients' state in the same batch is saved.
func TestOversizedKeyFailsAlone(t *testing.T) {
	dir := t.TempDir()
	c := probeConfig()
	c.Limits.MaxClientIDLength = 65535
	tb := startBroker(t, c, dir)
	long := strings.Repeat("x", 40<<10)
	huge := mustRaw(t, tb.addr, rawOpts{v: 5, id: long, user: "admin", persistent: true})
	huge.subscribe(t, "a/#")
	pub := mustV5(t, tb.addr, "publisher", "admin", "secret")
	if _, err := pub.Publish(context.Background(), &paho.Publish{Topic: "cfg/kept", QoS: 1, Retain: true, Payload: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	if err := tb.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := tb.counter(t, "outpost_broker_persistence_records_failed_total"); n == 0 {
		t.Error("the oversized record was not counted")
	}
	tb2 := startBroker(t, probeConfig(), dir)
	if _, ok := tb2.server().Topics.Retained.Get("cfg/kept"); !ok {
		t.Fatal("the retained message committed in the same batch as the oversized key was lost")
	}
}

// Attack 5 (protocol half): client ids, topics, will topics and filters are
// bounded at the protocol layer, refused with a reason code.
func TestKeyLengthLimits(t *testing.T) {
	c := probeConfig()
	tb := startBroker(t, c, "")
	longID := strings.Repeat("i", c.Limits.MaxClientIDLength+1)
	longTopic := "sensors/dev1/" + strings.Repeat("t", c.Limits.MaxTopicLength)
	for _, v := range []byte{4, 5} {
		t.Run(versionName(v), func(t *testing.T) {
			want := map[byte]byte{4: 0x02, 5: 0x85}[v]
			if _, code, _ := rawConnectOpts(t, tb.addr, rawOpts{v: v, id: longID, user: "dev"}); code != want {
				t.Errorf("long client id: CONNACK 0x%02x, want 0x%02x", code, want)
			}
			want = map[byte]byte{4: noConnack, 5: 0x90}[v]
			if _, code, _ := rawConnectOpts(t, tb.addr, rawOpts{v: v, id: "dev1", user: "dev", will: longTopic}); code != want {
				t.Errorf("long will topic: CONNACK 0x%02x, want 0x%02x", code, want)
			}
			ok := mustRaw(t, tb.addr, rawOpts{v: v, id: "dev1", user: "dev"})
			if code := ok.subscribe(t, "cmd/dev1/"+strings.Repeat("f", c.Limits.MaxTopicLength)); code != 0x80 && code != 0x8F {
				t.Errorf("long filter: SUBACK 0x%02x, want a refusal", code)
			}
			want = map[byte]byte{4: noConnack, 5: 0x90}[v]
			if code := ok.publish(t, longTopic, false, "x"); code != want {
				t.Errorf("long topic: PUBACK 0x%02x, want 0x%02x", code, want)
			}
		})
	}
	if n := tb.counter(t, `outpost_broker_limit_refusals_total{limit="topic_length"}`); n < 5 {
		t.Errorf("topic_length refusals counted: %d", n)
	}
}

// max_retained: a full retained store refuses new retained topics (PUBACK
// 0x97), still lets existing ones be replaced or deleted, and the bytes
// limit holds too. Wills do not get past it.
func TestMaxRetained(t *testing.T) {
	const sysTopics = 20 // the broker's own retained $SYS/broker/... topics
	c := probeConfig()
	c.Limits.MaxRetained = sysTopics + 3
	c.Limits.MaxRetainedBytes = 64 << 10
	tb := startBroker(t, c, "")
	if n := tb.server().Topics.Retained.Len(); n != sysTopics {
		t.Fatalf("%d retained topics at start, want %d", n, sysTopics)
	}
	p := mustRaw(t, tb.addr, rawOpts{v: 5, id: "admin1", user: "admin"})
	for i := range 3 {
		if code := p.publish(t, fmt.Sprintf("state/%d", i), true, "on"); code != 0 {
			t.Fatalf("retained %d: PUBACK 0x%02x", i, code)
		}
	}
	if code := p.publish(t, "state/3", true, "on"); code != 0x97 {
		t.Fatalf("retained beyond max_retained: PUBACK 0x%02x, want 0x97", code)
	}
	if code := p.publish(t, "state/0", true, "off"); code != 0 {
		t.Fatalf("replacing a retained message: PUBACK 0x%02x", code)
	}
	if code := p.publish(t, "state/1", true, ""); code != 0 {
		t.Fatalf("deleting a retained message: PUBACK 0x%02x", code)
	}
	if code := p.publish(t, "state/1", true, strings.Repeat("b", 70<<10)); code != 0x97 {
		t.Fatalf("retained beyond max_retained_bytes: PUBACK 0x%02x, want 0x97", code)
	}
	// A retained will on a new topic is published, but not retained.
	w := mustRaw(t, tb.addr, rawOpts{v: 5, id: "w1", user: "admin", will: "state/will1", willRetain: true})
	if code := p.publish(t, "state/1", true, "on"); code != 0 { // fills the store again
		t.Fatalf("retained: PUBACK 0x%02x", code)
	}
	w.Close()
	waitFor(t, func() bool { return tb.Clients() == 1 }, "will client's disconnect")
	if _, ok := tb.server().Topics.Retained.Get("state/will1"); ok {
		t.Fatal("a will was retained beyond max_retained")
	}
	if n := tb.counter(t, `outpost_broker_limit_refusals_total{limit="max_retained"}`); n < 2 {
		t.Errorf("max_retained refusals counted: %d", n)
	}
	if n := tb.counter(t, "outpost_broker_retained_bytes"); n == 0 || n > 64<<10 {
		t.Errorf("outpost_broker_retained_bytes %d", n)
	}
	if n := tb.counter(t, `outpost_broker_limit_refusals_total{limit="max_retained_bytes"}`); n != 1 {
		t.Errorf("max_retained_bytes refusals counted: %d", n)
	}
}

func TestSessionAndSizeConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string // "" = valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"fresh", func(c *Config) { c.ForeignSession = ForeignSessionFresh }, ""},
		{"unknown foreign_session", func(c *Config) { c.ForeignSession = "steal" }, "foreign_session"},
		{"client id under the MQTT minimum", func(c *Config) { c.Limits.MaxClientIDLength = 22 }, "limits.max_client_id_length"},
		{"client id over 65535", func(c *Config) { c.Limits.MaxClientIDLength = 65536 }, "limits.max_client_id_length"},
		{"topic length over 65535", func(c *Config) { c.Limits.MaxTopicLength = 70000 }, "limits.max_topic_length"},
		{"negative max_retained", func(c *Config) { c.Limits.MaxRetained = -1 }, "limits.max_retained"},
		{"negative max_retained_bytes", func(c *Config) { c.Limits.MaxRetainedBytes = -1 }, "limits.max_retained_bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := probeConfig()
			tc.mod(c)
			c.SetDefaults()
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want one about %s", err, tc.want)
			}
		})
	}
}

// A retained message under a wildcard topic, left in the store by a will
// before wills were checked, is deleted when the store is read.
func TestStoredWildcardRetainedIsDropped(t *testing.T) {
	path := filepath.Join(t.TempDir(), "broker.db")
	open := func() *store {
		st := newStore(path, time.Hour, slog.New(slog.DiscardHandler), newBrokerMetrics(metrics.NewSet(), New(Options{})))
		if err := st.Init(nil); err != nil {
			t.Fatal(err)
		}
		return st
	}
	st := open()
	for _, topic := range []string{"cmd/#", "ok/topic"} {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true}, TopicName: topic, Payload: []byte("x")}
		st.OnRetainMessage(&mqtt.Client{ID: "c"}, pk, 1)
	}
	if err := st.Stop(); err != nil {
		t.Fatal(err)
	}
	for range 2 { // the second open shows the record was deleted, not just skipped
		st = open()
		ms, err := st.StoredRetainedMessages()
		if err != nil {
			t.Fatal(err)
		}
		if len(ms) != 1 || ms[0].TopicName != "ok/topic" {
			t.Fatalf("stored retained messages %v, want only ok/topic", ms)
		}
		if err := st.Stop(); err != nil {
			t.Fatal(err)
		}
	}
}
