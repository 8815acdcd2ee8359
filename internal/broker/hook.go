package broker

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/topic"
)

// hook connects mochi's event hooks to the broker's auth, ACL, limits,
// metrics and the publish handler.
type hook struct {
	mqtt.HookBase
	b     *Broker
	store *store // nil without persistence
}

func (h *hook) ID() string { return "outpost" }

func (h *hook) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnPublish, mqtt.OnSubscribe,
		mqtt.OnDisconnect, mqtt.OnPublishDropped, mqtt.OnQosDropped, mqtt.OnSessionEstablished,
		mqtt.OnConnectAuthorize, mqtt.OnSelectSubscribers, mqtt.OnWill,
	}, []byte{b})
}

// OnConnect enforces max_connections: the client gets CONNACK "server busy"
// (3.1.1: "server unavailable") and the refusal is counted. Then it
// authenticates the client (login.go), refusing it with the reason code
// that fits.
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	b := h.b
	defer b.conns.decided(cl.Net.Conn)
	srv, cfg := b.server(), b.conf.Load()
	if srv != nil && cfg != nil {
		if err := h.connectLimits(srv, cl, pk, cfg.Limits); err != nil {
			return err
		}
	}
	if srv == nil || cfg == nil || atomic.LoadInt64(&srv.Info.ClientsConnected) < int64(cfg.Limits.MaxConnections) {
		return b.login(cl, pk)
	}
	b.m.limitRefused("max_connections").Inc()
	if b.logOnce.first("maxconn") {
		b.log.Warn("broker: max_connections reached, refusing new clients", "max_connections", cfg.Limits.MaxConnections)
	}
	code := packets.ErrServerBusy
	if cl.Properties.ProtocolVersion < 5 {
		code = packets.ErrServerUnavailable
	}
	_ = srv.SendConnack(cl, code, false, nil)
	return code
}

// OnConnectAuthenticate admits the clients that OnConnect's login admitted.
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, _ packets.Packet) bool {
	return h.b.loggedIn(cl)
}

// aclFor returns the ACL that applies to a connected client.
func (b *Broker) aclFor(cl *mqtt.Client) (acl, string) {
	user := string(cl.Properties.Username)
	if strings.HasPrefix(user, IdentityPrefix) {
		if id := b.identity(user); id != nil {
			return id.acl, user
		}
		return nil, user
	}
	st := b.auth.Load()
	if user == "" {
		if st.anonymous {
			return st.anonACL, user
		}
		return nil, user
	}
	if u, ok := st.users[user]; ok {
		return u.acl, user
	}
	return nil, user // user removed by a reload: nothing allowed
}

// OnACLCheck authorises publishes (write), subscriptions and deliveries.
func (h *hook) OnACLCheck(cl *mqtt.Client, name string, write bool) bool {
	if cl.Net.Inline {
		return true
	}
	b := h.b
	a, user := b.aclFor(cl)
	var ok bool
	action := "publish"
	switch {
	case write:
		ok = a.canPublish(user, cl.ID, name)
	case strings.ContainsAny(name, "+#") || strings.HasPrefix(name, "$share/"):
		action = "subscribe"
		ok = a.canSubscribe(user, cl.ID, topic.StripShare(name))
	default:
		// A concrete name: a delivery, or a subscription without wildcards.
		action = "receive"
		ok = a.canReceive(user, cl.ID, name)
	}
	if !ok {
		b.m.aclDenied(action).Inc()
		if action != "receive" && b.logOnce.first("acl:"+cl.ID+":"+action+":"+name) {
			b.log.Warn("broker: access denied", "client", cl.ID, "user", user, "action", action, "name", name)
		}
	}
	return ok
}

// OnSubscribe marks filters deeper than the topic-level limit or longer than
// the topic-length limit invalid, so the SUBACK refuses them (0x8F).
func (h *hook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	max, maxLen := h.b.maxLevels(), h.b.maxTopicLength()
	for i, f := range pk.Filters {
		switch {
		case len(f.Filter) > maxLen:
			h.b.m.limitRefused("topic_length").Inc()
			pk.Filters[i].Filter = "#/" // invalid on purpose: refused by the broker
		case topic.Levels(topic.StripShare(f.Filter)) > max:
			h.b.m.limitRefused("topic_levels").Inc()
			pk.Filters[i].Filter = "#/"
		}
	}
	return pk
}

