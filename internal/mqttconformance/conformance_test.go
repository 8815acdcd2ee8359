package mqttconformance

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/broker"
)

// quiet is how long a test waits to be sure a packet does not come.
const quiet = 400 * time.Millisecond

// TestPacketIdentifierSpacesAreSeparate: the Client and the Server assign
// Packet Identifiers independently (MQTT 5 section 2.2.1, 3.1.1 section
// 2.3.1): a client's SUBSCRIBE or PUBLISH may use an id the server has in
// flight to that client [MQTT-2.2.1-3] [MQTT-2.2.1-4], and must neither be
// refused (0x91, which 3.1.1 does not even have) nor disturb the server's
// own message with that id. The server resends its unacknowledged PUBLISH
// with DUP set on reconnect [MQTT-4.4.0-1] [MQTT-3.3.1-1]. The client's
// QoS 2 flow gets PUBREC and PUBCOMP with reason 0x00 [MQTT-4.3.3-8]
// [MQTT-4.3.3-11], also with user properties on the PUBLISH.
func TestPacketIdentifierSpacesAreSeparate(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			each(t, func(t *testing.T, v5 bool) {
				e := start(t, envOpts{mode: mode})
				sub := dial(t, e.addr, "sub", v5)
				sub.connect(connectOpts{id: "sub", clean: true, props: sessionProps(v5)})
				sub.disconnect()
				sub = dial(t, e.addr, "sub", v5)
				sub.connect(connectOpts{id: "sub", props: sessionProps(v5)})
				if a := sub.subscribe(1, subOpt{filter: "pid/#", qos: 1}); !bytes.Equal(a.codes, []byte{1}) {
					t.Fatalf("SUBACK %v", a)
				}
				sub.disconnect()

				// Two messages wait for the offline session.
				pub := dial(t, e.addr, "pub", v5)
				pub.connect(connectOpts{id: "pub", clean: true})
				for i := range 2 {
					pub.publish(pubOpts{topic: "pid/a", payload: fmt.Sprint("m", i), qos: 1, id: uint16(i + 1)})
					pub.expect(tPuback)
				}
				pub.ping()

				sub = dial(t, e.addr, "sub", v5)
				if ack := sub.connect(connectOpts{id: "sub", props: sessionProps(v5)}); !ack.sessionPresent {
					t.Fatal("CONNACK session present = 0 for a persistent session [MQTT-3.2.2-3]")
				}
				m1, m2 := sub.expect(tPublish), sub.expect(tPublish)
				if m1.qos() != 1 || m2.qos() != 1 || m1.id == m2.id {
					t.Fatalf("queued messages: %v, %v", m1, m2)
				}
				// The client uses the server's in-flight ids for its own packets.
				if a := sub.subscribe(m1.id, subOpt{filter: "pid2/#", qos: 1}); !bytes.Equal(a.codes, []byte{1}) {
					t.Fatalf("SUBSCRIBE with packet id %d (in flight from the server): SUBACK codes % x, want 01", m1.id, a.codes)
				}
				sub.publish(pubOpts{topic: "own/q1", payload: "x", qos: 1, id: m1.id})
				if a := sub.expect(tPuback); a.id != m1.id || !success(a.reason) {
					t.Fatalf("own QoS 1 PUBLISH id %d: %v, want PUBACK 0x00 or 0x10", m1.id, a)
				}
				up := props{}
				if v5 {
					up.user = [][2]string{{"k", "v"}}
				}
				sub.publish(pubOpts{topic: "own/q2", payload: "y", qos: 2, id: m2.id, props: up})
				if a := sub.expect(tPubrec); a.id != m2.id || !success(a.reason) {
					t.Fatalf("own QoS 2 PUBLISH id %d: %v, want PUBREC 0x00 or 0x10", m2.id, a)
				}
				sub.ack(tPubrel, m2.id)
				if a := sub.expect(tPubcomp); a.id != m2.id || a.reason != 0 {
					t.Fatalf("PUBREL id %d: %v, want PUBCOMP 0x00", m2.id, a)
				}
				// The server's messages are still in flight: acknowledge the
				// first only; the second comes again, DUP set, after reconnecting.
				sub.ack(tPuback, m1.id)
				sub.ping() // the PUBACK is processed before the session moves to the next connection
				sub.disconnect()
				sub = dial(t, e.addr, "sub", v5)
				sub.connect(connectOpts{id: "sub", props: sessionProps(v5)})
				again := sub.expect(tPublish)
				if again.id != m2.id || !again.dup() || string(again.payload) != string(m2.payload) {
					t.Fatalf("redelivery: %v, want %v with DUP", again, m2)
				}
				sub.ack(tPuback, again.id)
				sub.expectNothing(quiet)
			})
		})
	}
}

