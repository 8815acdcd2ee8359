package supervisor

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/outpost-edge/outpost/internal/supervisor/mqtttest"
)

// startBus starts the test broker on a Unix socket in a short temp dir.
func startBus(t *testing.T) *mqtttest.Bus {
	t.Helper()
	dir, err := os.MkdirTemp("", "opbus")
	if err != nil {
		t.Fatal(err)
	}
	b, err := mqtttest.Start(dir + "/mqtt.sock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(); os.RemoveAll(dir) })
	return b
}

type mqttClient struct {
	c   *paho.Client
	mu  sync.Mutex
	got []string
}

// dialMQTT connects an MQTT v5 client over the Unix socket.
func dialMQTT(t *testing.T, socket, user, pass string) (*mqttClient, *paho.Connack, error) {
	t.Helper()
	conn, err := net.Dial("unix", socket)
	if err != nil {
		return nil, nil, err
	}
	mc := &mqttClient{}
	mc.c = paho.NewClient(paho.ClientConfig{Conn: conn, OnPublishReceived: []func(paho.PublishReceived) (bool, error){
		func(pr paho.PublishReceived) (bool, error) {
			mc.mu.Lock()
			mc.got = append(mc.got, pr.Packet.Topic)
			mc.mu.Unlock()
			return true, nil
		},
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ca, err := mc.c.Connect(ctx, &paho.Connect{ClientID: fmt.Sprintf("%s-%d", user, time.Now().UnixNano()), Username: user, UsernameFlag: true, Password: []byte(pass), PasswordFlag: true, KeepAlive: 30, CleanStart: true})
	if err != nil {
		conn.Close()
		return nil, ca, err
	}
	t.Cleanup(func() { _ = mc.c.Disconnect(&paho.Disconnect{}) })
	return mc, ca, nil
}

func (m *mqttClient) subscribe(t *testing.T, filter string) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sa, err := m.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}})
	if sa != nil && len(sa.Reasons) == 1 {
		return sa.Reasons[0]
	}
	if err != nil {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
	t.Fatalf("subscribe %s: no reason code", filter)
	return 0
}

func (m *mqttClient) publish(t *testing.T, topic string, qos byte) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pr, err := m.c.Publish(ctx, &paho.Publish{Topic: topic, QoS: qos, Payload: []byte("x")})
	if pr != nil {
		return pr.ReasonCode
	}
	if err != nil && qos > 0 {
		t.Logf("publish %s: %v", topic, err)
		return 0x87
	}
	return 0
}

// aclBackend is a broker the ACL scenario runs against.
type aclBackend struct {
	identity  Identity
	publisher Publisher
	bus       Subscriber
	socket    string
	// strictSubscribe: subscriptions wider than the ACL are refused in the
	// SUBACK. Otherwise they may be granted, but deliveries outside the ACL
	// must still never arrive.
	strictSubscribe bool
	issued          func(component string) []Credentials
	// observe subscribes an unrestricted observer and calls fn per message.
	observe func(t *testing.T, filter string, fn func(topic string, payload []byte)) (cancel func())
}

// A component cannot publish or subscribe outside its ACL (wildcards
// included); its credentials stop working when it restarts. Run against the
// in-process test broker.
func TestComponentACL(t *testing.T) {
	bus := startBus(t)
	runACLScenario(t, aclBackend{
		identity: busIdentity{bus}, publisher: bus, bus: bus, socket: bus.Socket, strictSubscribe: true,
		issued: func(c string) []Credentials {
			var out []Credentials
			for _, cr := range bus.Issued(c) {
				out = append(out, Credentials(cr))
			}
			return out
		},
		observe: func(t *testing.T, filter string, fn func(string, []byte)) func() {
			cancel, err := bus.Subscribe(filter, fn)
			if err != nil {
				t.Fatal(err)
			}
			return cancel
		},
	})
}

