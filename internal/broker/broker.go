// Package broker is Outpost's embedded MQTT 3.1.1/5 broker: the local bus for
// devices and for supervised components. It wraps mochi-mqtt v2 with what a
// gateway needs:
//
//   - listeners from config: TCP, TLS (optionally mTLS), WebSocket (ws/wss)
//     and a Unix socket for local components;
//   - authentication against users with bcrypt/argon2id hashes from config,
//     plus per-component identities issued at run time (Unix socket only);
//     anonymous clients only when explicitly allowed;
//   - ordered topic ACLs (publish/subscribe/all/deny, + and #, %u and %c)
//     checked on publish, on subscribe and again on every delivery, so a
//     wildcard subscription never reaches a denied topic;
//   - limits (connections, packet size, topic depth, receive maximum,
//     in-flight store, outbound queue) whose violations close or refuse only
//     the offending client, and are counted;
//   - flow control instead of drops: a QoS>0 publish waits while a matching
//     subscriber's outbound queue is above its high-water mark, and a
//     subscriber stuck for longer than SlowConsumerTimeout is disconnected
//     (its persistent session keeps the messages for redelivery);
//   - persistence of retained messages and persistent sessions in a bbolt
//     file (mochi's storage hook);
//   - the publish hook: every publish accepted from a network client is handed
//     to Options.OnPublish synchronously, before the broker acknowledges it,
//     so a QoS 1 PUBACK is sent only once the pipeline has accepted it.
//
// Publishes made by Outpost itself (Publish, used by local republish) do not
// re-enter the pipeline, so a route can never loop.
package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/module"
)

// Sentinel errors.
var (
	// ErrListener wraps a listener that could not be started (port in use,
	// unreadable certificate); the message names the listener.
	ErrListener = errors.New("broker: listener")
	// ErrNotRunning is returned by Publish before Start or after Stop.
	ErrNotRunning = errors.New("broker: not running")
	// ErrSlowConsumer is the reason a subscriber that stopped reading is
	// disconnected.
	ErrSlowConsumer = errors.New("broker: subscriber too slow, disconnected")
)

// SlowConsumerTimeout is how long a QoS>0 publisher waits for a full
// subscriber queue to drain before that subscriber is disconnected.
const SlowConsumerTimeout = 5 * time.Second

// Options are the broker's dependencies.
type Options struct {
	Logger  *slog.Logger
	Metrics *metrics.Set
	DataDir string // for the persistence file; default "."
	// OnPublish receives every publish accepted from a network client. It
	// runs in that client's read loop; for QoS>0 the publish is acknowledged
	// only after it returns nil. An error wrapping message.ErrRejected refuses
	// the publish (MQTT 5: PUBACK 0x97 quota exceeded; 3.1.1: no PUBACK and
	// the client is disconnected so that it resends later).
	OnPublish func(*message.Message) error
	// OnPublishAsync, when set, receives QoS 1 publishes instead of
	// OnPublish and acknowledges them later: done(nil) sends the PUBACK,
	// done(err) refuses the publish as OnPublish's error would. PUBACKs are
	// sent in arrival order per client (async.go). done must be called
	// exactly once and must not block.
	OnPublishAsync func(m *message.Message, done func(error))
}

// Broker is the embedded broker module.
type Broker struct {
	opts Options
	log  *slog.Logger
	m    *brokerMetrics

	mu     sync.Mutex // serialises Init/Start/Stop/Reconfigure only
	conf   atomic.Pointer[Config]
	live   atomic.Pointer[live] // nil when not running
	health atomic.Pointer[module.Status]

	auth atomic.Pointer[authState] // users, ACLs, anonymous policy; swapped on reload

	idMu       sync.RWMutex
	identities map[string]*identity // by username

	ackMu  sync.Mutex
	ackers map[*mqtt.Client]*acker
	noSubs noSubsCache // topics without local subscribers (publishAsync)

	subMu   sync.Mutex
	subs    map[int]inlineSub // Outpost's own subscriptions, re-applied after a restart
	nextSub int

	logOnce logLimiter

	guard    loginGuard // failed logins per address and username (login.go)
	conns    connGuard  // connections that have not logged in yet (conns.go)
	admitted sync.Map   // net.Conn -> struct{}: login admitted its client (login.go)
}

var _ module.Typed[Config] = (*Broker)(nil)
var _ module.TypedReconfigurable[Config] = (*Broker)(nil)