// TestQoS2Retransmission: a QoS 2 PUBLISH sent again with the same id
// before PUBREL is acknowledged again with PUBREC 0x00 and not delivered a
// second time [MQTT-4.3.3-10]; a SUBSCRIBE reusing that id, which the client
// still uses, is refused (MQTT 5: 0x91; 3.1.1: 0x80) [MQTT-2.2.1-3]
// [MQTT-3.9.3-2 (3.1.1)].
func TestQoS2Retransmission(t *testing.T) {
	each(t, func(t *testing.T, v5 bool) {
		e := start(t, envOpts{mode: modeSync})
		sub := dial(t, e.addr, "sub", v5)
		sub.connect(connectOpts{id: "sub", clean: true})
		sub.subscribe(1, subOpt{filter: "q2/#", qos: 2})
		pub := dial(t, e.addr, "pub", v5)
		pub.connect(connectOpts{id: "pub", clean: true})
		pub.publish(pubOpts{topic: "q2/a", payload: "once", qos: 2, id: 7})
		if a := pub.expect(tPubrec); !success(a.reason) {
			t.Fatalf("PUBREC %v", a)
		}
		pub.publish(pubOpts{topic: "q2/a", payload: "once", qos: 2, id: 7, dup: true})
		if a := pub.expect(tPubrec); a.id != 7 || !success(a.reason) {
			t.Fatalf("retransmitted PUBLISH: %v, want PUBREC 0x00 (or 0x10)", a)
		}
		want := byte(0x80)
		if v5 {
			want = 0x91
		}
		if a := pub.subscribe(7, subOpt{filter: "x/#", qos: 0}); !bytes.Equal(a.codes, []byte{want}) && !onMosquitto {
			// Mosquitto grants it (the check is a MAY); Outpost refuses.
			t.Fatalf("SUBSCRIBE with an id in use: codes % x, want %02x", a.codes, want)
		}
		pub.ack(tPubrel, 7)
		pub.expect(tPubcomp)
		m := sub.expect(tPublish)
		if string(m.payload) != "once" {
			t.Fatalf("delivered %v", m)
		}
		if m.qos() == 2 {
			sub.ack(tPubrec, m.id)
			sub.expect(tPubrel)
			sub.ack(tPubcomp, m.id)
		}
		sub.expectNothing(quiet)
	})
}

