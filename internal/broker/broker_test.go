package broker

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/mochi-mqtt/server/v2"
	"golang.org/x/crypto/bcrypt"

	"github.com/outpost-edge/outpost/internal/message"
)

// testTimeout bounds one client round trip (connect, subscribe, publish).
// Generous: a shared CI machine under -race can stall for seconds, and a
// broker that really hangs still fails the test.
const testTimeout = 20 * time.Second

// testHash is a bcrypt hash of "secret" (cost 4 for speed in tests).
var testHash = func() string {
	// Cost 4, not HashPassword's 10: one cost-10 hash takes seconds under
	// -race on a loaded machine, longer than the tests' connect timeouts.
	h, err := bcrypt.GenerateFromPassword([]byte("secret"), 4)
	if err != nil {
		panic(err)
	}
	return string(h)
}()

func baseConfig(t *testing.T) *Config {
	if t != nil {
		t.Helper()
	}
	return &Config{
		Listeners: []Listener{{Type: TypeTCP, Address: "127.0.0.1:0"}},
		Users: []User{
			{Username: "alice", PasswordHash: testHash, ACL: []ACLRule{
				{Topic: "sensors/secret/#", Access: AccessDeny},
				{Topic: "sensors/%c/#", Access: AccessPublish},
				{Topic: "sensors/#", Access: AccessSubscribe},
			}},
			{Username: "admin", PasswordHash: testHash, ACL: []ACLRule{{Topic: "#", Access: AccessAll}}},
		},
	}
}

type testBroker struct {
	*Broker
	set  *metrics.Set
	addr string
	got  chan *message.Message
}

func startBroker(t *testing.T, c *Config, dataDir string) *testBroker {
	t.Helper()
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("config: %v", err)
	}
	if dataDir == "" {
		dataDir = t.TempDir()
	}
	tb := &testBroker{set: metrics.NewSet(), got: make(chan *message.Message, 10000)}
	// OUTPOST_TEST_LOG=debug prints the broker's debug log (connections,
	// disconnect reasons, refused packets) while the tests run.
	var lg *slog.Logger
	if os.Getenv("OUTPOST_TEST_LOG") == "debug" {
		lg = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	tb.Broker = New(Options{Logger: lg, Metrics: tb.set, DataDir: dataDir, OnPublish: func(m *message.Message) error {
		select {
		case tb.got <- m:
		default:
		}
		if m.Topic == "reject/me" {
			return fmt.Errorf("full: %w", message.ErrRejected)
		}
		return nil
	}})
	ctx := context.Background()
	if err := tb.Init(ctx, c); err != nil {
		t.Fatal(err)
	}
	if err := tb.Start(ctx); err != nil {
		t.Fatal(err)
	}
	tb.addr = tb.Addr(c.Listeners[0].Name)
	t.Cleanup(func() { tb.Stop(context.Background()) })
	return tb
}

func (tb *testBroker) counter(t *testing.T, name string) uint64 {
	t.Helper()
	var sb strings.Builder
	tb.set.WritePrometheus(&sb)
	for _, line := range strings.Split(sb.String(), "\n") {
		if strings.HasPrefix(line, name+" ") {
			var v uint64
			fmt.Sscanf(strings.TrimPrefix(line, name+" "), "%d", &v)
			return v
		}
	}
	return 0
}

type v5client struct {
	*paho.Client
	msgs chan *paho.Publish
}

