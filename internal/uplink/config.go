package uplink

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"github.com/outpost-edge/outpost/internal/topic"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/internal/config"
	"github.com/outpost-edge/outpost/internal/queue"
	"gopkg.in/yaml.v3"
)

// Config is the `uplink:` section of outpost.yaml. Zero values are the
// documented defaults that SetDefaults fills in.
//
//	uplink:
//	  enabled: true
//	  broker: mqtts://cloud.example.com:8883
//	  node_id: gw-0042
//	  username: gw-0042
//	  password_env: OUTPOST_UPLINK_PASSWORD
//	  tls: {ca_file: /etc/outpost/ca.pem}
//	  bandwidth: 64KiB          # bytes/s, 0 = unlimited
//	  lanes:
//	    - {name: alarms, priority: high, share: 1}
//	    - {name: telemetry, priority: normal, share: 2}
//	    - {name: bulk, priority: low, share: 1}
type Config struct {
	// Enabled turns the uplink on. When false the module does nothing.
	Enabled bool `yaml:"enabled"`
	// Broker is the cloud broker URL: mqtts://host[:8883] (also ssl://,
	// tls://) or mqtt://host[:1883] (also tcp://). Required when enabled.
	Broker string `yaml:"broker"`
	// NodeID identifies this gateway in topics ({node_id}). Required when
	// enabled; letters, digits, '-', '_' and '.'.
	NodeID string `yaml:"node_id"`
	// ClientID is the MQTT client id. Default "outpost-" + node_id. It must
	// be stable: the broker keeps the session (downlink subscription and
	// queued commands) under it.
	ClientID string `yaml:"client_id"`
	// Username and Password authenticate with the broker. PasswordEnv names
	// an environment variable holding the password instead (not both). The
	// password is never logged.
	Username    string `yaml:"username"`
	Password    Secret `yaml:"password"`
	PasswordEnv string `yaml:"password_env"`
	// TLS applies to mqtts:// brokers.
	TLS TLSConfig `yaml:"tls"`
	// SessionExpiry is how long the broker keeps this gateway's session
	// while it is offline (clean start is always false). Default 24h.
	SessionExpiry config.Duration `yaml:"session_expiry"`
	// KeepAlive is the MQTT keep alive. Default 30s.
	KeepAlive config.Duration `yaml:"keepalive"`
	// ConnectTimeout bounds dial + TLS handshake + CONNACK, and each socket
	// write. Default 10s.
	ConnectTimeout config.Duration `yaml:"connect_timeout"`
	// TopicTemplate maps a record to its cloud topic. Placeholders:
	// {node_id}, {topic} (the local topic), {lane}, {device_id},
	// {client_id}. Default "outpost/{node_id}/{topic}".
	TopicTemplate string `yaml:"topic_template"`
	// Reconnect is the jittered exponential backoff between connection
	// attempts. Default min 1s, max 60s.
	Reconnect ReconnectConfig `yaml:"reconnect"`
	// Bandwidth caps the uplink in bytes/s of MQTT PUBLISH packets (token
	// bucket, about 100 ms of burst). 0 = unlimited.
	Bandwidth config.Size `yaml:"bandwidth"`
	// InFlight is the maximum number of unacknowledged publishes; the
	// broker's Receive Maximum lowers it. Default 1024.
	InFlight int `yaml:"in_flight"`
	// MaxRejects is how many negative PUBACKs one record may receive before
	// it is dead-lettered (dropped, logged, counted). Default 5.
	MaxRejects int `yaml:"max_rejects"`
	// ProgressInterval is how often drain progress is logged while a
	// backlog drains. Default 5s.
	ProgressInterval config.Duration `yaml:"progress_interval"`
	// Downlink is the cloud → gateway command path.
	Downlink DownlinkConfig `yaml:"downlink"`
	// Lanes are the uplink's queues. Default: one lane "default", normal.
	Lanes []LaneConfig `yaml:"lanes"`
}