// TestMessageExpiry: a message whose Message Expiry Interval has passed
// before onward delivery started is deleted, not delivered
// [MQTT-3.3.2-5], for a session that was offline and for a message parked
// behind the client's Receive Maximum; a message delivered later carries the
// interval minus the time it waited [MQTT-3.3.2-6]; a message published
// without one is delivered without one (section 3.3.2.3.3: absent means it
// does not expire).
func TestMessageExpiry(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			each(t, func(t *testing.T, v5 bool) {
				t.Parallel() // most of its time is waiting for an expiry
				e := start(t, envOpts{mode: mode})
				sub := dial(t, e.addr, "sub", v5)
				// MQTT 5: clean start with a session expiry; 3.1.1: clean session 0.
				sub.connect(connectOpts{id: "sub", clean: v5, props: sessionProps(v5)})
				sub.subscribe(1, subOpt{filter: "exp/#", qos: 1})
				sub.disconnect()

				pub := dial(t, e.addr, "pub", true) // the publisher sets expiry (MQTT 5)
				pub.connect(connectOpts{id: "pub", clean: true})
				for i, m := range []struct {
					topic  string
					expiry *uint32
				}{{"exp/short", u32(1)}, {"exp/long", u32(60)}, {"exp/none", nil}} {
					pub.publish(pubOpts{topic: m.topic, payload: m.topic, qos: 1, id: uint16(i + 1), props: props{messageExpiry: m.expiry}})
					pub.expect(tPuback)
				}
				pub.ping()
				published := time.Now()
				time.Sleep(2100 * time.Millisecond) // the subject of the test: let exp/short expire (1 s, whole seconds)

				sub = dial(t, e.addr, "sub", v5)
				sub.connect(connectOpts{id: "sub", props: sessionProps(v5)})
				got := map[string]packet{}
				for range 2 {
					m := sub.expect(tPublish)
					got[m.topic] = m
					sub.ack(tPuback, m.id)
				}
				sub.expectNothing(quiet)
				if _, ok := got["exp/short"]; ok {
					t.Fatal("exp/short delivered after its Message Expiry Interval passed [MQTT-3.3.2-5]")
				}
				long, ok := got["exp/long"]
				if !ok {
					t.Fatalf("exp/long not delivered: %v", got)
				}
				if v5 {
					waited := uint32(time.Since(published) / time.Second)
					if long.props.messageExpiry == nil || *long.props.messageExpiry > 60-waited+1 || *long.props.messageExpiry < 50 {
						t.Fatalf("exp/long Message Expiry Interval %v after %d s, want 60 minus the wait [MQTT-3.3.2-6]", long.props.messageExpiry, waited)
					}
					if none := got["exp/none"]; none.props.messageExpiry != nil {
						t.Fatalf("exp/none (published without expiry) delivered with Message Expiry Interval %d", *none.props.messageExpiry)
					}
				}
			})
		})
	}
	// Parked behind Receive Maximum 1: the client holds the first message
	// unacknowledged while the second expires.
	t.Run("parked", func(t *testing.T) {
		t.Parallel()
		e := start(t, envOpts{mode: modeSync})
		sub := dial(t, e.addr, "sub", true)
		sub.connect(connectOpts{id: "sub", clean: true, props: props{receiveMaximum: u16(1)}})
		sub.subscribe(1, subOpt{filter: "exp/#", qos: 1})
		pub := dial(t, e.addr, "pub", true)
		pub.connect(connectOpts{id: "pub", clean: true})
		pub.publish(pubOpts{topic: "exp/first", payload: "1", qos: 1, id: 1})
		pub.expect(tPuback)
		first := sub.expect(tPublish)
		pub.publish(pubOpts{topic: "exp/parked", payload: "2", qos: 1, id: 2, props: props{messageExpiry: u32(1)}})
		pub.expect(tPuback)
		sub.expectNothing(quiet) // Receive Maximum 1 [MQTT-3.3.4-9]
		time.Sleep(2100 * time.Millisecond)
		sub.ack(tPuback, first.id)
		pub.publish(pubOpts{topic: "exp/after", payload: "3", qos: 1, id: 3})
		pub.expect(tPuback)
		if m := sub.expect(tPublish); m.topic != "exp/after" {
			t.Fatalf("after the first PUBACK got %v, want exp/after (exp/parked expired [MQTT-3.3.2-5])", m)
		}
	})
}