func dialV5(t *testing.T, network, addr, id, user, pass string, clean bool) (*v5client, *paho.Connack, error) {
	t.Helper()
	conn, err := net.Dial(network, addr)
	if err != nil {
		return nil, nil, err
	}
	c := &v5client{msgs: make(chan *paho.Publish, 10000)}
	c.Client = paho.NewClient(paho.ClientConfig{
		ClientID: id,
		Conn:     wrapConn(conn),
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			c.msgs <- pr.Packet
			return true, nil
		}},
	})
	cp := &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: clean}
	if !clean {
		exp := uint32(3600)
		cp.Properties = &paho.ConnectProperties{SessionExpiryInterval: &exp}
	}
	if user != "" {
		cp.Username, cp.UsernameFlag = user, true
		cp.Password, cp.PasswordFlag = []byte(pass), true
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	ca, err := c.Connect(ctx, cp)
	if err != nil {
		conn.Close()
		return nil, ca, err
	}
	t.Cleanup(func() { c.Disconnect(&paho.Disconnect{ReasonCode: 0}) })
	return c, ca, nil
}

func mustV5(t *testing.T, addr, id, user, pass string) *v5client {
	t.Helper()
	c, _, err := dialV5(t, "tcp", addr, id, user, pass, true)
	if err != nil {
		t.Fatalf("connect %s: %v", id, err)
	}
	return c
}

func (c *v5client) sub(t *testing.T, filter string, qos byte) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	sa, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: qos}}})
	if err != nil && sa == nil {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
	return sa.Reasons[0]
}

func (c *v5client) pub(t *testing.T, topic string, qos byte, payload string) (byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	r, err := c.Publish(ctx, &paho.Publish{Topic: topic, QoS: qos, Payload: []byte(payload)})
	if r != nil {
		return r.ReasonCode, err
	}
	return 0, err
}

func expectNone(t *testing.T, ch chan *paho.Publish, d time.Duration) {
	t.Helper()
	select {
	case m := <-ch:
		t.Fatalf("unexpected message on %s: %q", m.Topic, m.Payload)
	case <-time.After(d):
	}
}

func expectMsg(t *testing.T, ch chan *paho.Publish, topic string) *paho.Publish {
	t.Helper()
	select {
	case m := <-ch:
		if m.Topic != topic {
			t.Fatalf("got message on %s, want %s", m.Topic, topic)
		}
		return m
	case <-time.After(5 * time.Second):
		t.Fatalf("no message on %s", topic)
	}
	return nil
}

func TestAuthentication(t *testing.T) {
	tb := startBroker(t, baseConfig(t), "")
	if _, ca, err := dialV5(t, "tcp", tb.addr, "c1", "alice", "wrong", true); err == nil || ca == nil || ca.ReasonCode != 0x86 {
		t.Fatalf("wrong password: err=%v connack=%+v, want refusal 0x86", err, ca)
	}
	if _, _, err := dialV5(t, "tcp", tb.addr, "c2", "", "", true); err == nil {
		t.Fatal("anonymous client admitted although allow_anonymous is false")
	}
	if _, _, err := dialV5(t, "tcp", tb.addr, "c3", "mallory", "secret", true); err == nil {
		t.Fatal("unknown user admitted")
	}
	mustV5(t, tb.addr, "c4", "alice", "secret")
	// second connect hits the verified-password cache
	mustV5(t, tb.addr, "c5", "alice", "secret")
	if got := tb.counter(t, "outpost_broker_auth_failures_total"); got != 3 {
		t.Fatalf("auth failures = %d, want 3", got)
	}
}

func TestAnonymousWhenEnabled(t *testing.T) {
	c := baseConfig(t)
	c.AllowAnonymous = true
	c.AnonymousACL = []ACLRule{{Topic: "public/#", Access: AccessAll}}
	tb := startBroker(t, c, "")
	cl := mustV5(t, tb.addr, "anon", "", "")
	if rc, _ := cl.pub(t, "public/x", 1, "hi"); rc != 0 {
		t.Fatalf("anonymous publish to public/x: reason 0x%x", rc)
	}
	if rc, _ := cl.pub(t, "private/x", 1, "hi"); rc != 0x87 {
		t.Fatalf("anonymous publish to private/x: reason 0x%x, want 0x87", rc)
	}
}