// New returns an unstarted broker.
func New(opts Options) *Broker {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Metrics == nil {
		opts.Metrics = metrics.NewSet()
	}
	if opts.DataDir == "" {
		opts.DataDir = "."
	}
	// Every broker log line (Outpost's and mochi's) goes through the
	// per-client limiter: a client cannot flood the log (one SUBSCRIBE with
	// thousands of refused filters wrote 1.5 MB), and no value is long.
	log := slog.New(&limitHandler{Handler: opts.Logger.Handler(), lim: newClientLogLimiter()})
	b := &Broker{opts: opts, log: log, identities: map[string]*identity{}, subs: map[int]inlineSub{},
		ackers: map[*mqtt.Client]*acker{}}
	b.conns.b = b
	b.m = newBrokerMetrics(opts.Metrics, b)
	b.logOnce.max = 4096
	b.setHealth(module.StateStarting, "")
	return b
}

// live is the running server and Outpost's own inline publisher (no ACL,
// no pipeline). Hot paths read it without locks.
type live struct {
	srv    *mqtt.Server
	inline *mqtt.Client
}

func (b *Broker) server() *mqtt.Server {
	if l := b.live.Load(); l != nil {
		return l.srv
	}
	return nil
}

// Name implements module.Typed.
func (b *Broker) Name() string { return "broker" }

func (b *Broker) setHealth(s module.State, detail string) {
	b.health.Store(&module.Status{State: s, Detail: detail})
}

// Health implements module.Typed.
func (b *Broker) Health() module.Status { return *b.health.Load() }

// Init implements module.Typed. c must have been defaulted and validated
// (module.Of does both).
func (b *Broker) Init(_ context.Context, c *Config) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.conf.Store(c)
	b.auth.Store(newAuthState(c))
	return nil
}

// Start implements module.Typed: it binds every listener (failing with the
// listener's name) and starts serving.
func (b *Broker) Start(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	cfg := b.conf.Load()
	if cfg == nil {
		return errors.New("broker: Start before Init")
	}
	if b.live.Load() != nil {
		return errors.New("broker: already started")
	}
	srv, err := b.build(cfg)
	if err != nil {
		return err
	}
	if err := srv.Serve(); err != nil {
		srv.Close()
		return fmt.Errorf("broker: serve: %w", err)
	}
	b.live.Store(&live{srv: srv, inline: srv.NewClient(nil, "local", "outpost", true)})
	b.subMu.Lock()
	for id, s := range b.subs {
		if err := srv.Subscribe(s.filter, id, s.handler); err != nil {
			b.log.Error("broker: restoring an internal subscription", "topic", s.filter, "err", err)
		}
	}
	b.subMu.Unlock()
	b.setHealth(module.StateReady, fmt.Sprintf("%d listener(s)", len(cfg.Listeners)))
	return nil
}

func (b *Broker) build(c *Config) (*mqtt.Server, error) {
	caps := mqtt.NewDefaultServerCapabilities()
	// max_connections is enforced (and counted) in the OnConnect hook.
	caps.MaximumPacketSize = uint32(c.Limits.MaxPacketSize)
	caps.ReceiveMaximum = uint16(c.Limits.ReceiveMaximum)
	caps.MaximumInflight = uint16(c.Limits.MaxInflight)
	caps.MaximumClientWritesPending = int32(c.Limits.MaxPending)
	caps.MaximumSessionExpiryInterval = uint32(c.Limits.SessionExpiry.D() / time.Second)
	caps.MaximumMessageExpiryInterval = int64(c.Limits.SessionExpiry.D() / time.Second)
	// Acknowledgements do not echo the publish's properties (user
	// properties) back to the publisher.
	caps.Compatibilities.NoInheritedPropertiesOnAck = true
	srv := mqtt.New(&mqtt.Options{
		Capabilities:           caps,
		Logger:                 slog.New(quietHandler{b.log.Handler()}).With("module", "broker"),
		InlineClient:           true,
		SysTopicResendInterval: 3600,
	})
	h := &hook{b: b}
	if err := srv.AddHook(h, nil); err != nil {
		return nil, fmt.Errorf("broker: hook: %w", err)
	}
	if c.Persistence.On() {
		path := dataPath(b.opts.DataDir, c.Persistence.Path)
		if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
			return nil, fmt.Errorf("broker: persistence: %w", err)
		}
		h.store = newStore(path, c.Persistence.FlushInterval.D(), b.log, b.m)
		if err := srv.AddHook(h.store, nil); err != nil {
			return nil, fmt.Errorf("broker: persistence: open %s: %w", path, err)
		}
	}
	for _, lc := range c.Listeners {
		l, err := newListener(lc)
		if err != nil {
			srv.Close()
			return nil, err
		}
		if err := srv.AddListener(&guardedListener{Listener: l, g: &b.conns}); err != nil {
			srv.Close()
			return nil, fmt.Errorf("%w %s (%s %s): %v", ErrListener, lc.Name, lc.Type, listenerAddr(lc), err)
		}
		if lc.Type == TypeUnix {
			mode, _ := parseMode(lc.Mode)
			if err := os.Chmod(lc.Path, mode); err != nil {
				srv.Close()
				return nil, fmt.Errorf("%w %s: chmod %s: %v", ErrListener, lc.Name, lc.Path, err)
			}
		}
	}
	return srv, nil
}