// TestRequestResponse: the Server sends the Response Topic and the
// Correlation Data unaltered to every subscriber [MQTT-3.3.2-15]
// [MQTT-3.3.2-16], so a responder's answer on the response topic reaches
// the requester (section 4.10), also when requester and responder share one
// topic with No Local [MQTT-3.8.3-3], at QoS 1 and 2, and when the responder
// answers before acknowledging the request, with its own packet id equal to
// the one the server used to deliver the request (independent id spaces,
// section 2.2.1): before the fix that answer was tangled with the delivery's
// flow and its QoS 2 handshake failed.
func TestRequestResponse(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			for _, qos := range []byte{1, 2} {
				for _, shared := range []bool{false, true} {
					t.Run(fmt.Sprintf("qos%d/same_topic=%v", qos, shared), func(t *testing.T) {
						e := start(t, envOpts{mode: mode})
						reqTopic, respTopic := "rr/req", "rr/resp/a"
						if shared {
							reqTopic, respTopic = "rr/both", "rr/both"
						}
						a := dial(t, e.addr, "requester", true)
						a.connect(connectOpts{id: "requester", clean: true})
						a.subscribe(1, subOpt{filter: respTopic, qos: qos, noLocal: true})
						b := dial(t, e.addr, "responder", true)
						b.connect(connectOpts{id: "responder", clean: true})
						b.subscribe(1, subOpt{filter: reqTopic, qos: qos, noLocal: true})

						a.publish(pubOpts{topic: reqTopic, payload: "request", qos: qos, id: 1,
							props: props{responseTopic: str(respTopic), correlationData: []byte("334")}})
						sendComplete(t, a, 1, qos)
						req := b.expect(tPublish)
						if req.props.responseTopic == nil || *req.props.responseTopic != respTopic || string(req.props.correlationData) != "334" {
							t.Fatalf("responder got response topic %v, correlation %q [MQTT-3.3.2-15] [MQTT-3.3.2-16]", req.props.responseTopic, req.props.correlationData)
						}
						// Answer first, with the delivery's packet id, then acknowledge.
						b.publish(pubOpts{topic: *req.props.responseTopic, payload: "response", qos: qos, id: req.id,
							props: props{correlationData: req.props.correlationData}})
						sendComplete(t, b, req.id, qos)
						recvComplete(t, b, req)
						resp := a.expect(tPublish)
						if string(resp.payload) != "response" || string(resp.props.correlationData) != "334" {
							t.Fatalf("requester got %v correlation %q", resp, resp.props.correlationData)
						}
						recvComplete(t, a, resp)
						a.expectNothing(quiet)
					})
				}
			}
		})
	}
}

// sendComplete finishes the sender's side of a QoS 1 or 2 PUBLISH with id:
// PUBACK, or PUBREC, PUBREL, PUBCOMP, each with a success code.
func sendComplete(t *testing.T, c *client, id uint16, qos byte) {
	t.Helper()
	if qos == 1 {
		if a := c.expect(tPuback); a.id != id || !success(a.reason) {
			t.Fatalf("%s: %v, want PUBACK %d", c.name, a, id)
		}
		return
	}
	if a := c.expect(tPubrec); a.id != id || !success(a.reason) {
		t.Fatalf("%s: %v, want PUBREC %d", c.name, a, id)
	}
	c.ack(tPubrel, id)
	if a := c.expect(tPubcomp); a.id != id || a.reason != 0 {
		t.Fatalf("%s: %v, want PUBCOMP %d", c.name, a, id)
	}
}

// recvComplete finishes the receiver's side of a delivered PUBLISH.
func recvComplete(t *testing.T, c *client, p packet) {
	t.Helper()
	switch p.qos() {
	case 1:
		c.ack(tPuback, p.id)
	case 2:
		c.ack(tPubrec, p.id)
		if r := c.expect(tPubrel); r.id != p.id || r.reason != 0 {
			t.Fatalf("%s: %v, want PUBREL %d", c.name, r, p.id)
		}
		c.ack(tPubcomp, p.id)
	}
}

