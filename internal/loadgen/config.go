package loadgen

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// Config describes one benchmark run. The zero value of every field except
// URL and Duration/Count is a documented default that SetDefaults fills in.
// It is built from `outpost bench` flags, not from the agent's YAML file.
type Config struct {
	// URL of the broker: tcp://host:port (default port 1883), ssl:// tls://
	// mqtts:// (8883), unix:///path/to.sock, ws://host:port/path, wss://.
	URL string
	// MQTTVersion is 4 (MQTT 3.1.1, the default) or 5.
	MQTTVersion int
	// Publishers is the number of publishing connections (default 1).
	Publishers int
	// Subscribers is the number of subscribing connections; 0 publishes
	// only and measures no latency (`outpost bench` defaults to 1). Each
	// subscriber subscribes to SubTopic and is expected to receive every
	// message.
	Subscribers int
	// QoS of publishes and subscriptions: 0 (default) or 1.
	QoS int
	// Topic is the publish topic template. Placeholders: {client} (the
	// publisher's client id), {i} (publisher index), {n} (0..Topics-1,
	// cycled message by message). Default "bench/{client}/sensors/{n}".
	Topic string
	// Topics is how many distinct {n} values each publisher cycles through
	// (default 1).
	Topics int
	// SubTopic is the subscription filter (default: Topic with every level
	// holding a placeholder replaced by "+"). A filter that does not match
	// every publisher's topics makes the missing messages count as lost.
	SubTopic string
	// Payload is the payload format (default PayloadBinary).
	Payload PayloadKind
	// PayloadSize in bytes (default 200); at least 28 for binary and 148
	// for JSON payloads (see MinPayloadSize).
	PayloadSize int
	// Rate is the aggregate target publish rate in msg/s, split evenly over
	// the publishers; 0 publishes as fast as the broker accepts.
	Rate float64
	// Duration of the publish phase; Count caps the total number of
	// messages (split evenly over the publishers). At least one must be set.
	Duration time.Duration
	Count    int64
	// Username and Password for CONNECT (optional).
	Username, Password string
	// SubURL, when set, is where subscribers connect instead of URL: measure
	// a path through a bridge or a gateway uplink, e.g. devices publish to
	// an Outpost agent and subscribers read from the cloud broker it
	// forwards to. SubUsername/SubPassword default to Username/Password.
	SubURL                   string
	SubUsername, SubPassword string
	// ClientPrefix prefixes client ids: "<prefix>-p<i>", "<prefix>-s<i>"
	// (default "bench-<run id>").
	ClientPrefix string
	// Inflight is the QoS 1 window per publisher (default 64, capped by the
	// broker's MQTT 5 Receive Maximum).
	Inflight int
	// TLS: CA bundle to verify the broker, client certificate and key for
	// mutual TLS, and InsecureSkipVerify. Used by ssl:// and wss:// URLs.
	CAFile, CertFile, KeyFile string
	Insecure                  bool
	// ConnectTimeout bounds each CONNECT/CONNACK and SUBSCRIBE/SUBACK
	// exchange (default 10s).
	ConnectTimeout time.Duration
	// Drain is how long to keep receiving after the publish phase while
	// messages are still missing (default 10s; the drain ends earlier when
	// everything arrived or nothing arrived for a second).
	Drain time.Duration
	// KeepAlive sent in CONNECT (default 60s).
	KeepAlive time.Duration
	// MaxPacketSize is the largest packet accepted from the broker (default
	// 1 MiB, advertised in MQTT 5 CONNECT).
	MaxPacketSize int
	// BrokerPID, if set, is a local broker process whose CPU time and RSS
	// are sampled from /proc and reported beside the results.
	BrokerPID int
	// Progress receives one line per ProgressInterval (default 1s) during
	// the run; nil prints nothing.
	Progress         io.Writer
	ProgressInterval time.Duration
}

// MinPayloadSize returns the smallest payload size of a kind that still
// carries the run id, publisher, sequence number and send timestamp.
func MinPayloadSize(k PayloadKind) int { return minPayloadSize(k) }

// SetDefaults fills zero fields with their documented defaults.
func (c *Config) SetDefaults() {
	if c.MQTTVersion == 0 {
		c.MQTTVersion = protoV311
	}
	if c.Publishers == 0 {
		c.Publishers = 1
	}
	if c.Topic == "" {
		c.Topic = "bench/{client}/sensors/{n}"
	}
	if c.Topics == 0 {
		c.Topics = 1
	}
	if c.SubTopic == "" {
		c.SubTopic = DefaultFilter(c.Topic)
	}
	if c.Payload == "" {
		c.Payload = PayloadBinary
	}
	if c.PayloadSize == 0 {
		c.PayloadSize = 200
	}
	if c.Inflight == 0 {
		c.Inflight = 64
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = 10 * time.Second
	}
	if c.Drain == 0 {
		c.Drain = 10 * time.Second
	}
	if c.KeepAlive == 0 {
		c.KeepAlive = 60 * time.Second
	}
	if c.MaxPacketSize == 0 {
		c.MaxPacketSize = 1 << 20
	}
	if c.ProgressInterval == 0 {
		c.ProgressInterval = time.Second
	}
}

