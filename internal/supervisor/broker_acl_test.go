package supervisor

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/outpost-edge/outpost/internal/broker"
)

// brokerIdentity adapts the agent's embedded broker (internal/broker) to
// Identity, recording what it issued for the test.
type brokerIdentity struct {
	b      *broker.Broker
	mu     sync.Mutex
	issued map[string][]Credentials
}

func (bi *brokerIdentity) Issue(ctx context.Context, component string, a Access) (Credentials, error) {
	cr, err := bi.b.IssueIdentity(ctx, component, broker.Access{Publish: a.Publish, Subscribe: a.Subscribe})
	if err != nil {
		return Credentials{}, err
	}
	out := Credentials(cr)
	bi.mu.Lock()
	bi.issued[component] = append(bi.issued[component], out)
	bi.mu.Unlock()
	return out, nil
}

func (bi *brokerIdentity) Revoke(component string) { bi.b.RevokeIdentity(component) }

func (bi *brokerIdentity) get(component string) []Credentials {
	bi.mu.Lock()
	defer bi.mu.Unlock()
	return append([]Credentials(nil), bi.issued[component]...)
}

// The same ACL scenario against the agent's embedded broker.
func TestComponentACLEmbeddedBroker(t *testing.T) {
	dir, err := os.MkdirTemp("", "opbrk")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := dir + "/mqtt.sock"
	b := broker.New(broker.Options{DataDir: dir})
	cfg := broker.Config{Listeners: []broker.Listener{{Type: broker.TypeUnix, Path: sock}}}
	cfg.SetDefaults()
	if err := b.Init(context.Background(), &cfg); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer b.Stop(context.Background())
	id := &brokerIdentity{b: b, issued: map[string][]Credentials{}}
	runACLScenario(t, aclBackend{
		identity: id, publisher: b, socket: sock, issued: id.get,
		observe: func(t *testing.T, filter string, fn func(string, []byte)) func() {
			// An observer identity allowed everywhere.
			name := "observer-" + time.Now().Format("150405.000000")
			cr, err := b.IssueIdentity(context.Background(), name, broker.Access{Subscribe: []string{"#"}})
			if err != nil {
				t.Fatal(err)
			}
			c, _, err := dialMQTT(t, sock, cr.Username, cr.Password)
			if err != nil {
				t.Fatal(err)
			}
			c.c.AddOnPublishReceived(func(pr paho.PublishReceived) (bool, error) {
				fn(pr.Packet.Topic, pr.Packet.Payload)
				return true, nil
			})
			if code := c.subscribe(t, filter); code >= 0x80 {
				t.Fatalf("observer subscribe %s: 0x%x", filter, code)
			}
			return func() {}
		},
	})
}