// TestReceiveMaximumExceeded: the Server announces its Receive Maximum in
// CONNACK (section 3.2.2.3.3); a client that sends more QoS>0 PUBLISH
// packets than that without their PUBACK/PUBCOMP [MQTT-3.3.4-7] gets
// DISCONNECT with Reason Code 0x93 (section 3.3.4, 4.13); QoS 0 publishes do
// not count.
func TestReceiveMaximumExceeded(t *testing.T) {
	const rm = 3
	t.Run("qos2", func(t *testing.T) {
		// Mosquitto 2.0.11 answers the extra QoS 2 PUBLISH with PUBREC 0x97
		// and closes the connection, without DISCONNECT 0x93.
		outpostOnly(t, "Mosquitto 2.0.11 sends PUBREC 0x97 instead of DISCONNECT 0x93")
		e := start(t, envOpts{mode: modeSync, receiveMax: rm})
		c := dial(t, e.addr, "c", true)
		if ack := c.connect(connectOpts{id: "c", clean: true}); ack.props.receiveMaximum == nil || *ack.props.receiveMaximum != rm {
			t.Fatalf("CONNACK Receive Maximum %v, want %d", ack.props.receiveMaximum, rm)
		}
		for i := range rm {
			c.publish(pubOpts{topic: "rm/x", payload: "p", qos: 2, id: uint16(i + 1)})
			c.expect(tPubrec)
		}
		c.publish(pubOpts{topic: "rm/x", payload: "qos0 does not count", qos: 0})
		c.expectNothing(quiet)
		c.publish(pubOpts{topic: "rm/x", payload: "one too many", qos: 2, id: rm + 1})
		expectDisconnect(t, c, 0x93)
	})
	t.Run("qos1_async", func(t *testing.T) {
		outpostOnly(t, "holds the pipeline's acknowledgements")
		e := start(t, envOpts{mode: modeAsync, receiveMax: rm})
		e.holdAcks() // the pipeline has not committed: PUBACKs are outstanding
		c := dial(t, e.addr, "c", true)
		c.connect(connectOpts{id: "c", clean: true})
		for i := range rm + 1 {
			c.publish(pubOpts{topic: "rm/x", payload: "p", qos: 1, id: uint16(i + 1)})
		}
		expectDisconnect(t, c, 0x93)
	})
	t.Run("within_limit_async", func(t *testing.T) {
		outpostOnly(t, "the asynchronous PUBACK path")
		e := start(t, envOpts{mode: modeAsync, receiveMax: rm})
		c := dial(t, e.addr, "c", true)
		c.connect(connectOpts{id: "c", clean: true})
		// A client that always waits for a PUBACK before its next publish
		// beyond the window is never disconnected.
		next := uint16(1)
		for range rm {
			c.publish(pubOpts{topic: "rm/x", payload: "p", qos: 1, id: next})
			next++
		}
		for range 50 {
			c.expect(tPuback)
			c.publish(pubOpts{topic: "rm/x", payload: "p", qos: 1, id: next})
			next++
		}
		for range rm {
			c.expect(tPuback)
		}
	})
}

// success reports whether a PUBACK/PUBREC reason code is a success: 0x00,
// or 0x10 "No matching subscribers" (MQTT 5 sections 3.4.2.1, 3.5.2.1).
func success(code byte) bool { return code == 0x00 || code == 0x10 }

func expectDisconnect(t *testing.T, c *client, code byte) {
	t.Helper()
	got := c.expectClosed()
	for _, p := range got {
		if p.typ == tDisconnect {
			if p.reason != code {
				t.Fatalf("DISCONNECT reason 0x%02x, want 0x%02x", p.reason, code)
			}
			return
		}
	}
	t.Fatalf("connection closed without DISCONNECT 0x%02x; got %v", code, got)
}

