package broker

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/internal/config"
)

// Config is the `broker:` section.
type Config struct {
	// Listeners the broker accepts connections on. Default: one TCP listener
	// on 127.0.0.1:1883.
	Listeners []Listener `yaml:"listeners"`
	// AllowAnonymous admits clients without credentials; they get AnonymousACL.
	// Off by default: every client must authenticate.
	AllowAnonymous bool      `yaml:"allow_anonymous"`
	AnonymousACL   []ACLRule `yaml:"anonymous_acl"`
	Users          []User    `yaml:"users"`
	Limits         Limits    `yaml:"limits"`
	// ForeignSession is what happens when a client connects with the client id
	// of a session that belongs to another user: "refuse" (default: CONNACK
	// 0x87, 3.1.1: 5 not authorized; the owner's session and connection are
	// untouched) or "fresh" (the other user's session is discarded, its client
	// disconnected, and the newcomer starts a fresh session).
	ForeignSession string `yaml:"foreign_session"`
	// Persistence keeps retained messages and persistent sessions (with
	// their queued QoS>0 messages) across restarts in a bbolt file.
	Persistence Persistence `yaml:"persistence"`
	// ClientIDPattern binds client ids to users: a user without its own
	// client_id_pattern may connect only with a client id matching this one
	// (%u is the username, * any run of characters). Empty: any client id.
	ClientIDPattern string `yaml:"client_id_pattern"`
	// Login bounds the cost of password logins (see login.go).
	Login Login `yaml:"login"`
}

// Login bounds what password logins may cost the gateway: how many slow
// hash verifications run at once, and how failed logins are slowed down.
type Login struct {
	// MaxParallelHashes is how many password verifications may run at once
	// (default: GOMAXPROCS, at most 4). Each argon2id verification holds
	// its m parameter in memory while it runs.
	MaxParallelHashes int `yaml:"max_parallel_hashes"`
	// HashWait is how long a login waits for a free verification slot
	// before it is refused with CONNACK 0x89 server busy (3.1.1: 0x03).
	// Default 2s (at most half of limits.connect_timeout); it must be
	// shorter than connect_timeout, which bounds the whole login.
	HashWait config.Duration `yaml:"hash_wait"`
	// RateLimit slows down failed logins per source address and per
	// username (default on).
	RateLimit *bool `yaml:"rate_limit"`
	// FreeFailures is how many failed logins an address or a username may
	// have before backoff starts (default 5).
	FreeFailures int `yaml:"free_failures"`
	// BackoffInitial is the first refusal period after FreeFailures
	// failures; it doubles with every further failure up to BackoffMax.
	// During it logins from that address (or for that username) are
	// refused with CONNACK 0x9F connection rate exceeded (3.1.1: 0x03)
	// without verifying the password. Defaults 1s and 5m.
	BackoffInitial config.Duration `yaml:"backoff_initial"`
	BackoffMax     config.Duration `yaml:"backoff_max"`
	// Tracked is how many addresses, and how many usernames, the rate
	// limiter remembers (least recently failed forgotten first). Default 4096.
	Tracked int `yaml:"tracked"`
}

// RateLimitOn reports whether failed logins are rate-limited.
func (l Login) RateLimitOn() bool { return l.RateLimit == nil || *l.RateLimit }

// Listener is one network endpoint.
type Listener struct {
	Name    string `yaml:"name"`    // default: type, or type-N when repeated
	Type    string `yaml:"type"`    // tcp | tls | ws | wss | unix
	Address string `yaml:"address"` // host:port for tcp/tls/ws/wss
	Path    string `yaml:"path"`    // socket path for unix
	// Mode is the unix socket's permission bits (default 0660).
	Mode string `yaml:"mode"`
	TLS  TLS    `yaml:"tls"`
}

// TLS configures a tls or wss listener.
type TLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ClientCAFile, when set, makes the listener verify client certificates
	// against it; with RequireClientCert a client without one is refused (mTLS).
	ClientCAFile      string `yaml:"client_ca_file"`
	RequireClientCert bool   `yaml:"require_client_cert"`
	// UseCNAsUsername authenticates a client by its verified certificate's
	// common name (no password needed); ACLs then apply to that user.
	UseCNAsUsername bool `yaml:"use_cn_as_username"`
	// Identity, when set, makes the verified client certificate the only
	// way to log in on this listener: cert_cn uses its common name as the
	// username, cert_san its one DNS subject alternative name. Usernames
	// and passwords sent in CONNECT are ignored; a client without a
	// verified certificate is refused (0x87 not authorized).
	Identity   string `yaml:"identity"`
	MinVersion string `yaml:"min_version"` // "1.2" (default) or "1.3"
}