// TLSConfig configures TLS for mqtts:// brokers.
type TLSConfig struct {
	CAFile   string `yaml:"ca_file"`   // PEM CA bundle; empty = system roots
	CertFile string `yaml:"cert_file"` // client certificate (mTLS), with key_file
	KeyFile  string `yaml:"key_file"`
	// ServerName overrides the name verified in the server certificate
	// (default: the broker host).
	ServerName string `yaml:"server_name"`
	// InsecureSkipVerify disables server certificate verification. Only for
	// tests; a warning is logged at every connection.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// ReconnectConfig bounds the reconnect backoff.
type ReconnectConfig struct {
	Min config.Duration `yaml:"min"`
	Max config.Duration `yaml:"max"`
}

// DownlinkConfig configures the command subscription. The uplink subscribes
// to Prefix+Filter and hands each message to the Downlink with Prefix
// stripped: outpost/gw-1/cmd/valve/open → cmd/valve/open.
type DownlinkConfig struct {
	// Disabled turns the subscription off.
	Disabled bool `yaml:"disabled"`
	// Prefix is stripped from cloud topics; {node_id} is replaced. Default
	// "outpost/{node_id}/". Must end with '/'.
	Prefix string `yaml:"prefix"`
	// Filter is subscribed under Prefix. Default "cmd/#".
	Filter string `yaml:"filter"`
	// QoS of the subscription, 0 or 1. Default 1.
	QoS *int `yaml:"qos"`
}

// LaneConfig is one uplink lane: a queue of its own, drained by priority.
type LaneConfig struct {
	// Name is the lane name: lowercase letters, digits, '-' and '_'.
	Name string `yaml:"name"`
	// Priority orders lanes: higher drains first. "high" (30), "normal"
	// (20, the default), "low" (10) or an integer.
	Priority Priority `yaml:"priority"`
	// Share is the lane's guaranteed weight of the bandwidth cap (ignored
	// without a cap). 0 = no guarantee: the lane gets what higher lanes
	// leave.
	Share int `yaml:"share"`
	// Queue holds the lane queue's settings (dir, max_bytes, max_age,
	// on_full, fsync...), read by the Lanes module that opens the lane's
	// queue (dir defaults to <data_dir>/queue/<lane>, SetLaneDefaults; the
	// Uplink only drains the queue).
	Queue queue.Config `yaml:"queue"`
}

// Priority is a lane priority; higher drains first.
type Priority int

// Named priorities.
const (
	PriorityLow    Priority = 10
	PriorityNormal Priority = 20
	PriorityHigh   Priority = 30
)

// UnmarshalYAML accepts high, normal, low or an integer.
func (p *Priority) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return errors.New("expected high, normal, low or an integer")
	}
	v, err := ParsePriority(n.Value)
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// MarshalYAML writes the name for named priorities.
func (p Priority) MarshalYAML() (any, error) { return p.String(), nil }

func (p Priority) String() string {
	switch p {
	case PriorityHigh:
		return "high"
	case PriorityNormal:
		return "normal"
	case PriorityLow:
		return "low"
	}
	return strconv.Itoa(int(p))
}

// ParsePriority parses high, normal, low or an integer.
func ParsePriority(s string) (Priority, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "high":
		return PriorityHigh, nil
	case "normal", "":
		return PriorityNormal, nil
	case "low":
		return PriorityLow, nil
	}
	i, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("invalid priority %q (high, normal, low or an integer)", s)
	}
	return Priority(i), nil
}

// Secret is a string that never prints: fmt and slog show "[redacted]".
type Secret string

func (Secret) String() string       { return "[redacted]" }
func (Secret) GoString() string     { return `"[redacted]"` }
func (Secret) LogValue() slog.Value { return slog.StringValue("[redacted]") }
func (s Secret) MarshalText() ([]byte, error) {
	if s == "" {
		return nil, nil
	}
	return []byte("[redacted]"), nil
}

// Defaults.
const (
	DefaultTopicTemplate    = "outpost/{node_id}/{topic}"
	DefaultDownlinkPrefix   = "outpost/{node_id}/"
	DefaultDownlinkFilter   = "cmd/#"
	DefaultInFlight         = 1024
	DefaultMaxRejects       = 5
	DefaultSessionExpiry    = 24 * time.Hour
	DefaultKeepAlive        = 30 * time.Second
	DefaultConnectTimeout   = 10 * time.Second
	DefaultReconnectMin     = time.Second
	DefaultReconnectMax     = 60 * time.Second
	DefaultProgressInterval = 5 * time.Second
	DefaultLane             = "default"
)

