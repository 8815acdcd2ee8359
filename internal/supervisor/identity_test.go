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

// A component cannot publish or subscribe outside its ACL (wildcards
// included); its credentials stop working when it restarts.
func TestComponentACL(t *testing.T) {
	bus := startBus(t)
	e := newEnv(t)
	e.opts.Identity, e.opts.Publisher, e.opts.Bus = busIdentity{bus}, bus, bus
	e.write("alpha", helperRecipe("alpha", "sleep", "access:\n  publish: [shared/alpha-out]\n  subscribe: [\"shared/in/#\"]\n"))
	e.write("beta", helperRecipe("beta", "sleep", ""))
	e.start()
	stA := e.waitState("alpha", 10*time.Second, StateRunning)
	stB := e.waitState("beta", 10*time.Second, StateRunning)

	// The credentials reach the process through its environment.
	env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", stA.PID))
	credsA := bus.Issued("alpha")[0]
	for _, want := range []string{EnvMQTTURL + "=unix://" + bus.Socket, EnvMQTTUsername + "=" + credsA.Username, EnvMQTTPassword + "=" + credsA.Password} {
		if !strings.Contains(string(env), want+"\x00") {
			t.Fatalf("component environment lacks %q", want)
		}
	}

	var seenMu sync.Mutex
	var seen []string
	cancel, err := bus.Subscribe("#", func(topic string, _ []byte) {
		seenMu.Lock()
		seen = append(seen, topic)
		seenMu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cancel()

	a, _, err := dialMQTT(t, bus.Socket, credsA.Username, credsA.Password)
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
		if ok := code < 0x80; ok != allowed {
			t.Errorf("subscribe %q: reason 0x%02x, allowed=%v, want %v", filter, code, ok, allowed)
		}
	}
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
		if strings.HasPrefix(topic, "components/beta") || strings.HasPrefix(topic, "shared/in") || strings.HasPrefix(topic, "outpost/local/components/beta/state/") {
			t.Errorf("denied publish was delivered: %s", topic)
		}
	}
	if !contains(seen, "components/alpha/out") || !contains(seen, "shared/alpha-out") || !contains(seen, "components/alpha/out/q0") {
		t.Errorf("allowed publishes missing; seen %v", seen)
	}
	seenMu.Unlock()

	// Rotation: beta's credentials die with its restart.
	credsB := bus.Issued("beta")[0]
	b, _, err := dialMQTT(t, bus.Socket, credsB.Username, credsB.Password)
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
	if _, ca, err := dialMQTT(t, bus.Socket, credsB.Username, credsB.Password); err == nil {
		t.Fatal("old credentials of beta still accepted after restart")
	} else {
		t.Logf("old credentials refused: %v (connack %+v)", err, ca)
	}
	issued := bus.Issued("beta")
	if len(issued) != 2 || issued[1].Password == credsB.Password {
		t.Fatalf("credentials not rotated: %d issued", len(issued))
	}
	if _, _, err := dialMQTT(t, bus.Socket, issued[1].Username, issued[1].Password); err != nil {
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
	cancel2, err := bus.Subscribe(StateTopic("alpha"), func(_ string, p []byte) {
		mu.Lock()
		defer mu.Unlock()
		_ = json.Unmarshal(p, &state)
	})
	if err != nil {
		t.Fatal(err)
	}
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