func listenerAddr(l Listener) string {
	if l.Type == TypeUnix {
		return l.Path
	}
	return l.Address
}

func newListener(lc Listener) (listeners.Listener, error) {
	conf := listeners.Config{ID: lc.Name, Address: lc.Address}
	if lc.Type == TypeTLS || lc.Type == TypeWSS {
		tc, err := tlsConfig(lc)
		if err != nil {
			return nil, err
		}
		conf.TLSConfig = tc
	}
	switch lc.Type {
	case TypeTCP, TypeTLS:
		return listeners.NewTCP(conf), nil
	case TypeWS, TypeWSS:
		return listeners.NewWebsocket(conf), nil
	case TypeUnix:
		if err := os.MkdirAll(filepath.Dir(lc.Path), 0o755); err != nil {
			return nil, fmt.Errorf("%w %s: %v", ErrListener, lc.Name, err)
		}
		conf.Address = lc.Path
		return listeners.NewUnixSock(conf), nil
	}
	return nil, fmt.Errorf("%w %s: unknown type %q", ErrListener, lc.Name, lc.Type)
}

func tlsConfig(lc Listener) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(lc.TLS.CertFile, lc.TLS.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("%w %s: load certificate %s / key %s: %v", ErrListener, lc.Name, lc.TLS.CertFile, lc.TLS.KeyFile, err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if lc.TLS.MinVersion == "1.3" {
		tc.MinVersion = tls.VersionTLS13
	}
	if lc.TLS.ClientCAFile != "" {
		pem, err := os.ReadFile(lc.TLS.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("%w %s: client CA: %v", ErrListener, lc.Name, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w %s: client CA %s holds no PEM certificate", ErrListener, lc.Name, lc.TLS.ClientCAFile)
		}
		tc.ClientCAs = pool
		tc.ClientAuth = tls.VerifyClientCertIfGiven
		if lc.TLS.RequireClientCert {
			tc.ClientAuth = tls.RequireAndVerifyClientCert
		}
	}
	return tc, nil
}

// Stop implements module.Typed: listeners close, clients are disconnected
// (persistent sessions are kept in the store), the store is closed.
func (b *Broker) Stop(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	l := b.live.Swap(nil)
	if l == nil {
		return nil
	}
	done := make(chan error, 1)
	go func() { done <- l.srv.Close() }()
	b.setHealth(module.StateStopped, "")
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("broker: stop: %w", ctx.Err())
	}
}

// Reconfigure implements module.TypedReconfigurable. Users, ACLs and the
// anonymous policy are swapped in place (existing subscriptions are checked
// against the new ACL on every delivery); a change of listeners, limits or
// persistence restarts the broker (clients reconnect, sessions persist).
func (b *Broker) Reconfigure(ctx context.Context, c *Config) error {
	old := b.conf.Load()
	if old != nil && reflect.DeepEqual(old.Listeners, c.Listeners) && old.Limits == c.Limits &&
		reflect.DeepEqual(old.Persistence, c.Persistence) {
		b.mu.Lock()
		b.conf.Store(c)
		b.auth.Store(newAuthState(c))
		b.mu.Unlock()
		b.log.Info("broker: users and ACLs reloaded in place", "users", len(c.Users))
		return nil
	}
	b.log.Info("broker: listeners, limits or persistence changed; restarting the broker")
	if err := b.Stop(ctx); err != nil {
		return err
	}
	if err := b.Init(ctx, c); err != nil {
		return err
	}
	if err := b.Start(ctx); err != nil {
		// Try to come back with the old config rather than stay down.
		if old != nil {
			_ = b.Init(ctx, old)
			if err2 := b.Start(ctx); err2 == nil {
				return fmt.Errorf("broker: new config failed, old config restored: %w", err)
			}
		}
		b.setHealth(module.StateFailed, err.Error())
		return err
	}
	return nil
}

// Publish sends a message from Outpost itself (local republish, component
// state, downlink commands). It does not re-enter OnPublish.
func (b *Broker) Publish(topic string, payload []byte, retain bool, qos byte) error {
	srv := b.server()
	if srv == nil {
		return ErrNotRunning
	}
	return srv.Publish(topic, payload, retain, qos)
}

// PublishMessage is Publish for a message.Message, keeping its MQTT 5
// properties.
func (b *Broker) PublishMessage(m *message.Message) error {
	l := b.live.Load()
	if l == nil {
		return ErrNotRunning
	}
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: m.QoS, Retain: m.Retain},
		TopicName:   m.Topic,
		Payload:     m.Payload,
		Properties: packets.Properties{
			ContentType:           m.Props.ContentType,
			ResponseTopic:         m.Props.ResponseTopic,
			CorrelationData:       m.Props.CorrelationData,
			PayloadFormat:         m.Props.PayloadFormat,
			PayloadFormatFlag:     m.Props.PayloadFormat != 0,
			MessageExpiryInterval: m.Props.MessageExpiry,
		},
		PacketID: uint16(m.QoS), // mochi validates: 0 for QoS 0, non-zero otherwise
	}
	for _, u := range m.Props.User {
		pk.Properties.User = append(pk.Properties.User, packets.UserProperty{Key: u.Key, Val: u.Value})
	}
	return l.srv.InjectPacket(l.inline, pk)
}