// User is a local account.
type User struct {
	Username string `yaml:"username"`
	// PasswordHash is a bcrypt ($2a$/$2b$/$2y$) or argon2id
	// ($argon2id$v=19$m=...,t=...,p=...$salt$hash) hash; make one with
	// `outpost passwd`.
	PasswordHash string    `yaml:"password_hash"`
	ACL          []ACLRule `yaml:"acl"`
	// ClientIDPattern restricts the client ids this user may connect with
	// (%u is the username, * any run of characters), e.g. "%u" or "%u-*";
	// others are refused with CONNACK 0x85 (3.1.1: 0x02). Default: the
	// broker's client_id_pattern.
	ClientIDPattern string `yaml:"client_id_pattern"`
}

// ACLRule allows or denies access to topics matching Topic, a topic filter
// (with + and #) in which %u is replaced by the username and %c by the client
// id. Rules are checked in order; the first rule whose topic matches and whose
// access covers the action decides. No match means deny.
type ACLRule struct {
	Topic  string `yaml:"topic"`
	Access string `yaml:"access"` // publish | subscribe | all | deny
}

// Limits bound what one client or the whole broker may use.
type Limits struct {
	MaxConnections int         `yaml:"max_connections"`  // default 1000
	MaxPacketSize  config.Size `yaml:"max_packet_size"`  // default 256KiB
	MaxTopicLevels int         `yaml:"max_topic_levels"` // default 16
	// ReceiveMaximum is how many QoS>0 publishes a client may have in flight
	// towards the broker (default 64).
	ReceiveMaximum int `yaml:"receive_maximum"`
	// MaxInflight is how many QoS>0 messages the broker keeps per client
	// session awaiting acknowledgement, including for disconnected persistent
	// sessions (default 1024). Beyond it new messages for that session are
	// dropped and counted.
	MaxInflight int `yaml:"max_inflight"`
	// MaxPending is the per-client outbound write queue (default 1024
	// packets). QoS>0 publishers are slowed down (flow control) while a
	// subscriber's queue is above three quarters of it.
	MaxPending int `yaml:"max_pending"`
	// SessionExpiry caps how long a disconnected persistent session is kept.
	SessionExpiry config.Duration `yaml:"session_expiry"` // default 24h
	// MaxClientIDLength bounds client ids in bytes (default 256): CONNACK
	// 0x85, 3.1.1: 2 identifier rejected.
	MaxClientIDLength int `yaml:"max_client_id_length"`
	// MaxTopicLength bounds topic names, will topics and subscription
	// filters in bytes (default 1024): PUBACK 0x90, SUBACK 0x8F, CONNACK 0x90
	// (3.1.1: the connection is closed).
	MaxTopicLength int `yaml:"max_topic_length"`
	// MaxRetained bounds the number of retained topics (default 10000) and
	// MaxRetainedBytes their topic and payload bytes (default 32MiB). A
	// publish that would add a topic or bytes beyond them is refused (PUBACK
	// 0x97); replacing or deleting a retained message is always possible
	// while it does not grow the store past the limit.
	MaxRetained      int         `yaml:"max_retained"`
	MaxRetainedBytes config.Size `yaml:"max_retained_bytes"`
	// ConnectTimeout is how long a new connection may take to send its
	// CONNECT packet (TLS handshake included); it is closed after that and
	// counted. Until then it counts against MaxConnections. Default 10s.
	ConnectTimeout config.Duration `yaml:"connect_timeout"`
}

// Persistence configures the broker's file store.
type Persistence struct {
	Enabled *bool  `yaml:"enabled"` // default true
	Path    string `yaml:"path"`    // default <data_dir>/broker.db
	// FlushInterval is how often session changes are committed (one fsync
	// for all of them); a power cut loses at most this much broker session
	// state. Default 100ms.
	FlushInterval config.Duration `yaml:"flush_interval"`
}

// On reports whether persistence is enabled.
func (p Persistence) On() bool { return p.Enabled == nil || *p.Enabled }

// Listener types.
const (
	TypeTCP  = "tcp"
	TypeTLS  = "tls"
	TypeWS   = "ws"
	TypeWSS  = "wss"
	TypeUnix = "unix"
)

// ForeignSession values.
const (
	ForeignSessionRefuse = "refuse"
	ForeignSessionFresh  = "fresh"
)

// TLS identity sources.
const (
	IdentityCertCN  = "cert_cn"
	IdentityCertSAN = "cert_san"
)