// SetDefaults fills zero values with the documented defaults.
func (c *Config) SetDefaults() {
	if c.ClientID == "" && c.NodeID != "" {
		c.ClientID = "outpost-" + c.NodeID
	}
	if c.SessionExpiry == 0 {
		c.SessionExpiry = config.Duration(DefaultSessionExpiry)
	}
	if c.KeepAlive == 0 {
		c.KeepAlive = config.Duration(DefaultKeepAlive)
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = config.Duration(DefaultConnectTimeout)
	}
	if c.TopicTemplate == "" {
		c.TopicTemplate = DefaultTopicTemplate
	}
	if c.Reconnect.Min == 0 {
		c.Reconnect.Min = config.Duration(DefaultReconnectMin)
	}
	if c.Reconnect.Max == 0 {
		c.Reconnect.Max = config.Duration(max(DefaultReconnectMax, c.Reconnect.Min.D()))
	}
	if c.InFlight == 0 {
		c.InFlight = DefaultInFlight
	}
	if c.MaxRejects == 0 {
		c.MaxRejects = DefaultMaxRejects
	}
	if c.ProgressInterval == 0 {
		c.ProgressInterval = config.Duration(DefaultProgressInterval)
	}
	if c.Downlink.Prefix == "" {
		c.Downlink.Prefix = DefaultDownlinkPrefix
	}
	if c.Downlink.Filter == "" {
		c.Downlink.Filter = DefaultDownlinkFilter
	}
	if c.Downlink.QoS == nil {
		q := 1
		c.Downlink.QoS = &q
	}
	if len(c.Lanes) == 0 {
		c.Lanes = []LaneConfig{{Name: DefaultLane, Priority: PriorityNormal}}
	}
	for i := range c.Lanes {
		if c.Lanes[i].Priority == 0 {
			c.Lanes[i].Priority = PriorityNormal
		}
	}
}

// Validate reports every problem, each prefixed with its YAML path relative
// to the section (lanes[1].name). Call SetDefaults first. Broker and node_id
// are required only when enabled; TLS files are loaded (so `outpost config
// check` catches a bad certificate) only when enabled.
func (c Config) Validate() error {
	var errs []error
	add := func(path string, err error) { errs = append(errs, fmt.Errorf("%s: %w", path, err)) }
	if c.Enabled || c.Broker != "" {
		if _, err := parseBroker(c.Broker); err != nil {
			add("broker", err)
		} else if u, _ := parseBroker(c.Broker); !u.tls && c.TLS != (TLSConfig{}) {
			add("tls", fmt.Errorf("set, but broker %q is not mqtts://", c.Broker))
		}
	}
	if c.Enabled && c.NodeID == "" {
		add("node_id", errors.New("required"))
	} else if c.NodeID != "" && !config.IsName(c.NodeID, 128, "._-") {
		add("node_id", fmt.Errorf("%q: use letters, digits, '-', '_', '.' (at most 128)", c.NodeID))
	}
	if c.Enabled && c.ClientID == "" {
		add("client_id", errors.New("required (default outpost-<node_id>)"))
	} else if len(c.ClientID) > 65535 {
		add("client_id", errors.New("longer than 65535 bytes"))
	}
	if c.Password != "" && c.PasswordEnv != "" {
		add("password_env", errors.New("set together with password: use one"))
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		add("tls", errors.New("cert_file and key_file go together"))
	}
	if c.SessionExpiry < 0 || c.SessionExpiry.D() > time.Duration(1<<32-1)*time.Second {
		add("session_expiry", fmt.Errorf("%v out of range (0 to about 136 years)", c.SessionExpiry))
	}
	if c.KeepAlive < 0 || c.KeepAlive.D() > 65535*time.Second {
		add("keepalive", fmt.Errorf("%v out of range (0 to 18h12m15s)", c.KeepAlive))
	}
	if c.ConnectTimeout < 0 {
		add("connect_timeout", errors.New("negative"))
	}
	if _, err := ParseTemplate(c.TopicTemplate); err != nil {
		add("topic_template", err)
	}
	if c.Reconnect.Min <= 0 {
		add("reconnect.min", errors.New("must be positive"))
	}
	if c.Reconnect.Max < c.Reconnect.Min {
		add("reconnect.max", fmt.Errorf("%v is below reconnect.min %v", c.Reconnect.Max, c.Reconnect.Min))
	}
	if c.Bandwidth < 0 {
		add("bandwidth", errors.New("negative"))
	}
	if c.InFlight < 1 || c.InFlight > 65535 {
		add("in_flight", fmt.Errorf("%d out of range 1..65535", c.InFlight))
	}
	if c.MaxRejects < 1 {
		add("max_rejects", fmt.Errorf("%d: must be at least 1", c.MaxRejects))
	}
	if c.ProgressInterval < 0 {
		add("progress_interval", errors.New("negative"))
	}
	if !c.Downlink.Disabled {
		if !strings.HasSuffix(c.Downlink.Prefix, "/") || strings.ContainsAny(c.Downlink.Prefix, "+#\x00") {
			add("downlink.prefix", fmt.Errorf("%q must end with '/' and hold no wildcard", c.Downlink.Prefix))
		}
		if err := topic.ValidFilter(c.Downlink.Filter); err != nil {
			add("downlink.filter", err)
		}
		if c.Downlink.QoS != nil && (*c.Downlink.QoS < 0 || *c.Downlink.QoS > 1) {
			add("downlink.qos", fmt.Errorf("%d: must be 0 or 1", *c.Downlink.QoS))
		}
	}
	if len(c.Lanes) == 0 {
		add("lanes", errors.New("at least one lane is required"))
	}
	seen := map[string]int{}
	for i, l := range c.Lanes {
		p := fmt.Sprintf("lanes[%d]", i)
		if !config.IsName(l.Name, 64, "_-") || strings.ToLower(l.Name) != l.Name {
			add(p+".name", fmt.Errorf("%q: use lowercase letters, digits, '-' and '_' (at most 64)", l.Name))
		}
		if j, dup := seen[l.Name]; dup {
			add(p+".name", fmt.Errorf("%q already used by lanes[%d]", l.Name, j))
		}
		seen[l.Name] = i
		if l.Share < 0 {
			add(p+".share", fmt.Errorf("%d: must not be negative", l.Share))
		}
	}
	if c.Enabled && len(errs) == 0 {
		if u, _ := parseBroker(c.Broker); u.tls {
			if _, err := c.tlsConfig(u.host); err != nil {
				add("tls", err)
			}
		}
	}
	return errors.Join(errs...)
}