type inlineSub struct {
	filter  string
	handler mqtt.InlineSubFn
}

// Subscribe subscribes Outpost itself (no ACL) to filter; fn runs on the
// publisher's goroutine and must not block. The subscription survives broker
// restarts. cancel removes it.
func (b *Broker) Subscribe(filter string, fn func(topic string, payload []byte)) (cancel func(), err error) {
	h := func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) { fn(pk.TopicName, pk.Payload) }
	b.subMu.Lock()
	b.nextSub++
	id := b.nextSub
	b.subs[id] = inlineSub{filter: filter, handler: h}
	b.subMu.Unlock()
	if srv := b.server(); srv != nil {
		if err := srv.Subscribe(filter, id, h); err != nil {
			b.subMu.Lock()
			delete(b.subs, id)
			b.subMu.Unlock()
			return nil, fmt.Errorf("broker: subscribe %s: %w", filter, err)
		}
	}
	return func() {
		b.subMu.Lock()
		delete(b.subs, id)
		b.subMu.Unlock()
		if srv := b.server(); srv != nil {
			_ = srv.Unsubscribe(filter, id)
		}
	}, nil
}

// Clients returns the number of connected clients.
func (b *Broker) Clients() int64 {
	srv := b.server()
	if srv == nil {
		return 0
	}
	return atomic.LoadInt64(&srv.Info.ClientsConnected)
}

// Addr returns the bound address of a listener by name ("" if unknown), for
// tests and the demo that listen on port 0.
func (b *Broker) Addr(name string) string {
	srv := b.server()
	if srv == nil {
		return ""
	}
	if l, ok := srv.Listeners.Get(name); ok {
		return l.Address()
	}
	return ""
}

// quietHandler adapts mochi's logging to an agent's: its informational
// chatter (hooks added, server stopping) becomes debug, and the warnings it
// logs without a message for every connection closed during shutdown are
// dropped (disconnect reasons are counted in metrics instead).
type quietHandler struct{ slog.Handler }

func (h quietHandler) Enabled(ctx context.Context, l slog.Level) bool {
	if l == slog.LevelInfo {
		l = slog.LevelDebug
	}
	return h.Handler.Enabled(ctx, l)
}

func (h quietHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level == slog.LevelInfo {
		r.Level = slog.LevelDebug
	}
	if r.Message == "" && r.Level == slog.LevelWarn {
		return nil
	}
	return h.Handler.Handle(ctx, r)
}

func (h quietHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return quietHandler{h.Handler.WithAttrs(as)}
}
func (h quietHandler) WithGroup(n string) slog.Handler { return quietHandler{h.Handler.WithGroup(n)} }

// logLimiter logs a given key once, remembering at most max keys.
type logLimiter struct {
	mu   sync.Mutex
	max  int
	seen map[string]struct{}
}

func (l *logLimiter) first(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seen == nil {
		l.seen = map[string]struct{}{}
	}
	if _, ok := l.seen[key]; ok {
		return false
	}
	if len(l.seen) >= l.max {
		clear(l.seen)
	}
	l.seen[key] = struct{}{}
	return true
}

func (l *logLimiter) forget(prefix string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k := range l.seen {
		if strings.HasPrefix(k, prefix) {
			delete(l.seen, k)
		}
	}
}
