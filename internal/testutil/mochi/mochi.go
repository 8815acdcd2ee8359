// Package mochi is the test helper for a plain in-process MQTT broker: the
// mochi-mqtt server Outpost embeds, without Outpost's broker module around
// it (for the load generator and `outpost bench` tests, which measure
// against a bare broker). Listeners bind loopback ephemeral ports; the
// server is closed at the test's cleanup. For Outpost's own broker use
// internal/broker; for Mosquitto, internal/testutil/mosq.
package mochi

import (
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Broker is an in-process mochi server; add listeners, then Serve.
type Broker struct {
	t   testing.TB
	Srv *mqtt.Server
	n   int
}

// New returns a server that admits the given username/password pairs (nil:
// anyone) and allows every topic.
func New(t testing.TB, users map[string]string) *Broker {
	t.Helper()
	srv := mqtt.New(&mqtt.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := srv.AddHook(&authHook{users: users}, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return &Broker{t: t, Srv: srv}
}

// Start is New with one TCP listener, serving; it returns the tcp:// URL.
func Start(t testing.TB, users map[string]string) string {
	t.Helper()
	b := New(t, users)
	url := b.TCP(nil)
	b.Serve()
	return url
}

func (b *Broker) id() string { b.n++; return fmt.Sprintf("l%d", b.n) }

func (b *Broker) add(l listeners.Listener) {
	b.t.Helper()
	if err := b.Srv.AddListener(l); err != nil {
		b.t.Fatal(err)
	}
}

// TCP adds a TCP (TLS with tc) listener on a loopback ephemeral port and
// returns its tcp:// (ssl://) URL.
func (b *Broker) TCP(tc *tls.Config) string {
	b.t.Helper()
	l := listeners.NewTCP(listeners.Config{ID: b.id(), Address: "127.0.0.1:0", TLSConfig: tc})
	b.add(l)
	if tc != nil {
		return "ssl://" + l.Address()
	}
	return "tcp://" + l.Address()
}

// Unix adds a Unix socket listener in a temporary directory.
func (b *Broker) Unix() string {
	b.t.Helper()
	p := filepath.Join(b.t.TempDir(), "mqtt.sock")
	b.add(listeners.NewUnixSock(listeners.Config{ID: b.id(), Address: p}))
	return "unix://" + p
}

// WS adds a WebSocket listener on a loopback ephemeral port (the fork binds
// it in Init, PATCHES.md 24, so its address is known here).
func (b *Broker) WS() string {
	b.t.Helper()
	l := listeners.NewWebsocket(listeners.Config{ID: b.id(), Address: "127.0.0.1:0"})
	b.add(l)
	return "ws://" + l.Address() + "/"
}

// Serve starts the listeners.
func (b *Broker) Serve() {
	b.t.Helper()
	if err := b.Srv.Serve(); err != nil {
		b.t.Fatal(err)
	}
}

// authHook admits the given users (nil: everyone) and allows every topic;
// mochi's hooks/auth package is not in Outpost's trimmed copy.
type authHook struct {
	mqtt.HookBase
	users map[string]string
}

func (h *authHook) ID() string { return "testutil-auth" }

func (h *authHook) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

func (h *authHook) OnConnectAuthenticate(_ *mqtt.Client, pk packets.Packet) bool {
	if h.users == nil {
		return true
	}
	pw, ok := h.users[string(pk.Connect.Username)]
	return ok && pw == string(pk.Connect.Password)
}

func (h *authHook) OnACLCheck(*mqtt.Client, string, bool) bool { return true }