// brokerURL is a parsed Broker.
type brokerURL struct {
	tls  bool
	host string // without port
	addr string // host:port
}

func parseBroker(s string) (brokerURL, error) {
	if s == "" {
		return brokerURL{}, errors.New("required (e.g. mqtts://broker.example.com:8883)")
	}
	u, err := url.Parse(s)
	if err != nil {
		return brokerURL{}, fmt.Errorf("invalid URL %q: %w", s, err)
	}
	var b brokerURL
	port := "1883"
	switch strings.ToLower(u.Scheme) {
	case "mqtts", "ssl", "tls", "mqtt+ssl":
		b.tls, port = true, "8883"
	case "mqtt", "tcp":
	default:
		return brokerURL{}, fmt.Errorf("%q: scheme must be mqtts:// or mqtt://", s)
	}
	if u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.User != nil {
		return brokerURL{}, fmt.Errorf("%q: only scheme://host[:port] is allowed (credentials go in username/password)", s)
	}
	b.host = u.Hostname()
	if b.host == "" {
		return brokerURL{}, fmt.Errorf("%q: missing host", s)
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return brokerURL{}, fmt.Errorf("%q: invalid port %q", s, p)
		}
		port = p
	}
	b.addr = net.JoinHostPort(b.host, port)
	return b, nil
}

// tlsConfig loads the CA and client certificate files.
func (c Config) tlsConfig(host string) (*tls.Config, error) {
	t := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host, InsecureSkipVerify: c.TLS.InsecureSkipVerify}
	if c.TLS.ServerName != "" {
		t.ServerName = c.TLS.ServerName
	}
	if c.TLS.CAFile != "" {
		pemBytes, err := os.ReadFile(c.TLS.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemBytes) {
			return nil, fmt.Errorf("ca_file: %s: no PEM certificate found", c.TLS.CAFile)
		}
		t.RootCAs = pool
	}
	if c.TLS.CertFile != "" {
		kp, err := tls.LoadX509KeyPair(c.TLS.CertFile, c.TLS.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("cert_file/key_file: %w", err)
		}
		t.Certificates = []tls.Certificate{kp}
	}
	return t, nil
}

// password returns the configured password, reading PasswordEnv if set.
func (c Config) password() (string, error) {
	if c.PasswordEnv != "" {
		v, ok := os.LookupEnv(c.PasswordEnv)
		if !ok || v == "" {
			return "", fmt.Errorf("password_env: environment variable %s is not set", c.PasswordEnv)
		}
		return v, nil
	}
	return string(c.Password), nil
}