func (b *Broker) maxTopicLength() int {
	if cfg := b.conf.Load(); cfg != nil {
		return cfg.Limits.MaxTopicLength
	}
	return 1024
}

func (b *Broker) maxLevels() int {
	if cfg := b.conf.Load(); cfg != nil {
		return cfg.Limits.MaxTopicLevels
	}
	return 16
}

// OnPublish applies topic limits and flow control, then hands the publish to
// the pipeline before mochi acknowledges and distributes it.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	b := h.b
	b.m.received.Inc()
	if len(pk.TopicName) > b.maxTopicLength() {
		b.m.limitRefused("topic_length").Inc()
		return pk, h.refuse(cl, pk, packets.ErrTopicNameInvalid)
	}
	if topic.Levels(pk.TopicName) > b.maxLevels() {
		b.m.limitRefused("topic_levels").Inc()
		return pk, h.refuse(cl, pk, packets.ErrTopicNameInvalid)
	}
	if pk.FixedHeader.Retain && len(pk.Payload) > 0 && !b.retainFits(pk.TopicName, len(pk.Payload)) {
		return pk, h.refuse(cl, pk, packets.ErrQuotaExceeded)
	}
	b.flowControl(pk.TopicName, pk.FixedHeader.Qos)
	if b.opts.OnPublish == nil && b.opts.OnPublishAsync == nil {
		return pk, nil
	}
	m := &message.Message{
		Topic:    pk.TopicName,
		Payload:  pk.Payload,
		QoS:      pk.FixedHeader.Qos,
		Retain:   pk.FixedHeader.Retain,
		ClientID: cl.ID,
		Received: time.Now(),
		Props: message.Properties{
			ContentType:     pk.Properties.ContentType,
			ResponseTopic:   pk.Properties.ResponseTopic,
			CorrelationData: pk.Properties.CorrelationData,
			PayloadFormat:   pk.Properties.PayloadFormat,
			MessageExpiry:   pk.Properties.MessageExpiryInterval,
		},
	}
	if n := len(pk.Properties.User); n > 0 {
		m.Props.User = make([]message.UserProperty, n)
		for i, u := range pk.Properties.User {
			m.Props.User[i] = message.UserProperty{Key: u.Key, Value: u.Val}
		}
	}
	if pk.FixedHeader.Qos == 1 && b.opts.OnPublishAsync != nil {
		if srv := b.server(); srv != nil {
			return h.publishAsync(srv, cl, pk, m)
		}
	}
	if b.opts.OnPublish == nil {
		return pk, nil
	}
	if err := b.opts.OnPublish(m); err != nil {
		b.publishRefused(cl, pk.TopicName, err)
		return pk, h.refuse(cl, pk, refusalCode(err))
	}
	return pk, nil
}

// publishAsync takes a QoS 1 publish over from mochi: see async.go.
func (h *hook) publishAsync(srv *mqtt.Server, cl *mqtt.Client, pk packets.Packet, m *message.Message) (packets.Packet, error) {
	b := h.b
	a := b.ackerFor(srv, cl)
	e := a.reserve(pk.PacketID)
	b.opts.OnPublishAsync(m, func(err error) {
		if err != nil {
			b.publishRefused(cl, m.Topic, err)
		}
		a.complete(e, err)
	})
	// Local subscribers and retained state, as mochi would have done.
	if pk.FixedHeader.Retain || b.noSubs.mayMatch(srv.Topics, pk.TopicName) {
		local := pk
		local.Properties.TopicAlias, local.Properties.TopicAliasFlag = 0, false
		_ = srv.InjectPacket(a.inline, local)
	}
	return pk, packets.ErrRejectPacket
}

