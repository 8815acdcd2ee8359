package mqttconformance

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/outpost-edge/outpost/internal/broker"
	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/testutil/mosq"
)

// Pipeline modes: how the broker's pipeline hook acknowledges QoS 1.
const (
	modeSync  = "sync"  // Options.OnPublish: PUBACK in the read loop
	modeAsync = "async" // Options.OnPublishAsync: PUBACK after a (here immediate) commit
)

var modes = func() []string {
	if os.Getenv("OUTPOST_CONFORMANCE_MOSQUITTO") != "" {
		return []string{"mosquitto"}
	}
	return []string{modeSync, modeAsync}
}()

// versions: MQTT 3.1.1 (v5=false) and 5.0.
var versions = []struct {
	name string
	v5   bool
}{{"v3.1.1", false}, {"v5", true}}

// password is the password of every test user; its bcrypt hash is made once
// at cost 4 (cost 10 takes seconds under -race).
const password = "pw"

var hashOnce = sync.OnceValue(func() string {
	h, err := bcrypt.GenerateFromPassword([]byte(password), 4)
	if err != nil {
		panic(err)
	}
	return string(h)
})

// env is one embedded broker.
type env struct {
	b    *broker.Broker
	addr string
	// hold, when set in async mode, is where QoS 1 completions wait until
	// the test calls release (to keep publishes unacknowledged).
	mu      sync.Mutex
	hold    bool
	pending []func(error)
}

type envOpts struct {
	mode       string
	receiveMax int
	users      []broker.User
}

// onMosquitto is set by OUTPOST_CONFORMANCE_MOSQUITTO=1: the tests then
// run against a real Mosquitto instead, as a cross-check of the tests
// themselves (parts that need Outpost's users/ACLs or its pipeline are
// skipped there).
var onMosquitto = os.Getenv("OUTPOST_CONFORMANCE_MOSQUITTO") != ""

// outpostOnly skips the calling (sub)test against Mosquitto.
func outpostOnly(t *testing.T, why string) {
	t.Helper()
	if onMosquitto {
		t.Skip("Outpost only: " + why)
	}
}

// start runs a broker on 127.0.0.1:0 with anonymous clients allowed
// everything (the ACL tests add users).
func start(t *testing.T, o envOpts) *env {
	t.Helper()
	if onMosquitto {
		mo := mosq.Options{Persistence: true, MaxQueued: -1}
		if o.receiveMax > 0 {
			mo.Extra = fmt.Sprintf("max_inflight_messages %d", o.receiveMax)
		}
		m := mosq.Start(t, mo)
		return &env{addr: m.Addr}
	}
	c := &broker.Config{
		Listeners:      []broker.Listener{{Name: "tcp", Type: broker.TypeTCP, Address: "127.0.0.1:0"}},
		AllowAnonymous: true,
		AnonymousACL:   []broker.ACLRule{{Topic: "#", Access: broker.AccessAll}, {Topic: "$app/#", Access: broker.AccessAll}},
		Users:          o.users,
	}
	c.Limits.ReceiveMaximum = o.receiveMax
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("config: %v", err)
	}
	e := &env{}
	opts := broker.Options{DataDir: t.TempDir()}
	switch o.mode {
	case modeAsync:
		opts.OnPublishAsync = func(_ *message.Message, done func(error)) {
			e.mu.Lock()
			if e.hold {
				e.pending = append(e.pending, done)
				e.mu.Unlock()
				return
			}
			e.mu.Unlock()
			done(nil)
		}
		opts.OnPublish = func(*message.Message) error { return nil }
	default:
		opts.OnPublish = func(*message.Message) error { return nil }
	}
	e.b = broker.New(opts)
	ctx := context.Background()
	if err := e.b.Init(ctx, c); err != nil {
		t.Fatal(err)
	}
	if err := e.b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.release()
		_ = e.b.Stop(context.Background())
	})
	e.addr = e.b.Addr("tcp")
	return e
}

// holdAcks keeps QoS 1 completions (async mode) until release.
func (e *env) holdAcks() {
	if e.b == nil {
		panic("holdAcks needs Outpost's pipeline")
	}
	e.mu.Lock()
	e.hold = true
	e.mu.Unlock()
}

func (e *env) release() {
	e.mu.Lock()
	p := e.pending
	e.pending, e.hold = nil, false
	e.mu.Unlock()
	for _, done := range p {
		done(nil)
	}
}

func user(name string, rules ...broker.ACLRule) broker.User {
	return broker.User{Username: name, PasswordHash: hashOnce(), ACL: rules}
}

func rule(topic, access string) broker.ACLRule { return broker.ACLRule{Topic: topic, Access: access} }

// each runs f for every protocol version.
func each(t *testing.T, f func(t *testing.T, v5 bool)) {
	for _, v := range versions {
		t.Run(v.name, func(t *testing.T) { f(t, v.v5) })
	}
}

func sessionProps(v5 bool) props {
	if !v5 {
		return props{}
	}
	return props{sessionExpiry: u32(300)}
}