func TestACLWildcardSubscriptionsNeverReachDeniedTopics(t *testing.T) {
	tb := startBroker(t, baseConfig(t), "")
	admin := mustV5(t, tb.addr, "admin1", "admin", "secret")
	alice := mustV5(t, tb.addr, "dev1", "alice", "secret")

	// Subscribe: '#' overlaps allowed sensors/# so it is granted, but a filter
	// inside the denied subtree or outside any allowed one is refused.
	if rc := alice.sub(t, "#", 1); rc != 1 {
		t.Fatalf("subscribe # = 0x%x, want granted qos 1", rc)
	}
	if rc := alice.sub(t, "sensors/secret/#", 1); rc != 0x87 {
		t.Fatalf("subscribe sensors/secret/# = 0x%x, want 0x87", rc)
	}
	if rc := alice.sub(t, "admin/+", 1); rc != 0x87 {
		t.Fatalf("subscribe admin/+ = 0x%x, want 0x87", rc)
	}
	// Deliveries through '#' are checked per message.
	for _, topic := range []string{"sensors/secret/key", "admin/cmd", "sensors/dev9/temp"} {
		if rc, err := admin.pub(t, topic, 1, "x"); rc != 0 || err != nil {
			t.Fatalf("admin publish %s: 0x%x %v", topic, rc, err)
		}
	}
	expectMsg(t, alice.msgs, "sensors/dev9/temp")
	expectNone(t, alice.msgs, 300*time.Millisecond)

	// Publish: own namespace only (%c), deny rule first.
	if rc, _ := alice.pub(t, "sensors/dev1/temp", 1, "21"); rc != 0 {
		t.Fatalf("publish own topic: 0x%x", rc)
	}
	if rc, _ := alice.pub(t, "sensors/dev2/temp", 1, "21"); rc != 0x87 {
		t.Fatalf("publish other device's topic: 0x%x, want 0x87", rc)
	}
	if got := tb.counter(t, `outpost_broker_acl_denied_total{action="publish"}`); got != 1 {
		t.Fatalf("acl publish denials = %d, want 1", got)
	}
	if got := tb.counter(t, `outpost_broker_acl_denied_total{action="subscribe"}`); got != 2 {
		t.Fatalf("acl subscribe denials = %d, want 2", got)
	}
}

func TestRetainedDeliveryHonoursACL(t *testing.T) {
	tb := startBroker(t, baseConfig(t), "")
	admin := mustV5(t, tb.addr, "admin1", "admin", "secret")
	ctx := context.Background()
	for _, topic := range []string{"sensors/secret/r", "sensors/a/r"} {
		if _, err := admin.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Retain: true, Payload: []byte("r")}); err != nil {
			t.Fatal(err)
		}
	}
	alice := mustV5(t, tb.addr, "dev1", "alice", "secret")
	alice.sub(t, "sensors/#", 1)
	expectMsg(t, alice.msgs, "sensors/a/r")
	expectNone(t, alice.msgs, 300*time.Millisecond)
}

func TestPipelineHookAndRejection(t *testing.T) {
	tb := startBroker(t, baseConfig(t), "")
	admin := mustV5(t, tb.addr, "admin1", "admin", "secret")
	if rc, err := admin.pub(t, "a/b", 1, "payload"); rc != 0 || err != nil {
		t.Fatalf("publish: 0x%x %v", rc, err)
	}
	m := <-tb.got
	if m.Topic != "a/b" || string(m.Payload) != "payload" || m.QoS != 1 || m.ClientID != "admin1" || m.Received.IsZero() {
		t.Fatalf("pipeline got %+v", m)
	}
	if rc, _ := admin.pub(t, "reject/me", 1, "x"); rc != 0x97 {
		t.Fatalf("rejected publish: reason 0x%x, want 0x97 quota exceeded", rc)
	}
}