// TestDollarTopics: the Server does not match Topic Filters starting with a
// wildcard (# or +) with Topic Names beginning with $ [MQTT-4.7.2-1], for
// live and retained messages and shared subscriptions; a filter starting
// with $ matches them. Outpost's ACLs follow the same rule: a rule '#'
// grants no $ topic; a rule must name the $ prefix ('$app/#'). A client
// cannot publish to $SYS (section 4.7.2): refused like an ACL denial, never
// ignored without an acknowledgement.
func TestDollarTopics(t *testing.T) {
	each(t, func(t *testing.T, v5 bool) {
		e := start(t, envOpts{mode: modeSync, users: []broker.User{
			user("hash", rule("#", broker.AccessAll)),
			user("app", rule("#", broker.AccessAll), rule("$app/#", broker.AccessAll)),
		}})
		pub := dial(t, e.addr, "pub", v5)
		pub.connect(connectOpts{id: "pub", clean: true}) // anonymous: '#' and '$app/#'
		pub.publish(pubOpts{topic: "$app/retained", payload: "r", qos: 1, id: 1, retain: true})
		pub.expect(tPuback)
		pub.ping() // the publisher's read loop has finished that publish's fan-out

		wild := dial(t, e.addr, "wild", v5)
		wild.connect(connectOpts{id: "wild", clean: true})
		filters := []subOpt{{filter: "#", qos: 1}, {filter: "+/live", qos: 1}}
		if v5 {
			filters = append(filters, subOpt{filter: "$share/g/#", qos: 1})
		}
		wild.subscribe(1, filters...)
		exact := dial(t, e.addr, "exact", v5)
		exact.connect(connectOpts{id: "exact", clean: true})
		exact.subscribe(1, subOpt{filter: "$app/#", qos: 1})
		if r := exact.expect(tPublish); r.topic != "$app/retained" {
			t.Fatalf("$app/# subscriber got %v, want the retained $app message", r)
		}
		pub.publish(pubOpts{topic: "$app/live", payload: "l", qos: 1, id: 2})
		pub.expect(tPuback)
		if m := exact.expect(tPublish); m.topic != "$app/live" {
			t.Fatalf("$app/# subscriber got %v", m)
		}
		wild.expectNothing(quiet)

		// ACL: '#' grants no $ topic.
		outpostOnly(t, "Outpost's ACL rules")
		h := dial(t, e.addr, "hash", v5)
		h.connect(connectOpts{id: "hash", user: "hash", pass: password, clean: true})
		want := byte(0x87)
		if !v5 {
			want = 0x80
		}
		if a := h.subscribe(1, subOpt{filter: "$app/#", qos: 1}); !bytes.Equal(a.codes, []byte{want}) {
			t.Fatalf("subscribe $app/# with ACL '#': codes % x, want %02x", a.codes, want)
		}
		a := dial(t, e.addr, "app", v5)
		a.connect(connectOpts{id: "app", user: "app", pass: password, clean: true})
		if s := a.subscribe(1, subOpt{filter: "$app/#", qos: 1}); !bytes.Equal(s.codes, []byte{1}) {
			t.Fatalf("subscribe $app/# with ACL '$app/#': codes % x", s.codes)
		}
		for _, topic := range []string{"$app/x", "$SYS/x"} {
			h.publish(pubOpts{topic: topic, payload: "no", qos: 1, id: 9})
			if v5 {
				if r := h.expect(tPuback); r.reason != 0x87 {
					t.Fatalf("publish %s with ACL '#': %v, want PUBACK 0x87", topic, r)
				}
			} else {
				h.expectClosed() // 3.1.1 has no negative PUBACK: the connection is closed
				h = dial(t, e.addr, "hash", v5)
				h.connect(connectOpts{id: "hash", user: "hash", pass: password, clean: true})
			}
		}
	})
}

// TestTopicAliasReuse: a PUBLISH with a Topic Alias and an empty Topic Name
// uses the topic the alias was set to [MQTT-3.3.2-12]; authorisation applies
// to that topic, so it works for a user whose ACL allows only that topic.
func TestTopicAliasReuse(t *testing.T) {
	outpostOnly(t, "users with Outpost ACLs")
	e := start(t, envOpts{mode: modeSync, users: []broker.User{
		user("dev", rule("sensors/%c/#", broker.AccessPublish), rule("sensors/#", broker.AccessSubscribe)),
	}})
	sub := dial(t, e.addr, "sub", true)
	sub.connect(connectOpts{id: "sub", clean: true})
	sub.subscribe(1, subOpt{filter: "sensors/#", qos: 1})
	d := dial(t, e.addr, "d1", true)
	d.connect(connectOpts{id: "d1", user: "dev", pass: password, clean: true})
	d.publish(pubOpts{topic: "sensors/d1/t", payload: "1", qos: 1, id: 1, props: props{topicAlias: 1}})
	if a := d.expect(tPuback); a.reason != 0 {
		t.Fatalf("publish setting alias 1: %v", a)
	}
	d.publish(pubOpts{topic: "", payload: "2", qos: 1, id: 2, props: props{topicAlias: 1}})
	if a := d.expect(tPuback); a.reason != 0 {
		t.Fatalf("publish reusing alias 1: %v, want PUBACK 0x00", a)
	}
	for _, want := range []string{"1", "2"} {
		m := sub.expect(tPublish)
		if m.topic != "sensors/d1/t" || string(m.payload) != want {
			t.Fatalf("subscriber got %v, want %q on sensors/d1/t", m, want)
		}
		sub.ack(tPuback, m.id)
	}
	// An alias never set, with an empty topic, is a Protocol Error
	// [MQTT-3.3.2-8] (section 3.3.2.3.4).
	d.publish(pubOpts{topic: "", payload: "3", qos: 1, id: 3, props: props{topicAlias: 2}})
	expectDisconnect(t, d, 0x82)
}