// Access values.
const (
	AccessPublish   = "publish"
	AccessSubscribe = "subscribe"
	AccessAll       = "all"
	AccessDeny      = "deny"
)

// SetDefaults fills zero values.
func (c *Config) SetDefaults() {
	if len(c.Listeners) == 0 {
		c.Listeners = []Listener{{Type: TypeTCP, Address: "127.0.0.1:1883"}}
	}
	counts := map[string]int{}
	for _, l := range c.Listeners {
		counts[l.Type]++
	}
	seen := map[string]int{}
	for i := range c.Listeners {
		l := &c.Listeners[i]
		if l.Name == "" {
			seen[l.Type]++
			l.Name = l.Type
			if counts[l.Type] > 1 {
				l.Name = fmt.Sprintf("%s-%d", l.Type, seen[l.Type])
			}
		}
		if l.Type == TypeUnix && l.Mode == "" {
			l.Mode = "0660"
		}
	}
	if c.Persistence.FlushInterval == 0 {
		c.Persistence.FlushInterval = config.Duration(100 * time.Millisecond)
	}
	lim := &c.Limits
	if lim.MaxConnections == 0 {
		lim.MaxConnections = 1000
	}
	if lim.MaxPacketSize == 0 {
		lim.MaxPacketSize = 256 << 10
	}
	if lim.MaxTopicLevels == 0 {
		lim.MaxTopicLevels = 16
	}
	if lim.ReceiveMaximum == 0 {
		lim.ReceiveMaximum = 64
	}
	if lim.MaxInflight == 0 {
		lim.MaxInflight = 1024
	}
	if lim.MaxPending == 0 {
		lim.MaxPending = 1024
	}
	if lim.SessionExpiry == 0 {
		lim.SessionExpiry = config.Duration(24 * 60 * 60 * 1e9)
	}
	if lim.MaxClientIDLength == 0 {
		lim.MaxClientIDLength = 256
	}
	if lim.MaxTopicLength == 0 {
		lim.MaxTopicLength = 1024
	}
	if lim.MaxRetained == 0 {
		lim.MaxRetained = 10000
	}
	if lim.MaxRetainedBytes == 0 {
		lim.MaxRetainedBytes = 32 << 20
	}
	if c.ForeignSession == "" {
		c.ForeignSession = ForeignSessionRefuse
	}
	if lim.ConnectTimeout == 0 {
		lim.ConnectTimeout = config.Duration(10 * time.Second)
	}
	lg := &c.Login
	if lg.MaxParallelHashes == 0 {
		lg.MaxParallelHashes = min(runtime.GOMAXPROCS(0), 4)
	}
	if lg.HashWait == 0 {
		lg.HashWait = config.Duration(min(2*time.Second, lim.ConnectTimeout.D()/2))
	}
	if lg.FreeFailures == 0 {
		lg.FreeFailures = 5
	}
	if lg.BackoffInitial == 0 {
		lg.BackoffInitial = config.Duration(time.Second)
	}
	if lg.BackoffMax == 0 {
		lg.BackoffMax = config.Duration(5 * time.Minute)
	}
	if lg.Tracked == 0 {
		lg.Tracked = 4096
	}
}