func TestMalformedAndOversizedPacketsCloseOnlyThatClient(t *testing.T) {
	c := baseConfig(t)
	c.Limits.MaxPacketSize = 1024
	tb := startBroker(t, c, "")
	good := mustV5(t, tb.addr, "admin1", "admin", "secret")
	good.sub(t, "ok/#", 0)

	// Garbage after a valid CONNECT: the broker must close the connection.
	bad, err := net.Dial("tcp", tb.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	bad.Write(connectPacket("bad1", "admin", "secret"))
	readConnack(t, bad)
	bad.Write([]byte{0x30, 0xff, 0xff, 0xff, 0xff, 0x7f}) // publish with an invalid remaining length
	expectClosed(t, bad)

	// Oversized publish.
	big, err := net.Dial("tcp", tb.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer big.Close()
	big.Write(connectPacket("big1", "admin", "secret"))
	readConnack(t, big)
	big.Write(publishPacket("ok/big", make([]byte, 4096)))
	expectClosed(t, big)

	// The good client is unaffected.
	if rc, err := good.pub(t, "ok/1", 0, "still here"); err != nil || rc != 0 {
		t.Fatalf("good client publish: %v", err)
	}
	expectMsg(t, good.msgs, "ok/1")
	waitFor(t, func() bool {
		return tb.counter(t, `outpost_broker_disconnects_total{reason="malformed"}`) == 1 &&
			tb.counter(t, `outpost_broker_disconnects_total{reason="packet_too_large"}`) == 1
	}, "malformed and oversized disconnects counted")
}

func TestMaxConnectionsAndTopicLevels(t *testing.T) {
	c := baseConfig(t)
	c.Limits.MaxConnections = 2
	c.Limits.MaxTopicLevels = 3
	tb := startBroker(t, c, "")
	a := mustV5(t, tb.addr, "a", "admin", "secret")
	mustV5(t, tb.addr, "b", "admin", "secret")
	if _, ca, err := dialV5(t, "tcp", tb.addr, "c", "admin", "secret", true); err == nil || ca == nil || ca.ReasonCode != 0x89 {
		t.Fatalf("third connection: err=%v connack=%+v, want 0x89 server busy", err, ca)
	}
	if rc, _ := a.pub(t, "a/b/c/d", 1, "x"); rc != 0x90 {
		t.Fatalf("publish 4 levels: 0x%x, want 0x90 topic name invalid", rc)
	}
	if rc := a.sub(t, "a/b/c/#", 0); rc != 0x8F {
		t.Fatalf("subscribe 4 levels: 0x%x, want 0x8F", rc)
	}
	if got := tb.counter(t, `outpost_broker_limit_refusals_total{limit="max_connections"}`); got != 1 {
		t.Fatalf("max_connections refusals = %d", got)
	}
}

func TestRetainedAndSessionsSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	c := baseConfig(t)
	tb := startBroker(t, c, dir)
	admin := mustV5(t, tb.addr, "admin1", "admin", "secret")
	if _, err := admin.Publish(context.Background(), &paho.Publish{Topic: "cfg/x", QoS: 1, Retain: true, Payload: []byte("kept")}); err != nil {
		t.Fatal(err)
	}
	// A persistent session subscribes, then goes away.
	p, _, err := dialV5(t, "tcp", tb.addr, "persist1", "admin", "secret", false)
	if err != nil {
		t.Fatal(err)
	}
	p.sub(t, "jobs/#", 1)
	p.Disconnect(&paho.Disconnect{ReasonCode: 0})
	offline := func() *mqtt.Client { // the session, once its connection is gone
		cl, ok := tb.server().Clients.Get("persist1")
		if !ok || !cl.Closed() {
			return nil
		}
		return cl
	}
	waitFor(t, func() bool { return offline() != nil }, "persist1 offline")
	// A message for the offline session.
	if rc, err := admin.pub(t, "jobs/1", 1, "queued"); rc != 0 || err != nil {
		t.Fatalf("publish: %v", err)
	}
	waitFor(t, func() bool { return offline().State.Inflight.Len() == 1 }, "the message queued for persist1")
	if err := tb.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}

	c2 := baseConfig(t)
	c2.Listeners[0].Address = tb.addr // same port
	tb2 := startBroker(t, c2, dir)
	s := mustV5(t, tb2.addr, "reader", "admin", "secret")
	s.sub(t, "cfg/#", 1)
	if m := expectMsg(t, s.msgs, "cfg/x"); string(m.Payload) != "kept" {
		t.Fatalf("retained payload %q", m.Payload)
	}
	p2, ca, err := dialV5(t, "tcp", tb2.addr, "persist1", "admin", "secret", false)
	if err != nil {
		t.Fatal(err)
	}
	if !ca.SessionPresent {
		t.Fatal("persistent session not restored after restart")
	}
	if m := expectMsg(t, p2.msgs, "jobs/1"); string(m.Payload) != "queued" {
		t.Fatalf("queued payload %q", m.Payload)
	}
}