// TestReservedPacketType: packet type 0 is reserved (MQTT 5 section 2.1.2,
// 3.1.1 section 2.2.1): the connection is closed at once, without waiting
// for the body its length byte announces (section 4.13: malformed packet).
func TestReservedPacketType(t *testing.T) {
	outpostOnly(t, "Mosquitto 2.0.11 reads the announced body before refusing the type")
	each(t, func(t *testing.T, v5 bool) {
		e := start(t, envOpts{mode: modeSync})
		c := dial(t, e.addr, "c", v5)
		c.connect(connectOpts{id: "c", clean: true})
		c.send([]byte{0x00, 0x31})           // announces 49 bytes that never come
		for _, p := range c.expectClosed() { // a DISCONNECT is optional [MQTT-4.13.1-1]
			if p.typ != tDisconnect || p.reason != 0x81 {
				t.Fatalf("before closing, the broker sent %v", p)
			}
		}
	})
}

// TestTopicAliasNotCarriedAcrossConnections: Topic Alias mappings last one
// Network Connection and are not carried to the next [MQTT-3.3.2-7]: a
// message sent with an alias (and an empty topic name) and not acknowledged
// is resent on the next connection with its topic name [MQTT-4.4.0-1].
func TestTopicAliasNotCarriedAcrossConnections(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			e := start(t, envOpts{mode: mode})
			cp := connectOpts{id: "sub", clean: true, props: props{sessionExpiry: u32(300), topicAliasMax: u16(5)}}
			sub := dial(t, e.addr, "sub", true)
			sub.connect(cp)
			sub.subscribe(1, subOpt{filter: "alias/#", qos: 1})
			pub := dial(t, e.addr, "pub", true)
			pub.connect(connectOpts{id: "pub", clean: true})
			for i := range 2 {
				pub.publish(pubOpts{topic: "alias/t", payload: fmt.Sprint(i), qos: 1, id: uint16(i + 1)})
				pub.expect(tPuback)
			}
			first, second := sub.expect(tPublish), sub.expect(tPublish)
			if first.topic != "alias/t" {
				t.Fatalf("first delivery %v", first)
			}
			if second.topic != "" && second.topic != "alias/t" {
				t.Fatalf("second delivery %v", second)
			}
			sub.ack(tPuback, first.id)
			sub.ping()
			sub.disconnect()
			sub = dial(t, e.addr, "sub", true)
			cp.clean = false
			sub.connect(cp)
			again := sub.expect(tPublish)
			if again.topic != "alias/t" || string(again.payload) != "1" {
				t.Fatalf("resent on the next connection: %v alias %d, want topic alias/t [MQTT-3.3.2-7]", again, again.props.topicAlias)
			}
			sub.ack(tPuback, again.id)
		})
	}
}

// TestKeepAliveClosesAStalledPacket: a client that goes silent inside a
// packet is disconnected after one and a half times its Keep Alive
// [MQTT-3.1.2-24] (3.1.1: [MQTT-3.1.2-24] too), so a stalled connection ends
// and the client can reconnect and resend.
func TestKeepAliveClosesAStalledPacket(t *testing.T) {
	outpostOnly(t, "Mosquitto 2.0.11 did not close the connection within 5 s")
	each(t, func(t *testing.T, v5 bool) {
		t.Parallel()
		e := start(t, envOpts{mode: modeSync})
		c := dial(t, e.addr, "c", v5)
		c.connect(connectOpts{id: "c", clean: true, keepAlive: 1})
		began := time.Now()
		c.send([]byte{0x30, 20, 0, 3, 'a'}) // a PUBLISH announcing 20 bytes, 3 sent
		for _, p := range c.expectClosed() {
			if p.typ != tDisconnect {
				t.Fatalf("before closing, the broker sent %v", p)
			}
		}
		if d := time.Since(began); d > 4*time.Second {
			t.Fatalf("closed after %v, want about 1.5 s (Keep Alive 1 s)", d)
		}
	})
}
