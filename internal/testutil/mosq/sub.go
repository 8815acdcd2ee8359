package mosq

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
)

// Message is one publish a Subscriber received.
type Message struct {
	Topic     string
	Payload   []byte
	Retain    bool
	Duplicate bool
	QoS       byte
	User      map[string]string // user properties (last value wins)
	At        time.Time         // receive time
}

// SubOptions tune Subscribe. The zero value subscribes with QoS 1, a
// persistent session (expiry 1 h, so messages are queued by a persistent
// broker while the subscriber reconnects) and the broker's credentials: its
// CA and client certificate with TLS, and the first user of Options.Users.
type SubOptions struct {
	ClientID string // default "mosq-sub-<n>"
	QoS      byte   // default 1 (use SubOptions{QoS0: true} for 0)
	QoS0     bool
	Username string
	Password string
	TLS      *tls.Config // default from the broker's Certs
}

// Subscriber collects every message received on its filter.
type Subscriber struct {
	cm     *autopaho.ConnectionManager
	cancel context.CancelFunc

	mu     sync.Mutex
	msgs   []Message
	notify chan struct{}
}

var subSeq struct {
	sync.Mutex
	n int
}

// Subscribe connects a paho.golang (autopaho) client to b, subscribes to
// filter and returns once the subscription is acknowledged. The client
// reconnects by itself after broker restarts (every 100 ms) and resubscribes.
// It is closed at test cleanup.
func Subscribe(t testing.TB, b *Broker, filter string, so ...SubOptions) *Subscriber {
	t.Helper()
	var o SubOptions
	if len(so) > 0 {
		o = so[0]
	}
	if o.ClientID == "" {
		subSeq.Lock()
		subSeq.n++
		o.ClientID = fmt.Sprintf("mosq-sub-%d", subSeq.n)
		subSeq.Unlock()
	}
	qos := byte(1)
	if o.QoS0 {
		qos = 0
	} else if o.QoS != 0 {
		qos = o.QoS
	}
	base := clientConfig(t, b, &o)
	s := &Subscriber{notify: make(chan struct{})}
	subscribed := make(chan error, 1)
	cfg := base
	cfg.OnConnectionUp = func(cm *autopaho.ConnectionManager, _ *paho.Connack) {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := cm.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: qos}}})
			select {
			case subscribed <- err:
			default:
			}
		}()
	}
	cfg.OnPublishReceived = []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
		p := pr.Packet
		m := Message{Topic: p.Topic, Payload: append([]byte(nil), p.Payload...), Retain: p.Retain,
			Duplicate: p.Duplicate(), QoS: p.QoS, At: time.Now()}
		if p.Properties != nil && len(p.Properties.User) > 0 {
			m.User = make(map[string]string, len(p.Properties.User))
			for _, up := range p.Properties.User {
				m.User[up.Key] = up.Value
			}
		}
		s.mu.Lock()
		s.msgs = append(s.msgs, m)
		close(s.notify)
		s.notify = make(chan struct{})
		s.mu.Unlock()
		return true, nil
	}}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	cm, err := autopaho.NewConnection(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatalf("mosq: subscriber: %v", err)
	}
	s.cm = cm
	t.Cleanup(s.Close)
	select {
	case err := <-subscribed:
		if err != nil {
			t.Fatalf("mosq: subscribe %q: %v", filter, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("mosq: subscriber to %s not subscribed after 10s", b.Addr)
	}
	return s
}

// Close disconnects the subscriber (idempotent).
func (s *Subscriber) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = s.cm.Disconnect(ctx)
	s.cancel()
	select {
	case <-s.cm.Done():
	case <-ctx.Done():
	}
}

// Messages returns a copy of everything received so far, in arrival order.
func (s *Subscriber) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.msgs...)
}

// Len returns the number of messages received so far.
func (s *Subscriber) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.msgs)
}

