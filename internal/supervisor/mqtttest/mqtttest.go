// Package mqtttest runs an in-process mochi-mqtt broker with a Unix-socket
// listener and per-component credentials and ACLs. It implements the
// supervisor's Publisher and Subscriber interfaces directly, and its
// Identity through a two-line adapter (Issue takes the filter lists). It stands in for the agent's embedded broker in tests and
// benchmarks of the supervisor and of the example components.
package mqtttest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/outpost-edge/outpost/internal/supervisor/acl"
)

// Bus is the test broker.
type Bus struct {
	Server *mqtt.Server
	Socket string // Unix socket path

	mu     sync.Mutex
	users  map[string]*account // by username
	issued map[string][]Credentials
	subID  atomic.Int64
}

type account struct {
	password  string
	pub, sub  []string
	component string
}

// Credentials are issued to a component.
type Credentials struct{ URL, Username, Password string }

// Start starts a broker listening on the Unix socket path.
func Start(socket string) (*Bus, error) {
	b := &Bus{Socket: socket, users: map[string]*account{}, issued: map[string][]Credentials{}}
	s := mqtt.New(&mqtt.Options{InlineClient: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := s.AddHook(&hook{b: b}, nil); err != nil {
		return nil, err
	}
	if err := s.AddListener(listeners.NewUnixSock(listeners.Config{ID: "uds", Address: socket})); err != nil {
		return nil, err
	}
	if err := s.Serve(); err != nil {
		return nil, err
	}
	b.Server = s
	return b, nil
}

// Close stops the broker.
func (b *Bus) Close() error { return b.Server.Close() }

// URL is the component-facing URL of the socket.
func (b *Bus) URL() string { return "unix://" + b.Socket }

// AddUser adds an unrestricted-by-namespace user (tests' own clients) with
// the given publish/subscribe filters.
func (b *Bus) AddUser(username, password string, pub, sub []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.users[username] = &account{password: password, pub: pub, sub: sub}
}

// Issue gives a component fresh credentials: a random password, username
// "component-<name>", ACL = components/<name>/# plus the requested filters.
// Sessions of the previous credentials are disconnected.
func (b *Bus) Issue(_ context.Context, component string, publish, subscribe []string) (Credentials, error) {
	var raw [24]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return Credentials{}, err
	}
	user := "component-" + component
	ns := "components/" + component + "/#"
	cr := Credentials{URL: b.URL(), Username: user, Password: hex.EncodeToString(raw[:])}
	b.mu.Lock()
	b.users[user] = &account{
		password:  cr.Password,
		pub:       append([]string{ns}, publish...),
		sub:       append([]string{ns}, subscribe...),
		component: component,
	}
	b.issued[component] = append(b.issued[component], cr)
	b.mu.Unlock()
	b.disconnect(user)
	return cr, nil
}

// Revoke removes a component's credentials and disconnects its sessions.
func (b *Bus) Revoke(component string) {
	user := "component-" + component
	b.mu.Lock()
	delete(b.users, user)
	b.mu.Unlock()
	b.disconnect(user)
}

// Issued returns every credential issued to a component, oldest first.
func (b *Bus) Issued(component string) []Credentials {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]Credentials(nil), b.issued[component]...)
}

func (b *Bus) disconnect(user string) {
	for _, cl := range b.Server.Clients.GetAll() {
		if string(cl.Properties.Username) == user && !cl.Net.Inline {
			cl.Stop(fmt.Errorf("credentials revoked"))
		}
	}
}

// Publish publishes with the broker's inline client (supervisor.Publisher).
func (b *Bus) Publish(topic string, payload []byte, retain bool, qos byte) error {
	return b.Server.Publish(topic, payload, retain, qos)
}

// Subscribe subscribes with the inline client (supervisor.Subscriber).
func (b *Bus) Subscribe(filter string, fn func(topic string, payload []byte)) (func(), error) {
	id := int(b.subID.Add(1))
	err := b.Server.Subscribe(filter, id, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		fn(pk.TopicName, pk.Payload)
	})
	if err != nil {
		return nil, err
	}
	return func() { _ = b.Server.Unsubscribe(filter, id) }, nil
}

type hook struct {
	mqtt.HookBase
	b *Bus
}

func (h *hook) ID() string { return "outpost-test-acl" }

func (h *hook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck}, []byte{b})
}

func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	h.b.mu.Lock()
	defer h.b.mu.Unlock()
	a, ok := h.b.users[string(pk.Connect.Username)]
	return ok && subtle.ConstantTimeCompare([]byte(a.password), pk.Connect.Password) == 1
}

func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	h.b.mu.Lock()
	a, ok := h.b.users[string(cl.Properties.Username)]
	h.b.mu.Unlock()
	if !ok {
		return false
	}
	if write {
		return acl.Allowed(a.pub, topic)
	}
	return acl.Allowed(a.sub, topic)
}