// Validate checks the section as a whole; every problem is reported.
func (c *Config) Validate() error {
	var errs []error
	add := func(path, format string, args ...any) { errs = append(errs, config.Field(path, format, args...)) }
	names := map[string]bool{}
	addrs := map[string]string{}
	for i, l := range c.Listeners {
		p := fmt.Sprintf("listeners[%d]", i)
		if names[l.Name] {
			add(p+".name", "duplicate listener name %q", l.Name)
		}
		names[l.Name] = true
		switch l.Type {
		case TypeTCP, TypeTLS, TypeWS, TypeWSS:
			if _, _, err := net.SplitHostPort(l.Address); err != nil {
				add(p+".address", "listener %s: address %q must be host:port (e.g. 127.0.0.1:1883)", l.Name, l.Address)
			} else if prev, dup := addrs[l.Address]; dup {
				add(p+".address", "listener %s: address %s is already used by listener %s", l.Name, l.Address, prev)
			} else {
				addrs[l.Address] = l.Name
			}
			if l.Path != "" {
				add(p+".path", "listener %s: path is only for unix listeners", l.Name)
			}
		case TypeUnix:
			if l.Path == "" {
				add(p+".path", "listener %s: a unix listener needs a socket path", l.Name)
			}
			if l.Address != "" {
				add(p+".address", "listener %s: a unix listener takes path, not address", l.Name)
			}
			if _, err := parseMode(l.Mode); err != nil {
				add(p+".mode", "listener %s: %v", l.Name, err)
			}
		case "":
			add(p+".type", "listener type is required (tcp, tls, ws, wss or unix)")
		default:
			add(p+".type", "unknown listener type %q (want tcp, tls, ws, wss or unix)", l.Type)
		}
		secure := l.Type == TypeTLS || l.Type == TypeWSS
		if secure {
			if l.TLS.CertFile == "" || l.TLS.KeyFile == "" {
				add(p+".tls", "listener %s: %s needs tls.cert_file and tls.key_file", l.Name, l.Type)
			}
			for _, f := range []struct{ field, path string }{{"cert_file", l.TLS.CertFile}, {"key_file", l.TLS.KeyFile}, {"client_ca_file", l.TLS.ClientCAFile}} {
				if f.path == "" {
					continue
				}
				if err := readable(f.path); err != nil {
					add(p+".tls."+f.field, "listener %s: %v", l.Name, err)
				}
			}
			if l.TLS.RequireClientCert && l.TLS.ClientCAFile == "" {
				add(p+".tls.require_client_cert", "listener %s: require_client_cert needs client_ca_file", l.Name)
			}
			if l.TLS.UseCNAsUsername && l.TLS.ClientCAFile == "" {
				add(p+".tls.use_cn_as_username", "listener %s: use_cn_as_username needs client_ca_file", l.Name)
			}
			switch l.TLS.Identity {
			case "":
			case IdentityCertCN, IdentityCertSAN:
				if l.TLS.ClientCAFile == "" {
					add(p+".tls.identity", "listener %s: identity %s needs client_ca_file", l.Name, l.TLS.Identity)
				}
				if l.TLS.UseCNAsUsername {
					add(p+".tls.identity", "listener %s: set identity or use_cn_as_username, not both", l.Name)
				}
			default:
				add(p+".tls.identity", "listener %s: unknown identity %q (want cert_cn or cert_san)", l.Name, l.TLS.Identity)
			}
			switch l.TLS.MinVersion {
			case "", "1.2", "1.3":
			default:
				add(p+".tls.min_version", "listener %s: min_version must be 1.2 or 1.3", l.Name)
			}
		} else if l.TLS != (TLS{}) {
			add(p+".tls", "listener %s: tls settings need type tls or wss", l.Name)
		}
	}
	users := map[string]bool{}
	for i, u := range c.Users {
		p := fmt.Sprintf("users[%d]", i)
		if u.Username == "" {
			add(p+".username", "username is required")
		} else if strings.HasPrefix(u.Username, IdentityPrefix) {
			add(p+".username", "usernames starting with %q are reserved for components", IdentityPrefix)
		} else if strings.ContainsAny(u.Username, "+#/") {
			add(p+".username", "username %q must not contain +, # or /", u.Username)
		}
		if users[u.Username] {
			add(p+".username", "duplicate user %q", u.Username)
		}
		users[u.Username] = true
		if u.PasswordHash == "" {
			add(p+".password_hash", "user %q has no password_hash (make one with `outpost passwd`)", u.Username)
		} else if err := checkHashFormat(u.PasswordHash); err != nil {
			add(p+".password_hash", "user %q: %v", u.Username, err)
		}
		errs = append(errs, validateACL(p+".acl", u.ACL)...)
		if u.ClientIDPattern != "" {
			if err := validClientIDPattern(u.ClientIDPattern); err != nil {
				add(p+".client_id_pattern", "user %q: %v", u.Username, err)
			}
		}
	}
	if c.ClientIDPattern != "" {
		if err := validClientIDPattern(c.ClientIDPattern); err != nil {
			add("client_id_pattern", "%v", err)
		}
	}
	errs = append(errs, c.checkClientIDOverlap()...)
	errs = append(errs, validateACL("anonymous_acl", c.AnonymousACL)...)
	if len(c.AnonymousACL) > 0 && !c.AllowAnonymous {
		add("anonymous_acl", "anonymous_acl is set but allow_anonymous is false")
	}
	lim := c.Limits
	if lim.MaxConnections < 1 {
		add("limits.max_connections", "must be at least 1")
	}
	if lim.MaxPacketSize < 64 || lim.MaxPacketSize > 256<<20 {
		add("limits.max_packet_size", "must be between 64 bytes and 256MiB")
	}
	if lim.MaxTopicLevels < 1 || lim.MaxTopicLevels > 1024 {
		add("limits.max_topic_levels", "must be between 1 and 1024")
	}
	if lim.ReceiveMaximum < 1 || lim.ReceiveMaximum > 65535 {
		add("limits.receive_maximum", "must be between 1 and 65535")
	}
	if lim.MaxInflight < 1 || lim.MaxInflight > 65535 {
		add("limits.max_inflight", "must be between 1 and 65535")
	}
	if lim.MaxPending < 16 || lim.MaxPending > 1<<20 {
		add("limits.max_pending", "must be between 16 and 1048576")
	}
	if fi := c.Persistence.FlushInterval.D(); fi < time.Millisecond || fi > time.Minute {
		add("persistence.flush_interval", "must be between 1ms and 1m")
	}
	if lim.SessionExpiry < 0 {
		add("limits.session_expiry", "must not be negative")
	}
	if lim.MaxClientIDLength < 23 || lim.MaxClientIDLength > 65535 {
		add("limits.max_client_id_length", "must be between 23 (the least MQTT allows) and 65535")
	}
	if lim.MaxTopicLength < 1 || lim.MaxTopicLength > 65535 {
		add("limits.max_topic_length", "must be between 1 and 65535")
	}
	if lim.MaxRetained < 1 {
		add("limits.max_retained", "must be at least 1")
	}
	if lim.MaxRetainedBytes < 1 {
		add("limits.max_retained_bytes", "must be at least 1 byte")
	}
	switch c.ForeignSession {
	case ForeignSessionRefuse, ForeignSessionFresh:
	default:
		add("foreign_session", "unknown value %q (want refuse or fresh)", c.ForeignSession)
	}
	if d := lim.ConnectTimeout.D(); d < 10*time.Millisecond || d > 10*time.Minute {
		add("limits.connect_timeout", "must be between 10ms and 10m")
	}
	lg := c.Login
	if lg.MaxParallelHashes < 1 || lg.MaxParallelHashes > 256 {
		add("login.max_parallel_hashes", "must be between 1 and 256")
	}
	if d := lg.HashWait.D(); d < time.Millisecond || d > time.Minute {
		add("login.hash_wait", "must be between 1ms and 1m")
	} else if d >= lim.ConnectTimeout.D() {
		add("login.hash_wait", "must be shorter than limits.connect_timeout (%s), which also bounds the login: a refusal after a longer wait could not be sent", lim.ConnectTimeout)
	}
	if lg.FreeFailures < 1 || lg.FreeFailures > 1000 {
		add("login.free_failures", "must be between 1 and 1000")
	}
	if d := lg.BackoffInitial.D(); d < time.Millisecond || d > time.Hour {
		add("login.backoff_initial", "must be between 1ms and 1h")
	}
	if d := lg.BackoffMax.D(); d < lg.BackoffInitial.D() || d > 24*time.Hour {
		add("login.backoff_max", "must be between backoff_initial and 24h")
	}
	if lg.Tracked < 16 || lg.Tracked > 1<<20 {
		add("login.tracked", "must be between 16 and 1048576")
	}
	return errors.Join(errs...)
}