func runACLScenario(t *testing.T, be aclBackend) {
	e := newEnv(t)
	e.opts.Identity, e.opts.Publisher, e.opts.Bus = be.identity, be.publisher, be.bus
	e.write("alpha", helperRecipe("alpha", "sleep", "access:\n  publish: [shared/alpha-out]\n  subscribe: [\"shared/in/#\"]\n"))
	e.write("beta", helperRecipe("beta", "sleep", ""))
	e.start()
	stA := e.waitState("alpha", 10*time.Second, StateRunning)
	stB := e.waitState("beta", 10*time.Second, StateRunning)

	// The credentials reach the process through its environment.
	env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", stA.PID))
	credsA := be.issued("alpha")[0]
	for _, want := range []string{EnvMQTTURL + "=unix://" + be.socket, EnvMQTTUsername + "=" + credsA.Username, EnvMQTTPassword + "=" + credsA.Password} {
		if !strings.Contains(string(env), want+"\x00") {
			t.Fatalf("component environment lacks %q", want)
		}
	}

	var seenMu sync.Mutex
	var seen []string
	cancel := be.observe(t, "#", func(topic string, _ []byte) {
		seenMu.Lock()
		seen = append(seen, topic)
		seenMu.Unlock()
	})
	defer cancel()

	a, _, err := dialMQTT(t, be.socket, credsA.Username, credsA.Password)
	if err != nil {
		t.Fatal(err)
	}
	for filter, allowed := range map[string]bool{
		"components/alpha/#":     true,
		"components/alpha/+/cmd": true,
		"shared/in/x":            true,
		"shared/in/#":            true,
		"#":                      false,
		"components/#":           false,
		"components/+/cmd":       false,
		"components/beta/#":      false,
		"shared/#":               false,
		"+/in/x":                 false,
		"$share/g/components/#":  false,
		"outpost/local/#":        false,
	} {
		code := a.subscribe(t, filter)
		ok := code < 0x80
		switch {
		case ok == allowed:
		case ok && !be.strictSubscribe:
			t.Logf("subscribe %q granted; deliveries outside the ACL must be filtered", filter)
		default:
			t.Errorf("subscribe %q: reason 0x%02x, allowed=%v, want %v", filter, code, ok, allowed)
		}
	}
	// Whatever was granted, only topics inside the ACL are delivered.
	for _, topic := range []string{"components/gamma/cmd", "shared/other", "outpost/local/x", "components/alpha/in", "shared/in/probe"} {
		if err := be.publisher.Publish(topic, []byte("probe"), false, 0); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "allowed deliveries", func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return contains(a.got, "components/alpha/in") && contains(a.got, "shared/in/probe")
	})
	time.Sleep(100 * time.Millisecond)
	a.mu.Lock()
	for _, topic := range a.got {
		if topic != "shared/in/probe" && !strings.HasPrefix(topic, "components/alpha/") {
			t.Errorf("alpha received %q, outside its ACL", topic)
		}
	}
	a.mu.Unlock()
	for topic, allowed := range map[string]bool{
		"components/alpha/out":                true,
		"shared/alpha-out":                    true,
		"components/beta/cmd":                 false,
		"shared/in/x":                         false,
		"outpost/local/components/beta/state": false,
	} {
		code := a.publish(t, topic, 1)
		if ok := code < 0x80; ok != allowed {
			t.Errorf("publish QoS1 %q: reason 0x%02x, allowed=%v, want %v", topic, code, ok, allowed)
		}
		a.publish(t, topic+"/q0", 0)
	}
	time.Sleep(200 * time.Millisecond)
	seenMu.Lock()
	for _, topic := range seen {
		for _, denied := range []string{"components/beta/cmd", "shared/in/x", "outpost/local/components/beta/state"} {
			// (the supervisor itself publishes the exact state topic)
			if (topic == denied && !strings.HasPrefix(denied, "outpost/")) || topic == denied+"/q0" {
				t.Errorf("denied publish was delivered: %s", topic)
			}
		}
	}
	if !contains(seen, "components/alpha/out") || !contains(seen, "components/alpha/out/q0") {
		t.Errorf("allowed publishes missing; seen %v", seen)
	}
	seenMu.Unlock()

	// Rotation: beta's credentials die with its restart.
	credsB := be.issued("beta")[0]
	b, _, err := dialMQTT(t, be.socket, credsB.Username, credsB.Password)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.s.Restart("beta"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "beta restarted", func() bool {
		st := e.status("beta")
		return st.State == StateRunning && st.PID != stB.PID
	})
	select {
	case <-b.c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("old session of beta still connected after restart")
	}
	if _, ca, err := dialMQTT(t, be.socket, credsB.Username, credsB.Password); err == nil {
		t.Fatal("old credentials of beta still accepted after restart")
	} else {
		t.Logf("old credentials refused: %v (connack %+v)", err, ca)
	}
	issued := be.issued("beta")
	if len(issued) != 2 || issued[1].Password == credsB.Password {
		t.Fatalf("credentials not rotated: %d issued", len(issued))
	}
	if _, _, err := dialMQTT(t, be.socket, issued[1].Username, issued[1].Password); err != nil {
		t.Fatalf("new credentials refused: %v", err)
	}

	// The password never reaches the logs.
	logs, _ := os.ReadFile(e.s.logPath("alpha"))
	if strings.Contains(string(logs), credsA.Password) {
		t.Fatal("password in component log")
	}

	// State is published retained.
	var mu sync.Mutex
	var state Status
	cancel2 := be.observe(t, StateTopic("alpha"), func(_ string, p []byte) {
		mu.Lock()
		defer mu.Unlock()
		_ = json.Unmarshal(p, &state)
	})
	defer cancel2()
	waitFor(t, 5*time.Second, "retained state", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return state.Name == "alpha" && state.State == StateRunning && state.PID == stA.PID
	})
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// busIdentity adapts the test broker to the Identity interface.
type busIdentity struct{ *mqtttest.Bus }

func (b busIdentity) Issue(ctx context.Context, component string, a Access) (Credentials, error) {
	cr, err := b.Bus.Issue(ctx, component, a.Publish, a.Subscribe)
	return Credentials(cr), err
}
