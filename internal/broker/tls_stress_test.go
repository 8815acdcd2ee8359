package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"github.com/eclipse/paho.golang/paho/log"
)

// The "TLS stall" (docs/broker.md, issue 9 item 5) was in the client, not
// the broker: paho.golang writes one packet with several Write calls (one per
// buffer: fixed header, variable header, properties, payload) and serialises
// them only when the connection implements sync.Locker; its pinger goroutine
// writes PINGREQ concurrently. Over plain TCP net.Buffers goes out as one
// writev, so packets never interleaved; a *tls.Conn gets one Write (one TLS
// record) per buffer, and a PINGREQ landed inside a PUBLISH: the broker read
// the PINGREQ's first byte as the payload (acknowledging a corrupted
// message), then a reserved packet type 0 whose "remaining length" was the
// real payload byte, and waited for a body that never came. Every paho client
// over TLS must get its connection through packets.NewThreadSafeConn.

// tlsStressPinger sends a PINGREQ every interval from its own goroutine,
// exactly as paho's DefaultPinger does (packets.ControlPacket.WriteTo on the
// client's connection), but often, so that a connection that does not
// serialise whole packets interleaves within milliseconds instead of once in
// hundreds of connections.
type tlsStressPinger struct{ interval time.Duration }

func (p tlsStressPinger) Run(ctx context.Context, conn net.Conn, _ uint16) error {
	tk := time.NewTicker(p.interval)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tk.C:
			if _, err := packets.NewControlPacket(packets.PINGREQ).WriteTo(conn); err != nil {
				return err
			}
		}
	}
}
func (tlsStressPinger) PacketSent()         {}
func (tlsStressPinger) PacketReceived()     {}
func (tlsStressPinger) PingResp()           {}
func (tlsStressPinger) SetDebug(log.Logger) {}

// TestTLSQoS1UnderCPUStress: over TLS, paho MQTT 5 clients publish QoS 1
// messages while their pinger writes concurrently and the CPU is saturated;
// every publish must be acknowledged and reach the pipeline intact.
// Before the fix (a *tls.Conn handed to paho unwrapped) it failed within
// the first seconds: a publish without PUBACK, or a corrupted payload.
func TestTLSQoS1UnderCPUStress(t *testing.T) {
	budget := 8 * time.Second
	if d, err := time.ParseDuration(os.Getenv("OUTPOST_TLS_STRESS")); err == nil {
		budget = d
	}
	dir := t.TempDir()
	ca, caKey := newCA(t)
	serverCert, serverKey := writeCert(t, dir, "server", &signer{ca, caKey})
	c := baseConfig(t)
	c.Listeners = []Listener{{Name: "tls", Type: TypeTLS, Address: "127.0.0.1:0",
		TLS: TLS{CertFile: serverCert, KeyFile: serverKey}}}
	c.AllowAnonymous = true // no password hash per connection: bcrypt under -race takes seconds
	c.AnonymousACL = []ACLRule{{Topic: "stress/#", Access: AccessAll}}
	tb := startBroker(t, c, "")
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	dial := func() (net.Conn, error) {
		conn, err := tls.Dial("tcp", tb.addr, &tls.Config{RootCAs: pool, ServerName: "localhost"})
		if err != nil {
			return nil, err
		}
		return wrapConn(conn), nil
	}

	end := time.Now().Add(budget)
	var burn sync.WaitGroup
	for range runtime.NumCPU() {
		burn.Add(1)
		go func() { // CPU stress, bounded by the budget
			defer burn.Done()
			x := 0
			for time.Now().Before(end) {
				for i := range 100000 {
					x += i
				}
			}
			_ = x
		}()
	}
	defer burn.Wait()

	var (
		mu       sync.Mutex
		failures []string
		conns    int
		sent     = map[string]bool{}
	)
	fail := func(f string, a ...any) {
		mu.Lock()
		failures = append(failures, fmt.Sprintf(f, a...))
		mu.Unlock()
	}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("stress%d", w)
			for n := 0; time.Now().Before(end); n++ {
				conn, err := dial()
				if err != nil {
					fail("%s: dial: %v", id, err)
					return
				}
				cl := paho.NewClient(paho.ClientConfig{ClientID: id, Conn: conn,
					PingHandler: tlsStressPinger{interval: 200 * time.Microsecond}})
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				cp := &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true}
				if _, err := cl.Connect(ctx, cp); err != nil {
					cancel()
					conn.Close()
					fail("%s connection %d: connect: %v", id, n, err)
					return
				}
				for i := range 5 {
					payload := fmt.Sprintf("%s-%d-%d-%s", id, n, i, "payload-long-enough-to-be-its-own-record")
					mu.Lock()
					sent[payload] = true
					mu.Unlock()
					r, err := cl.Publish(ctx, &paho.Publish{Topic: "stress/" + id, QoS: 1, Payload: []byte(payload)})
					if err != nil || r == nil || r.ReasonCode != 0 {
						fail("%s connection %d publish %d: no PUBACK: %+v %v", id, n, i, r, err)
						cancel()
						conn.Close()
						return
					}
				}
				_ = cl.Disconnect(&paho.Disconnect{})
				cancel()
				mu.Lock()
				conns++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for _, f := range failures {
		t.Error(f)
	}
	// Every message the pipeline got is one that was sent, byte for byte.
	for {
		select {
		case m := <-tb.got:
			if !sent[string(m.Payload)] {
				t.Errorf("pipeline got a corrupted payload %q on %s", m.Payload, m.Topic)
			}
			continue
		default:
		}
		break
	}
	t.Logf("%d TLS connections, 5 QoS 1 publishes each, with a concurrent pinger", conns)
	if conns == 0 {
		t.Fatal("no connection completed")
	}
}

// wrapConn makes c safe for paho: its packets are written whole even when
// its pinger or acknowledgement goroutines write concurrently.
func wrapConn(c net.Conn) net.Conn { return packets.NewThreadSafeConn(c) }
