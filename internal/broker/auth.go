package broker

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
)

// authState is the immutable snapshot of users and policies from config,
// swapped atomically on reload.
type authState struct {
	users      map[string]*userEntry
	anonymous  bool
	anonACL    acl
	cnListener map[string]bool // listeners authenticating by certificate CN

	// verified caches a keyed hash of passwords that passed the slow hash
	// check, so reconnect storms do not cost 50 ms of CPU per client. It lives
	// only as long as this snapshot: a config change clears it.
	cacheKey []byte
	mu       sync.Mutex
	verified map[string][32]byte
}

type userEntry struct {
	hash string
	acl  acl
}

// identity is a run-time credential issued to a supervised component. Its
// secret is random (256 bits), so a fast hash is enough to store it.
type identity struct {
	component string
	secret    [32]byte // sha256 of the password
	acl       acl
}

// IdentityPrefix starts every component identity's username; config users
// may not use it.
const IdentityPrefix = "component:"

func newAuthState(c *Config) *authState {
	st := &authState{
		users:      make(map[string]*userEntry, len(c.Users)),
		anonymous:  c.AllowAnonymous,
		anonACL:    compileACL(c.AnonymousACL),
		cnListener: map[string]bool{},
		verified:   map[string][32]byte{},
		cacheKey:   make([]byte, 32),
	}
	_, _ = rand.Read(st.cacheKey)
	for _, u := range c.Users {
		st.users[u.Username] = &userEntry{hash: u.PasswordHash, acl: compileACL(u.ACL)}
	}
	for _, l := range c.Listeners {
		if l.TLS.UseCNAsUsername {
			st.cnListener[l.Name] = true
		}
	}
	return st
}

func (st *authState) mac(user string, pw []byte) [32]byte {
	h := hmac.New(sha256.New, st.cacheKey)
	h.Write([]byte(user))
	h.Write([]byte{0})
	h.Write(pw)
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

// checkUser verifies a config user's password, using the verified cache.
func (st *authState) checkUser(user string, pw []byte) bool {
	u, ok := st.users[user]
	if !ok {
		return false
	}
	m := st.mac(user, pw)
	st.mu.Lock()
	cached, hit := st.verified[user]
	st.mu.Unlock()
	if hit {
		return subtle.ConstantTimeCompare(cached[:], m[:]) == 1
	}
	if !verifyPassword(u.hash, pw) {
		return false
	}
	st.mu.Lock()
	if len(st.verified) > 10000 {
		clear(st.verified)
	}
	st.verified[user] = m
	st.mu.Unlock()
	return true
}

// Access is what a component identity may do beyond its own namespace
// components/<name>/#.
type Access struct {
	Publish   []string `yaml:"publish" json:"publish,omitempty"`
	Subscribe []string `yaml:"subscribe" json:"subscribe,omitempty"`
}

// Credentials are what a component receives to connect to the local bus.
type Credentials struct {
	URL      string // unix:///path/to/socket
	Username string
	Password string
}

// ErrNoUnixListener is returned by IssueIdentity when no unix listener is
// configured for components to use.
var ErrNoUnixListener = errors.New("broker: no unix listener configured for components")

// IssueIdentity creates (or replaces) the run-time identity of a component
// and returns its credentials. The identity may connect only through a unix
// listener; it may publish and subscribe on components/<name>/# plus what
// access grants. Replacing an identity disconnects clients using the old one:
// a restarted component's previous credentials stop working at once.
func (b *Broker) IssueIdentity(_ context.Context, component string, access Access) (Credentials, error) {
	if component == "" || strings.ContainsAny(component, "/+#") {
		return Credentials{}, fmt.Errorf("broker: invalid component name %q", component)
	}
	for _, f := range append(append([]string(nil), access.Publish...), access.Subscribe...) {
		if err := validPattern(f); err != nil {
			return Credentials{}, fmt.Errorf("broker: component %s: access %q: %w", component, f, err)
		}
	}
	url := b.unixURL()
	if url == "" {
		return Credentials{}, ErrNoUnixListener
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return Credentials{}, err
	}
	pw := base64.RawURLEncoding.EncodeToString(raw)
	rules := []ACLRule{{Topic: "components/" + component + "/#", Access: AccessAll}}
	for _, p := range access.Publish {
		rules = append(rules, ACLRule{Topic: p, Access: AccessPublish})
	}
	for _, s := range access.Subscribe {
		rules = append(rules, ACLRule{Topic: s, Access: AccessSubscribe})
	}
	user := IdentityPrefix + component
	id := &identity{component: component, secret: sha256.Sum256([]byte(pw)), acl: compileACL(rules)}
	b.idMu.Lock()
	_, replaced := b.identities[user]
	b.identities[user] = id
	b.idMu.Unlock()
	if replaced {
		b.disconnectUser(user, "credentials rotated")
	}
	b.logOnce.forget("auth:" + user)
	return Credentials{URL: url, Username: user, Password: pw}, nil
}

// RevokeIdentity removes a component's identity and disconnects its clients.
func (b *Broker) RevokeIdentity(component string) {
	user := IdentityPrefix + component
	b.idMu.Lock()
	_, ok := b.identities[user]
	delete(b.identities, user)
	b.idMu.Unlock()
	if ok {
		b.disconnectUser(user, "credentials revoked")
	}
}

func (b *Broker) identity(user string) *identity {
	b.idMu.RLock()
	defer b.idMu.RUnlock()
	return b.identities[user]
}

func (b *Broker) unixURL() string {
	cfg := b.conf.Load()
	if cfg == nil {
		return ""
	}
	for _, l := range cfg.Listeners {
		if l.Type == TypeUnix {
			return "unix://" + l.Path
		}
	}
	return ""
}

func (b *Broker) isUnixListener(name string) bool {
	cfg := b.conf.Load()
	if cfg == nil {
		return false
	}
	for _, l := range cfg.Listeners {
		if l.Name == name {
			return l.Type == TypeUnix
		}
	}
	return false
}

func (b *Broker) disconnectUser(user, why string) {
	srv := b.server()
	if srv == nil {
		return
	}
	for _, cl := range srv.Clients.GetAll() {
		if string(cl.Properties.Username) == user && !cl.Closed() {
			b.log.Info("broker: disconnecting client", "client", cl.ID, "reason", why)
			cl.Stop(errors.New(why))
		}
	}
}