func TestListenerErrorsNameTheListener(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c := baseConfig(t)
	c.Listeners = []Listener{{Name: "devices", Type: TypeTCP, Address: l.Addr().String()}}
	c.SetDefaults()
	b := New(Options{DataDir: t.TempDir()})
	b.Init(context.Background(), c)
	err = b.Start(context.Background())
	if !errors.Is(err, ErrListener) || !strings.Contains(err.Error(), "devices") || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("port in use: %v", err)
	}

	dir := t.TempDir()
	cert, key := writeCert(t, dir, "server", nil)
	os.Chmod(key, 0)
	c.Listeners = []Listener{{Name: "secure", Type: TypeTLS, Address: "127.0.0.1:0", TLS: TLS{CertFile: cert, KeyFile: key}}}
	if os.Getuid() != 0 { // root reads anything
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "not readable") {
			t.Fatalf("unreadable key: %v", err)
		}
	}
	os.WriteFile(key, []byte("not a key"), 0o600)
	b = New(Options{DataDir: t.TempDir()})
	b.Init(context.Background(), c)
	err = b.Start(context.Background())
	if !errors.Is(err, ErrListener) || !strings.Contains(err.Error(), "secure") {
		t.Fatalf("bad key: %v", err)
	}
}

func TestTLSAndMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca, caKey := newCA(t)
	serverCert, serverKey := writeCert(t, dir, "server", &signer{ca, caKey})
	clientCert, clientKey := writeCert(t, dir, "alice", &signer{ca, caKey})
	caFile := filepath.Join(dir, "ca.pem")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw}), 0o600)

	c := baseConfig(t)
	c.Listeners = []Listener{{Name: "mtls", Type: TypeTLS, Address: "127.0.0.1:0",
		TLS: TLS{CertFile: serverCert, KeyFile: serverKey, ClientCAFile: caFile, RequireClientCert: true, UseCNAsUsername: true}}}
	tb := startBroker(t, c, "")

	pool := x509.NewCertPool()
	pool.AddCert(ca)
	kp, err := tls.LoadX509KeyPair(clientCert, clientKey)
	if err != nil {
		t.Fatal(err)
	}
	// With a client certificate: authenticated as its CN (alice), no password.
	conn, err := tls.Dial("tcp", tb.addr, &tls.Config{RootCAs: pool, ServerName: "localhost", Certificates: []tls.Certificate{kp}})
	if err != nil {
		t.Fatal(err)
	}
	cl := paho.NewClient(paho.ClientConfig{ClientID: "dev1", Conn: wrapConn(conn)})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if _, err := cl.Connect(ctx, &paho.Connect{ClientID: "dev1", KeepAlive: 30, CleanStart: true}); err != nil {
		t.Fatalf("mTLS connect: %v", err)
	}
	r, _ := cl.Publish(ctx, &paho.Publish{Topic: "sensors/dev1/t", QoS: 1, Payload: []byte("1")})
	if r == nil || r.ReasonCode != 0 {
		t.Fatalf("publish as CN alice: %+v", r)
	}
	r, err = cl.Publish(ctx, &paho.Publish{Topic: "admin/x", QoS: 1, Payload: []byte("1")})
	if r == nil || r.ReasonCode != 0x87 {
		t.Fatalf("ACL of CN user not applied: %+v %v", r, err)
	}
	cl.Disconnect(&paho.Disconnect{})

	// Without a client certificate the handshake fails.
	conn2, err := tls.Dial("tcp", tb.addr, &tls.Config{RootCAs: pool, ServerName: "localhost"})
	if err == nil {
		// TLS 1.3 reports the missing certificate on first read.
		conn2.Write(connectPacket("x", "", ""))
		buf := make([]byte, 4)
		if _, err := conn2.Read(buf); err == nil {
			t.Fatal("client without certificate was admitted")
		}
		conn2.Close()
	}
}