// noSubsCache remembers topics that no local subscription matches, valid
// while the topic index's generation (bumped after every subscription
// added) stays the same. Most device telemetry has no local subscriber:
// injecting it for the local fan-out anyway (a second pass through mochi's
// publish path) cost ~8% of the agent's CPU at 30k msg/s.
type noSubsCache struct {
	mu     sync.Mutex
	idx    *mqtt.TopicsIndex
	gen    uint64
	topics map[string]struct{}
}

const noSubsCacheMax = 4096 // topics remembered; the cache restarts when full

// mayMatch reports whether a local subscription may match topic (false only
// when none does).
func (c *noSubsCache) mayMatch(idx *mqtt.TopicsIndex, topic string) bool {
	g := idx.Generation() // before the lookup: a subscription added after it moves the generation
	c.mu.Lock()
	if c.idx == idx && c.gen == g {
		if _, none := c.topics[topic]; none {
			c.mu.Unlock()
			return false
		}
	}
	c.mu.Unlock()
	s := idx.Subscribers(topic)
	if len(s.Subscriptions) > 0 || len(s.Shared) > 0 || len(s.InlineSubscriptions) > 0 {
		return true
	}
	c.mu.Lock()
	if c.idx != idx || c.gen != g || len(c.topics) >= noSubsCacheMax {
		c.idx, c.gen, c.topics = idx, g, make(map[string]struct{})
	}
	c.topics[topic] = struct{}{}
	c.mu.Unlock()
	return false
}

func (b *Broker) publishRefused(cl *mqtt.Client, topic string, err error) {
	b.m.rejected.Inc()
	if b.logOnce.first("reject:" + cl.ID) {
		b.log.Warn("broker: publish refused by pipeline", "client", cl.ID, "topic", topic, "err", err)
	}
}

// refusalCode is the MQTT 5 reason code for a pipeline refusal.
func refusalCode(err error) packets.Code {
	if errors.Is(err, message.ErrRejected) {
		return packets.ErrQuotaExceeded
	}
	return packets.ErrUnspecifiedError
}

// refuse turns a refusal into what each protocol version can express:
// MQTT 5 QoS>0 gets a negative PUBACK; QoS 0 is dropped; MQTT 3.1.1 QoS>0
// has no negative ack, so the client is disconnected without a PUBACK and
// will resend the message when it reconnects.
func (h *hook) refuse(cl *mqtt.Client, pk packets.Packet, code packets.Code) error {
	if pk.FixedHeader.Qos == 0 {
		return packets.ErrRejectPacket
	}
	if cl.Properties.ProtocolVersion == 5 {
		return code
	}
	cl.Stop(code)
	return packets.ErrRejectPacket
}

// outboundLen is the fill level of mochi's per-client outbound queue, which
// drives flow control (an accessor of the fork, PATCHES.md 25).
func outboundLen(cl *mqtt.Client) int {
	return cl.State.OutboundLen()
}

// flowControl slows a publisher down while a subscriber of topic has its
// outbound queue (or, for QoS>0, its in-flight store) above the high-water
// mark, instead of letting mochi drop the message for that subscriber.
//
//   - QoS>0 publishes wait for QoS>0 subscribers; one that does not drain
//     within SlowConsumerTimeout is disconnected (its persistent session
//     keeps the messages for redelivery).
//   - QoS 0 publishes wait up to QoS0MaxWait for any subscriber, then go on
//     (best effort: a QoS 0 message may still be dropped, and is counted).
//     Waiting costs the publisher's read loop, not CPU: at overload the
//     broker delivers more instead of reading messages it would discard.
func (b *Broker) flowControl(topic string, qos byte) {
	srv, cfg := b.server(), b.conf.Load()
	if srv == nil || cfg == nil {
		return
	}
	hwOut := cfg.Limits.MaxPending * 3 / 4
	hwStore := cfg.Limits.MaxInflight * 3 / 4
	full := func(cl *mqtt.Client) bool {
		return outboundLen(cl) > hwOut || (qos > 0 && cl.State.Inflight.Len() > hwStore)
	}
	subs := srv.Topics.Subscribers(topic)
	for id, sub := range subs.Subscriptions {
		if qos > 0 && sub.Qos == 0 {
			continue
		}
		cl, ok := srv.Clients.Get(id)
		if !ok || cl.Closed() || cl.Net.Conn == nil || !full(cl) {
			continue
		}
		b.m.flowWaits.Inc()
		wait := SlowConsumerTimeout
		if qos == 0 {
			wait = QoS0MaxWait
		}
		deadline := time.Now().Add(wait)
		for full(cl) && !cl.Closed() {
			if time.Now().After(deadline) {
				if qos == 0 {
					break
				}
				b.m.slowConsumers.Inc()
				b.log.Warn("broker: disconnecting slow subscriber", "client", id, "queued", outboundLen(cl),
					"in_flight", cl.State.Inflight.Len())
				cl.Stop(ErrSlowConsumer)
				break
			}
			time.Sleep(200 * time.Microsecond)
		}
	}
}