func validateACL(path string, rules []ACLRule) []error {
	var errs []error
	for i, r := range rules {
		p := fmt.Sprintf("%s[%d]", path, i)
		if err := validPattern(r.Topic); err != nil {
			errs = append(errs, config.Field(p+".topic", "invalid ACL pattern %q: %v", r.Topic, err))
		}
		switch r.Access {
		case AccessPublish, AccessSubscribe, AccessAll, AccessDeny:
		case "":
			errs = append(errs, config.Field(p+".access", "access is required (publish, subscribe, all or deny)"))
		default:
			errs = append(errs, config.Field(p+".access", "unknown access %q (want publish, subscribe, all or deny)", r.Access))
		}
	}
	return errs
}

func readable(path string) error {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("file %s does not exist", path)
		}
		if errors.Is(err, os.ErrPermission) {
			return fmt.Errorf("file %s is not readable (permission denied)", path)
		}
		return err
	}
	return f.Close()
}

func parseMode(s string) (os.FileMode, error) {
	var m uint32
	if _, err := fmt.Sscanf(s, "%o", &m); err != nil || m > 0o777 || len(s) > 4 {
		return 0, fmt.Errorf("mode %q must be octal permission bits such as 0660", s)
	}
	return os.FileMode(m), nil
}

// dataPath resolves a relative persistence path against dataDir.
func dataPath(dataDir, p string) string {
	if p == "" {
		p = "broker.db"
	}
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(dataDir, p)
}