func TestComponentIdentities(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "mqtt.sock")
	c := baseConfig(t)
	c.Listeners = append(c.Listeners, Listener{Name: "local", Type: TypeUnix, Path: sock})
	tb := startBroker(t, c, "")
	ctx := context.Background()
	creds, err := tb.IssueIdentity(ctx, "modbus", Access{Publish: []string{"telemetry/modbus/#"}, Subscribe: []string{"cmd/modbus/#"}})
	if err != nil {
		t.Fatal(err)
	}
	if creds.URL != "unix://"+sock {
		t.Fatalf("url %s", creds.URL)
	}
	// Identities work only on the unix listener.
	if _, _, err := dialV5(t, "tcp", tb.addr, "m1", creds.Username, creds.Password, true); err == nil {
		t.Fatal("component identity admitted over TCP")
	}
	m, _, err := dialV5(t, "unix", sock, "m1", creds.Username, creds.Password, true)
	if err != nil {
		t.Fatal(err)
	}
	if rc, _ := m.pub(t, "components/modbus/status", 1, "up"); rc != 0 {
		t.Fatalf("own namespace: 0x%x", rc)
	}
	if rc, _ := m.pub(t, "telemetry/modbus/1", 1, "v"); rc != 0 {
		t.Fatalf("requested publish: 0x%x", rc)
	}
	if rc, _ := m.pub(t, "components/other/status", 1, "x"); rc != 0x87 {
		t.Fatalf("other component's namespace: 0x%x", rc)
	}
	if rc := m.sub(t, "#", 0); rc != 0 {
		t.Fatalf("subscribe # (overlaps own namespace): 0x%x", rc)
	}
	admin := mustV5(t, tb.addr, "admin1", "admin", "secret")
	admin.pub(t, "components/other/secret", 0, "no")
	admin.pub(t, "cmd/modbus/read", 0, "yes")
	expectMsg(t, m.msgs, "cmd/modbus/read")
	expectNone(t, m.msgs, 200*time.Millisecond)

	// Rotation: old credentials stop working, the old connection is closed.
	creds2, err := tb.IssueIdentity(ctx, "modbus", Access{})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return !m.connected() }, "old connection closed after rotation")
	if _, _, err := dialV5(t, "unix", sock, "m2", creds.Username, creds.Password, true); err == nil {
		t.Fatal("old credentials still accepted after rotation")
	}
	if _, _, err := dialV5(t, "unix", sock, "m3", creds2.Username, creds2.Password, true); err != nil {
		t.Fatalf("new credentials: %v", err)
	}
	tb.RevokeIdentity("modbus")
	if _, _, err := dialV5(t, "unix", sock, "m4", creds2.Username, creds2.Password, true); err == nil {
		t.Fatal("revoked credentials accepted")
	}
}

func (c *v5client) connected() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := c.Publish(ctx, &paho.Publish{Topic: "components/modbus/ping", QoS: 1})
	return err == nil
}