// QoS0MaxWait bounds how long a QoS 0 publisher is held for a full
// subscriber queue before the message is delivered best effort.
const QoS0MaxWait = 100 * time.Millisecond

// OnSessionEstablished resets the once-per-client log keys of a client that
// managed to connect.
func (h *hook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	h.b.logOnce.forget("auth:" + cl.ID)
}

// OnDisconnect counts why clients went away.
func (h *hook) OnDisconnect(cl *mqtt.Client, err error, _ bool) {
	b := h.b
	b.dropAcker(cl)
	reason := disconnectReason(err)
	b.m.disconnect(reason).Inc()
	switch reason {
	case "malformed", "protocol_error", "packet_too_large":
		if b.logOnce.first("bad:" + cl.ID) {
			b.log.Warn("broker: client sent a bad packet and was disconnected", "client", cl.ID,
				"remote", cl.Net.Remote, "reason", reason, "err", err)
		}
	}
}

func disconnectReason(err error) string {
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, mqtt.ErrConnectionClosed) {
		return "normal"
	}
	if errors.Is(err, ErrSlowConsumer) {
		return "slow_consumer"
	}
	var code packets.Code
	if errors.As(err, &code) {
		switch code.Code {
		case 0x00, 0x04:
			return "normal"
		case 0x81:
			return "malformed"
		case 0x82:
			return "protocol_error"
		case 0x95:
			return "packet_too_large"
		case 0x87:
			return "not_authorized"
		case 0x8D:
			return "keepalive_timeout"
		case 0x8E:
			return "session_taken_over"
		case 0x8B:
			return "server_shutting_down"
		case 0x93:
			return "receive_maximum_exceeded"
		case 0x97:
			return "quota_exceeded"
		}
		return "other"
	}
	if strings.Contains(err.Error(), "i/o timeout") {
		return "keepalive_timeout"
	}
	if strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "broken pipe") ||
		strings.Contains(err.Error(), "use of closed network connection") {
		return "connection_lost"
	}
	return "other"
}

// OnPublishDropped counts messages mochi dropped for a subscriber whose
// outbound queue was full (QoS 0 under overload, or flow control disabled).
func (h *hook) OnPublishDropped(_ *mqtt.Client, pk packets.Packet) {
	h.b.m.dropped(fmt.Sprintf("outbound_full_qos%d", pk.FixedHeader.Qos)).Inc()
}

// OnQosDropped counts QoS>0 messages that expired or exceeded the session's
// in-flight store.
func (h *hook) OnQosDropped(_ *mqtt.Client, _ packets.Packet) {
	h.b.m.dropped("inflight_expired").Inc()
}

// Received counts the PUBLISH packets the broker accepted from clients
// since it started (outpost_broker_messages_received_total).
func (b *Broker) Received() uint64 {
	if b == nil || b.m == nil {
		return 0
	}
	return b.m.received.Get()
}

// brokerMetrics are the broker's Prometheus series.
type brokerMetrics struct {
	set           *metrics.Set
	received      *metrics.Counter
	rejected      *metrics.Counter
	authFailures  *metrics.Counter
	verifications *metrics.Counter
	flowWaits     *metrics.Counter
	slowConsumers *metrics.Counter
}

