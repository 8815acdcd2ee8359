package broker

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/message"
)

// lockedBuffer is a log sink safe for concurrent handlers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

const (
	payloadMarker  = "PAYLOAD-MARKER-7f3a"
	passwordMarker = "PASSWORD-MARKER-91c2"
)

// TestLogsNeverHoldPayloadsOrPasswords drives every path that used to log a
// packet (a refused 3.1.1 and 5 publish, a second CONNECT, a malformed
// packet, a refused will) with the broker logging at debug level, then greps
// the captured log: no payload byte and no password may appear. One
// SUBSCRIBE with 3000 refused filters must not write more than a few lines.
// Before the fix the log held the payload (a ~3 KB packet dump at WARN for
// the 3.1.1 refusal), the second CONNECT's password, and 3000 lines for the
// SUBSCRIBE.
func TestLogsNeverHoldPayloadsOrPasswords(t *testing.T) {
	var buf lockedBuffer
	logger := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c := baseConfig(t)
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	b := New(Options{Logger: logger, DataDir: t.TempDir(), OnPublish: func(m *message.Message) error {
		if m.Topic == "reject/me" {
			return fmt.Errorf("full: %w", message.ErrRejected)
		}
		return nil
	}})
	ctx := context.Background()
	if err := b.Init(ctx, c); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer b.Stop(context.Background())
	addr := b.Addr(c.Listeners[0].Name)
	payload := []byte(strings.Repeat(payloadMarker, 100)) // ~2 KB, like a device's batch

	conn := func(id string) net.Conn {
		t.Helper()
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
		nc.Write(connectPacket(id, "admin", "secret"))
		readConnack(t, nc)
		return nc
	}
	qos1 := func(topic string, p []byte) []byte {
		body := append(mqttString(topic), 0, 1)
		body = append(body, p...)
		return append(append([]byte{0x32}, remLen(len(body))...), body...)
	}

	// 1. A 3.1.1 QoS 1 publish the pipeline refuses: the client is closed.
	c1 := conn("refused311")
	c1.Write(qos1("reject/me", payload))
	expectClosed(t, c1)

	// 2. The same over MQTT 5 (PUBACK 0x97), at debug level.
	v5 := mustV5(t, addr, "refused5", "admin", "secret")
	if rc, _ := v5.pub(t, "reject/me", 1, string(payload)); rc != 0x97 {
		t.Fatalf("refused publish: 0x%x", rc)
	}

	// 3. A second CONNECT, carrying a password.
	c3 := conn("twice")
	c3.Write(connectPacket("twice", "admin", passwordMarker))
	expectClosed(t, c3)

	// 4. A malformed PUBLISH (a wildcard in its topic name [MQTT-3.3.2-2])
	// carrying the payload.
	c4 := conn("malformed")
	c4.Write(append(append([]byte{0x30}, remLen(len(payload)+4)...), append([]byte{0, 2, 'a', '#'}, payload...)...))
	expectClosed(t, c4)

	// 5. One SUBSCRIBE with 3000 filters alice may not subscribe.
	alice, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	alice.Write(connectPacket("flood", "alice", "secret"))
	readConnack(t, alice)
	before := len(buf.String())
	body := binary.BigEndian.AppendUint16(nil, 1)
	for i := range 3000 {
		body = append(body, mqttString(fmt.Sprintf("admin/%04d/%s/#", i, strings.Repeat("x", 30)))...)
		body = append(body, 1)
	}
	alice.Write(append(append([]byte{0x82}, remLen(len(body))...), body...))
	alice.SetReadDeadline(time.Now().Add(testTimeout))
	suback := make([]byte, 5+3000)
	if _, err := readFull(alice, suback); err != nil {
		t.Fatalf("SUBACK: %v", err)
	}
	flood := len(buf.String()) - before

	b.Stop(context.Background())
	log := buf.String()
	// As text, and as encoding/json writes a []byte (base64): a packet
	// logged whole shows its payload and password that way.
	b64 := func(v string) string { return base64.StdEncoding.EncodeToString([]byte(v)) }
	for _, secret := range []string{payloadMarker, passwordMarker, `"secret"`,
		b64(strings.Repeat(payloadMarker, 3)), b64(passwordMarker[:18]), b64("secret")} {
		if strings.Contains(log, secret) {
			i := strings.Index(log, secret)
			t.Errorf("log holds %q: …%s…", secret, log[max(0, i-300):min(len(log), i+100)])
		}
	}
	if flood > 8<<10 {
		t.Errorf("one SUBSCRIBE with 3000 refused filters wrote %d bytes of log, want a capped few lines", flood)
	}
	t.Logf("log: %d bytes in total, %d for the SUBSCRIBE", len(log), flood)
}

func readFull(c net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		k, err := c.Read(b[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// TestClientLogLimiter: a burst, then one line per interval, and the count
// of suppressed lines on the next allowed one; clients are independent.
func TestClientLogLimiter(t *testing.T) {
	l := newClientLogLimiter()
	t0 := time.Unix(1000, 0)
	for i := range clientLogBurst {
		if ok, _ := l.allow("a", t0); !ok {
			t.Fatalf("line %d of the burst refused", i)
		}
	}
	for range 5 {
		if ok, _ := l.allow("a", t0); ok {
			t.Fatal("line beyond the burst allowed")
		}
	}
	if ok, _ := l.allow("b", t0); !ok {
		t.Fatal("another client limited by a")
	}
	ok, n := l.allow("a", t0.Add(clientLogEvery))
	if !ok || n != 5 {
		t.Fatalf("after one interval: allowed %v, suppressed %d, want true, 5", ok, n)
	}
}