// TestFlowControlInsteadOfDrops: publishers at full speed into one QoS 1
// subscriber lose nothing: where mochi would drop messages for a subscriber
// whose outbound queue is full, publishers are slowed down instead.
func TestFlowControlInsteadOfDrops(t *testing.T) {
	c := baseConfig(t)
	c.Limits.MaxPending = 64
	tb := startBroker(t, c, "")

	sub, err := net.Dial("tcp", tb.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	sub.Write(connectPacket("sink", "admin", "secret"))
	readConnack(t, sub)
	sub.Write([]byte{0x82, 0x09, 0x00, 0x01, 0x00, 0x04, 's', '/', '/', '#', 0x01})
	waitFor(t, func() bool { return tb.counter(t, "outpost_broker_subscriptions") == 1 }, "subscribed")

	const pubs, per = 4, 3000
	var wg sync.WaitGroup
	var sent atomic.Int64
	for p := 0; p < pubs; p++ {
		conn, err := net.Dial("tcp", tb.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.Write(connectPacket(fmt.Sprintf("pub%d", p), "admin", "secret"))
		readConnack(t, conn)
		window := make(chan struct{}, 32) // stay under the broker's receive maximum
		wg.Add(2)
		go func() { // writer: QoS 1 publishes as fast as acknowledgements allow
			defer wg.Done()
			payload := make([]byte, 200)
			for i := 1; i <= per; i++ {
				select {
				case window <- struct{}{}:
				case <-time.After(30 * time.Second):
					return
				}
				if _, err := conn.Write(publishQoS1("s//x", uint16(i%65535+1), payload)); err != nil {
					return
				}
			}
		}()
		go func() { // reader: count PUBACKs
			defer wg.Done()
			r := newPacketReader(conn)
			conn.SetReadDeadline(time.Now().Add(60 * time.Second))
			for n := 0; n < per; {
				typ, _, err := r.next()
				if err != nil {
					return
				}
				if typ>>4 == 4 {
					n++
					sent.Add(1)
					<-window
				}
			}
		}()
	}
	got := readPublishes(t, sub, pubs*per, 60*time.Second)
	wg.Wait()
	drops := tb.counter(t, `outpost_broker_messages_dropped_total{reason="outbound_full_qos1"}`) +
		tb.counter(t, "outpost_broker_messages_dropped_inflight_full_total")
	if sent.Load() != pubs*per || got != pubs*per || drops != 0 {
		t.Fatalf("acknowledged %d, received %d of %d, dropped %d (flow-control waits %d)",
			sent.Load(), got, pubs*per, drops, tb.counter(t, "outpost_broker_flow_control_waits_total"))
	}
	t.Logf("flow-control waits: %d", tb.counter(t, "outpost_broker_flow_control_waits_total"))
}

func publishQoS1(topic string, id uint16, payload []byte) []byte {
	body := append(mqttString(topic), byte(id>>8), byte(id))
	body = append(body, payload...)
	return append(append([]byte{0x32}, remLen(len(body))...), body...)
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// --- raw MQTT 3.1.1 helpers -------------------------------------------------

func mqttString(s string) []byte { return append([]byte{byte(len(s) >> 8), byte(len(s))}, s...) }

func remLen(n int) []byte {
	var out []byte
	for {
		b := byte(n % 128)
		n /= 128
		if n > 0 {
			b |= 0x80
		}
		out = append(out, b)
		if n == 0 {
			return out
		}
	}
}

func connectPacket(id, user, pass string) []byte {
	flags := byte(0x02)
	var payload []byte
	payload = append(payload, mqttString(id)...)
	if user != "" {
		flags |= 0x80 | 0x40
		payload = append(payload, mqttString(user)...)
		payload = append(payload, mqttString(pass)...)
	}
	vh := append(mqttString("MQTT"), 4, flags, 0, 60)
	body := append(vh, payload...)
	return append(append([]byte{0x10}, remLen(len(body))...), body...)
}

func publishPacket(topic string, payload []byte) []byte {
	body := append(mqttString(topic), payload...)
	return append(append([]byte{0x30}, remLen(len(body))...), body...)
}

func readConnack(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(testTimeout))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || buf[0] != 0x20 || buf[3] != 0 {
		t.Fatalf("connack: % x %v", buf, err)
	}
	c.SetReadDeadline(time.Time{})
}

func expectClosed(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1024)
	for {
		if _, err := c.Read(buf); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("connection still open after a bad packet")
			}
			return
		}
	}
}