func newBrokerMetrics(set *metrics.Set, b *Broker) *brokerMetrics {
	m := &brokerMetrics{
		set:           set,
		received:      set.NewCounter("outpost_broker_messages_received_total"),
		rejected:      set.NewCounter(`outpost_broker_messages_dropped_total{reason="pipeline_rejected"}`),
		authFailures:  set.NewCounter("outpost_broker_auth_failures_total"),
		verifications: set.NewCounter("outpost_broker_password_verifications_total"),
		flowWaits:     set.NewCounter("outpost_broker_flow_control_waits_total"),
		slowConsumers: set.NewCounter(`outpost_broker_messages_dropped_total{reason="slow_consumer_disconnected"}`),
	}
	info := func(f func(*mqtt.Server) int64) func() float64 {
		return func() float64 {
			srv := b.server()
			if srv == nil {
				return 0
			}
			return float64(f(srv))
		}
	}
	set.NewGauge("outpost_broker_clients_connected", info(func(s *mqtt.Server) int64 { return atomic.LoadInt64(&s.Info.ClientsConnected) }))
	set.NewGauge("outpost_broker_inflight_messages", info(func(s *mqtt.Server) int64 { return atomic.LoadInt64(&s.Info.Inflight) }))
	set.NewGauge("outpost_broker_retained_messages", info(func(s *mqtt.Server) int64 { return atomic.LoadInt64(&s.Info.Retained) }))
	set.NewGauge("outpost_broker_retained_bytes", info(func(s *mqtt.Server) int64 { return s.Topics.Retained.Bytes() }))
	set.NewGauge("outpost_broker_subscriptions", info(func(s *mqtt.Server) int64 { return atomic.LoadInt64(&s.Info.Subscriptions) }))
	set.NewGauge("outpost_broker_connections_pending", func() float64 { return float64(b.conns.pending.Load()) })
	// Cumulative server counters, exposed as counters (_total; they were
	// gauges without _total before).
	counters := []struct {
		name string
		f    func(*mqtt.Server) int64
	}{
		{"outpost_broker_messages_sent_total", func(s *mqtt.Server) int64 { return atomic.LoadInt64(&s.Info.MessagesSent) }},
		{"outpost_broker_received_bytes_total", func(s *mqtt.Server) int64 { return atomic.LoadInt64(&s.Info.BytesReceived) }},
		{"outpost_broker_sent_bytes_total", func(s *mqtt.Server) int64 { return atomic.LoadInt64(&s.Info.BytesSent) }},
		{"outpost_broker_messages_dropped_inflight_full_total", func(s *mqtt.Server) int64 { return atomic.LoadInt64(&s.Info.InflightDropped) }},
	}
	set.RegisterMetricsWriter(func(w io.Writer) {
		for _, c := range counters {
			metrics.WriteCounterUint64(w, c.name, uint64(info(c.f)()))
		}
	})
	return m
}

func (m *brokerMetrics) aclDenied(action string) *metrics.Counter {
	return m.set.GetOrCreateCounter(`outpost_broker_acl_denied_total{action="` + action + `"}`)
}

func (m *brokerMetrics) disconnect(reason string) *metrics.Counter {
	return m.set.GetOrCreateCounter(`outpost_broker_disconnects_total{reason="` + reason + `"}`)
}

func (m *brokerMetrics) dropped(reason string) *metrics.Counter {
	return m.set.GetOrCreateCounter(`outpost_broker_messages_dropped_total{reason="` + reason + `"}`)
}

func (m *brokerMetrics) connectRefused(reason string) *metrics.Counter {
	return m.set.GetOrCreateCounter(`outpost_broker_connects_refused_total{reason="` + reason + `"}`)
}

func (m *brokerMetrics) loginRefused(reason string) *metrics.Counter {
	return m.set.GetOrCreateCounter(`outpost_broker_login_refusals_total{reason="` + reason + `"}`)
}

func (m *brokerMetrics) limitRefused(limit string) *metrics.Counter {
	return m.set.GetOrCreateCounter(`outpost_broker_limit_refusals_total{limit="` + limit + `"}`)
}
