package broker

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/message"
)

// startAsyncBroker runs a broker whose pipeline completes QoS 1 publishes
// asynchronously after a random delay (so completions arrive out of order),
// refusing topics under "reject/".
func startAsyncBroker(t *testing.T, receiveMax int) (*Broker, string, *atomic.Int64) {
	t.Helper()
	c := baseConfig(t)
	c.Limits.ReceiveMaximum = receiveMax
	c.SetDefaults()
	var outstanding, peak atomic.Int64
	b := New(Options{DataDir: t.TempDir(), OnPublishAsync: func(m *message.Message, done func(error)) {
		n := outstanding.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		go func() {
			time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
			outstanding.Add(-1)
			if len(m.Topic) > 7 && m.Topic[:7] == "reject/" {
				done(fmt.Errorf("lane full: %w", message.ErrRejected))
				return
			}
			done(nil)
		}()
	}})
	if err := b.Init(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Stop(context.Background()) })
	return b, b.Addr("tcp"), &peak
}

// TestAsyncPubacksInArrivalOrder: completions come back in random order, but
// PUBACKs leave in the order the publishes arrived [MQTT-4.6.0-2], and no
// more than receive_maximum publishes wait for their PUBACK at once.
func TestAsyncPubacksInArrivalOrder(t *testing.T) {
	_, addr, peak := startAsyncBroker(t, 16)
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write(connectPacket("ordered", "admin", "secret"))
	readConnack(t, conn)
	const n = 2000
	go func() {
		for i := 1; i <= n; i++ {
			conn.Write(publishQoS1(fmt.Sprintf("a/%d", i%5), uint16(i), []byte("x")))
		}
	}()
	r := newPacketReader(conn)
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	for want := 1; want <= n; want++ {
		typ, body, err := r.next()
		if err != nil {
			t.Fatalf("after %d PUBACKs: %v", want-1, err)
		}
		if typ>>4 != 4 {
			t.Fatalf("packet type %x, want PUBACK", typ)
		}
		if got := int(body[0])<<8 | int(body[1]); got != want {
			t.Fatalf("PUBACK for packet %d, want %d: out of order", got, want)
		}
	}
	if p := peak.Load(); p > 16 {
		t.Fatalf("%d publishes awaited their PUBACK at once, receive_maximum is 16", p)
	}
}

// TestAsyncRefusal: MQTT 5 gets PUBACK 0x97; MQTT 3.1.1, which has no
// negative PUBACK, is disconnected without one so that it resends.
func TestAsyncRefusal(t *testing.T) {
	_, addr, _ := startAsyncBroker(t, 16)
	v5 := mustV5(t, addr, "v5", "admin", "secret")
	if rc, _ := v5.pub(t, "ok/1", 1, "x"); rc != 0 {
		t.Fatalf("accepted publish: 0x%x", rc)
	}
	if rc, _ := v5.pub(t, "reject/1", 1, "x"); rc != 0x97 {
		t.Fatalf("refused publish: 0x%x, want 0x97", rc)
	}
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write(connectPacket("v3", "admin", "secret"))
	readConnack(t, conn)
	conn.Write(publishQoS1("reject/2", 7, []byte("x")))
	conn.SetReadDeadline(time.Now().Add(testTimeout))
	buf := make([]byte, 16)
	k, err := conn.Read(buf)
	if err == nil {
		t.Fatalf("3.1.1 client got % x instead of a disconnect", buf[:k])
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("3.1.1 client was neither answered nor disconnected in %s", testTimeout)
	}
}

// TestAsyncLocalSubscribersStillReceive: the local fan-out does not wait for
// durability, keeps retained messages, and honours No Local (the publisher's
// id is the message's origin).
func TestAsyncLocalSubscribersStillReceive(t *testing.T) {
	_, addr, _ := startAsyncBroker(t, 16)
	sub := mustV5(t, addr, "sub", "admin", "secret")
	sub.sub(t, "data/#", 1)
	pub := mustV5(t, addr, "pub", "admin", "secret")
	if rc, _ := pub.pub(t, "data/x", 1, "hello"); rc != 0 {
		t.Fatalf("0x%x", rc)
	}
	if m := expectMsg(t, sub.msgs, "data/x"); string(m.Payload) != "hello" {
		t.Fatalf("payload %q", m.Payload)
	}
}