// readPublishes reads QoS 1 PUBLISH packets from c, acknowledging each.
func readPublishes(t *testing.T, c net.Conn, n int, timeout time.Duration) int {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(timeout))
	defer c.SetReadDeadline(time.Time{})
	r := newPacketReader(c)
	got := 0
	for got < n {
		typ, body, err := r.next()
		if err != nil {
			return got
		}
		if typ>>4 != 3 {
			continue
		}
		tl := int(body[0])<<8 | int(body[1])
		id := body[2+tl : 4+tl]
		c.Write([]byte{0x40, 0x02, id[0], id[1]})
		got++
	}
	return got
}

type packetReader struct {
	c   net.Conn
	buf []byte
}

func newPacketReader(c net.Conn) *packetReader { return &packetReader{c: c} }

func (r *packetReader) fill(n int) error {
	tmp := make([]byte, 64<<10)
	for len(r.buf) < n {
		k, err := r.c.Read(tmp)
		if err != nil {
			return err
		}
		r.buf = append(r.buf, tmp[:k]...)
	}
	return nil
}

func (r *packetReader) next() (byte, []byte, error) {
	if err := r.fill(2); err != nil {
		return 0, nil, err
	}
	n, mult, i := 0, 1, 1
	for {
		if err := r.fill(i + 1); err != nil {
			return 0, nil, err
		}
		b := r.buf[i]
		n += int(b&0x7f) * mult
		mult *= 128
		i++
		if b&0x80 == 0 {
			break
		}
	}
	if err := r.fill(i + n); err != nil {
		return 0, nil, err
	}
	typ := r.buf[0]
	body := append([]byte(nil), r.buf[i:i+n]...)
	r.buf = r.buf[i+n:]
	return typ, body, nil
}

// --- certificates -------------------------------------------------------------

type signer struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newCA(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert, key
}

// writeCert writes a certificate for cn (self-signed when s is nil) and its key.
func writeCert(t *testing.T, dir, cn string, s *signer) (certFile, keyFile string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	parent, signKey := tmpl, key
	if s != nil {
		parent, signKey = s.cert, s.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(dir, cn+".pem"), filepath.Join(dir, cn+"-key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return certFile, keyFile
}

// TestRetainedMessageExpires: a retained message published with a message
// expiry interval is dropped once it has expired (mochi's once-a-second
// sweep), while one without expiry stays.
func TestRetainedMessageExpires(t *testing.T) {
	tb := startBroker(t, baseConfig(t), t.TempDir())
	admin := mustV5(t, tb.addr, "admin1", "admin", "secret")
	exp := uint32(1)
	for _, p := range []*paho.Publish{
		{Topic: "cfg/short", QoS: 1, Retain: true, Payload: []byte("gone"), Properties: &paho.PublishProperties{MessageExpiry: &exp}},
		{Topic: "cfg/long", QoS: 1, Retain: true, Payload: []byte("kept")},
	} {
		if _, err := admin.Publish(context.Background(), p); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(3500 * time.Millisecond) // expiry 1 s, whole-second clock, 1 s sweep
	s := mustV5(t, tb.addr, "reader", "admin", "secret")
	s.sub(t, "cfg/#", 1)
	if m := expectMsg(t, s.msgs, "cfg/long"); string(m.Payload) != "kept" {
		t.Fatalf("retained payload %q", m.Payload)
	}
	expectNone(t, s.msgs, 300*time.Millisecond)
}