// Wait polls until done(messages) is true or timeout passes, then returns the
// messages; on timeout the test fails with what was received.
func (s *Subscriber) Wait(t testing.TB, timeout time.Duration, what string, done func([]Message) bool) []Message {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		msgs := s.msgs
		wake := s.notify
		s.mu.Unlock()
		if done(msgs) {
			return append([]Message(nil), msgs...)
		}
		select {
		case <-wake:
		case <-deadline.C:
			t.Fatalf("mosq: subscriber: %s: not reached after %v (%d messages received)", what, timeout, len(msgs))
			return nil
		}
	}
}

// WaitN waits until at least n messages arrived (see Wait).
func (s *Subscriber) WaitN(t testing.TB, n int, timeout time.Duration) []Message {
	t.Helper()
	return s.Wait(t, timeout, fmt.Sprintf("%d messages", n), func(m []Message) bool { return len(m) >= n })
}

// clientConfig is the autopaho configuration shared by Subscribe and
// NewPublisher: the broker's URL, TLS material and first user.
func clientConfig(t testing.TB, b *Broker, o *SubOptions) autopaho.ClientConfig {
	t.Helper()
	if o.ClientID == "" {
		subSeq.Lock()
		subSeq.n++
		o.ClientID = fmt.Sprintf("mosq-client-%d", subSeq.n)
		subSeq.Unlock()
	}
	if o.Username == "" && len(b.opts.Users) > 0 {
		for u, p := range b.opts.Users {
			if o.Username == "" || u < o.Username {
				o.Username, o.Password = u, p
			}
		}
	}
	if o.TLS == nil && b.Certs != nil {
		cfg, err := b.Certs.ClientTLS(b.opts.RequireCertificate)
		if err != nil {
			t.Fatalf("mosq: subscriber tls: %v", err)
		}
		o.TLS = cfg
	}
	u, err := url.Parse(b.URL())
	if err != nil {
		t.Fatal(err)
	}
	if u.Scheme == "mqtts" {
		u.Scheme = "tls"
	}
	return autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{u},
		TlsCfg:                        o.TLS,
		KeepAlive:                     30,
		CleanStartOnInitialConnection: false, // Mosquitto 2.0.11 does not persist sessions begun with clean start 1
		SessionExpiryInterval:         3600,
		ReconnectBackoff:              autopaho.NewConstantBackoff(100 * time.Millisecond),
		ConnectTimeout:                5 * time.Second,
		ConnectUsername:               o.Username,
		ConnectPassword:               []byte(o.Password),
		ClientConfig:                  paho.ClientConfig{ClientID: o.ClientID},
	}
}

// Publisher publishes test messages with QoS 1 (paho.golang, reconnecting).
type Publisher struct {
	cm     *autopaho.ConnectionManager
	cancel context.CancelFunc
}

// NewPublisher connects a publisher to b; it is closed at test cleanup.
func NewPublisher(t testing.TB, b *Broker, so ...SubOptions) *Publisher {
	t.Helper()
	var o SubOptions
	if len(so) > 0 {
		o = so[0]
	}
	cfg := clientConfig(t, b, &o)
	ctx, cancel := context.WithCancel(context.Background())
	cm, err := autopaho.NewConnection(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatalf("mosq: publisher: %v", err)
	}
	p := &Publisher{cm: cm, cancel: cancel}
	t.Cleanup(func() {
		dctx, dcancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer dcancel()
		_ = cm.Disconnect(dctx)
		cancel()
	})
	actx, acancel := context.WithTimeout(ctx, 10*time.Second)
	defer acancel()
	if err := cm.AwaitConnection(actx); err != nil {
		t.Fatalf("mosq: publisher not connected to %s: %v", b.Addr, err)
	}
	return p
}

// Publish sends one QoS 1 message with optional user properties and waits
// for its PUBACK; an error fails the test.
func (p *Publisher) Publish(ctx context.Context, t testing.TB, topic string, payload []byte, user map[string]string) {
	t.Helper()
	pp := &paho.PublishProperties{}
	for k, v := range user {
		pp.User = append(pp.User, paho.UserProperty{Key: k, Value: v})
	}
	if _, err := p.cm.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: payload, Properties: pp}); err != nil {
		t.Fatalf("mosq: publish %s: %v", topic, err)
	}
}