// TestAsyncBatchedPubacksKeepOrderAndCodes: PUBACKs released together go out
// in one write; accepted and refused publishes interleaved still get their
// own codes, in arrival order. For 3.1.1 the acknowledgements due before a
// refusal are sent before the disconnect.
func TestAsyncBatchedPubacksKeepOrderAndCodes(t *testing.T) {
	_, addr, _ := startAsyncBroker(t, 64)
	v5 := mustV5(t, addr, "mixed", "admin", "secret")
	for i := 1; i <= 200; i++ {
		topic, want := fmt.Sprintf("ok/%d", i), byte(0)
		if i%7 == 0 {
			topic, want = fmt.Sprintf("reject/%d", i), 0x97
		}
		if rc, _ := v5.pub(t, topic, 1, "x"); rc != want {
			t.Fatalf("publish %d to %s: reason 0x%x, want 0x%x", i, topic, rc, want)
		}
	}

	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write(connectPacket("v3mixed", "admin", "secret"))
	readConnack(t, conn)
	var burst []byte
	for i := 1; i <= 20; i++ {
		burst = append(burst, publishQoS1(fmt.Sprintf("ok/%d", i), uint16(i), []byte("x"))...)
	}
	burst = append(burst, publishQoS1("reject/21", 21, []byte("x"))...)
	conn.Write(burst)
	r := newPacketReader(conn)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for want := 1; want <= 20; want++ {
		typ, body, err := r.next()
		if err != nil {
			t.Fatalf("after %d PUBACKs: %v", want-1, err)
		}
		if got := int(body[0])<<8 | int(body[1]); typ>>4 != 4 || got != want {
			t.Fatalf("packet type %x id %d, want PUBACK %d", typ, got, want)
		}
	}
	if typ, body, err := r.next(); err == nil {
		t.Fatalf("3.1.1 client got packet %x % x after the refusal instead of a disconnect", typ, body)
	}
}

// TestAsyncFanoutSkipsOnlyTopicsWithoutSubscribers: a topic published while
// nobody subscribes is remembered as having no local subscribers; a network
// or inline subscription added later must still receive it.
func TestAsyncFanoutSkipsOnlyTopicsWithoutSubscribers(t *testing.T) {
	b, addr, _ := startAsyncBroker(t, 16)
	pub := mustV5(t, addr, "pub", "admin", "secret")
	for i := 0; i < 3; i++ { // cached as "no subscribers"
		if rc, _ := pub.pub(t, "lonely/x", 1, "nobody"); rc != 0 {
			t.Fatalf("0x%x", rc)
		}
	}
	sub := mustV5(t, addr, "sub", "admin", "secret")
	sub.sub(t, "lonely/+", 1)
	if rc, _ := pub.pub(t, "lonely/x", 1, "net"); rc != 0 {
		t.Fatalf("0x%x", rc)
	}
	if m := expectMsg(t, sub.msgs, "lonely/x"); string(m.Payload) != "net" {
		t.Fatalf("network subscriber got %q", m.Payload)
	}

	for i := 0; i < 3; i++ {
		pub.pub(t, "quiet/y", 1, "nobody")
	}
	got := make(chan string, 1)
	cancel, err := b.Subscribe("quiet/#", func(_ string, p []byte) {
		select {
		case got <- string(p):
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cancel()
	pub.pub(t, "quiet/y", 1, "inline")
	select {
	case p := <-got:
		if p != "inline" {
			t.Fatalf("inline subscriber got %q", p)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("inline subscription added after the topic was cached received nothing")
	}
}