// DefaultFilter turns a topic template into the filter that matches all of
// its topics: every level holding a placeholder becomes "+".
func DefaultFilter(template string) string {
	levels := strings.Split(template, "/")
	for i, l := range levels {
		if strings.Contains(l, "{") {
			levels[i] = "+"
		}
	}
	return strings.Join(levels, "/")
}

// expandTopic fills a topic template for one publisher and topic number.
func expandTopic(template, clientID string, pub, n int) string {
	r := strings.NewReplacer("{client}", clientID, "{i}", fmt.Sprint(pub), "{n}", fmt.Sprint(n))
	return r.Replace(template)
}

// Validate returns every problem with the configuration at once; each error
// names the field (flag) it is about.
func (c Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if c.URL == "" {
		bad("url", "required (e.g. tcp://127.0.0.1:1883)")
	}
	if c.MQTTVersion != protoV311 && c.MQTTVersion != protoV5 {
		bad("mqtt", "%d: want 4 (3.1.1) or 5", c.MQTTVersion)
	}
	if c.Publishers < 1 || c.Publishers > jMaxPublishers {
		bad("publishers", "%d: want 1..%d", c.Publishers, jMaxPublishers)
	}
	if c.Subscribers < 0 || c.Subscribers > 100_000 {
		bad("subscribers", "%d: want 0..100000", c.Subscribers)
	}
	if c.QoS != 0 && c.QoS != 1 {
		bad("qos", "%d: want 0 or 1", c.QoS)
	}
	if err := checkTemplate(c.Topic); err != nil {
		bad("topic", "%q: %v", c.Topic, err)
	}
	if c.Topics < 1 || c.Topics > 100_000 {
		bad("topics", "%d: want 1..100000", c.Topics)
	}
	if c.SubTopic == "" || strings.Contains(c.SubTopic, "{") {
		bad("sub-topic", "%q: want an MQTT topic filter", c.SubTopic)
	}
	switch c.Payload {
	case PayloadBinary, PayloadJSON:
		if min := minPayloadSize(c.Payload); c.PayloadSize < min {
			bad("payload-size", "%d: a %s payload needs at least %d bytes", c.PayloadSize, c.Payload, min)
		}
		if c.PayloadSize > 64<<20 {
			bad("payload-size", "%d: at most 64 MiB", c.PayloadSize)
		}
		if c.MaxPacketSize > 0 && c.PayloadSize+1024 > c.MaxPacketSize && c.Subscribers > 0 {
			bad("payload-size", "%d: does not fit the maximum packet size %d", c.PayloadSize, c.MaxPacketSize)
		}
	default:
		bad("payload", "%q: want binary or json", c.Payload)
	}
	if c.Rate < 0 {
		bad("rate", "%g: want ≥ 0 (0 = as fast as possible)", c.Rate)
	}
	if c.Duration < 0 {
		bad("duration", "%s: want ≥ 0", c.Duration)
	}
	if c.Count < 0 {
		bad("count", "%d: want ≥ 0", c.Count)
	}
	if c.Duration == 0 && c.Count == 0 {
		bad("duration", "set a duration or a count (or both): a run must be bounded")
	}
	if c.Count > 0 && c.Count < int64(c.Publishers) {
		bad("count", "%d: fewer messages than publishers (%d)", c.Count, c.Publishers)
	}
	if c.Inflight < 1 || c.Inflight > 65535 {
		bad("inflight", "%d: want 1..65535", c.Inflight)
	}
	if c.KeepAlive < 0 || c.KeepAlive > 65535*time.Second {
		bad("keepalive", "%s: want 0..65535s", c.KeepAlive)
	}
	if c.ConnectTimeout <= 0 {
		bad("connect-timeout", "%s: want > 0", c.ConnectTimeout)
	}
	if c.Drain < 0 {
		bad("drain", "%s: want ≥ 0", c.Drain)
	}
	if c.MaxPacketSize < 64 || c.MaxPacketSize > maxVarint {
		bad("max-packet-size", "%d: want 64..%d", c.MaxPacketSize, maxVarint)
	}
	if c.ProgressInterval < 10*time.Millisecond {
		bad("progress-interval", "%s: want ≥ 10ms", c.ProgressInterval)
	}
	return errors.Join(errs...)
}

func checkTemplate(t string) error {
	if t == "" {
		return errors.New("empty")
	}
	if strings.ContainsAny(t, "+#") {
		return errors.New("a topic name cannot contain the wildcards + or #")
	}
	rest := strings.NewReplacer("{client}", "", "{i}", "", "{n}", "").Replace(t)
	if i := strings.IndexAny(rest, "{}"); i >= 0 {
		return errors.New("unknown placeholder (use {client}, {i}, {n})")
	}
	return nil
}
