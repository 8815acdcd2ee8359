package broker

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
)

// authState is the immutable snapshot of users and policies from config,
// swapped atomically on reload.
type authState struct {
	users     map[string]*userEntry
	anonymous bool
	anonACL   acl
	// certListener maps a listener to where it takes identities from
	// verified client certificates: identityLenient (use_cn_as_username:
	// the CN when a certificate is given, else a password), cert_cn or
	// cert_san (the certificate only).
	certListener map[string]string
	login        Login

	// hashes bounds concurrent slow verifications (a semaphore).
	hashes chan struct{}
	// dummy is a hash with the most common parameters among the users',
	// verified (and the result ignored) for unknown usernames, so that they
	// cost what a known one costs.
	dummy string

	// verified caches a keyed hash (HMAC with a random per-snapshot key) of
	// username and password pairs that passed the slow hash check, so
	// reconnect storms do not cost a slow hash per client. Only the exact
	// right credential hits: a wrong password misses and pays the full
	// verification. It lives only as long as this snapshot: a config
	// change clears it.
	cacheKey []byte
	mu       sync.Mutex
	verified map[[32]byte]struct{}
}

// identityLenient is certListener's value for use_cn_as_username.
const identityLenient = "cn_or_password"

type userEntry struct {
	hash      string
	acl       acl
	clientIDs *clientIDPattern // nil: any client id
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

// verifiedCacheMax bounds the verified cache (it is cleared when full).
const verifiedCacheMax = 10000

func newAuthState(c *Config) *authState {
	st := &authState{
		users:        make(map[string]*userEntry, len(c.Users)),
		anonymous:    c.AllowAnonymous,
		anonACL:      compileACL(c.AnonymousACL),
		certListener: map[string]string{},
		login:        c.Login,
		hashes:       make(chan struct{}, max(c.Login.MaxParallelHashes, 1)),
		verified:     map[[32]byte]struct{}{},
		cacheKey:     make([]byte, 32),
	}
	_, _ = rand.Read(st.cacheKey)
	for _, u := range c.Users {
		e := &userEntry{hash: u.PasswordHash, acl: compileACL(u.ACL)}
		pattern := u.ClientIDPattern
		if pattern == "" {
			pattern = c.ClientIDPattern
		}
		if pattern != "" {
			e.clientIDs = compileClientIDPattern(pattern, u.Username)
		}
		st.users[u.Username] = e
	}
	st.dummy = dummyHash(c.Users)
	for _, l := range c.Listeners {
		switch {
		case l.TLS.Identity != "":
			st.certListener[l.Name] = l.TLS.Identity
		case l.TLS.UseCNAsUsername:
			st.certListener[l.Name] = identityLenient
		}
	}
	return st
}

// dummyHash returns the hash of a user whose parameters (format and cost)
// are the most common among users: verifying an unknown username's password
// against it costs what a known user's costs.
func dummyHash(users []User) string {
	count := map[string]int{}
	best, bestN := "", 0
	for _, u := range users {
		k := hashParams(u.PasswordHash)
		count[k]++
		if count[k] > bestN {
			best, bestN = u.PasswordHash, count[k]
		}
	}
	return best
}

// hashParams is the part of a hash that sets its cost: "$2a$10$" for
// bcrypt, "$argon2id$v=19$m=..,t=..,p=..$" for argon2id.
func hashParams(h string) string {
	parts := strings.SplitAfterN(h, "$", 5)
	if strings.HasPrefix(h, "$argon2id$") && len(parts) == 5 {
		return strings.Join(parts[:4], "")
	}
	if len(parts) >= 3 {
		return strings.Join(parts[:3], "")
	}
	return h
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

func (st *authState) cached(m [32]byte) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	_, ok := st.verified[m]
	return ok
}

func (st *authState) remember(m [32]byte) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(st.verified) >= verifiedCacheMax {
		clear(st.verified)
	}
	st.verified[m] = struct{}{}
}

// acquireHash takes a verification slot, waiting at most wait.
func (st *authState) acquireHash(wait time.Duration) bool {
	select {
	case st.hashes <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case st.hashes <- struct{}{}:
		return true
	case <-t.C:
		return false
	}
}

func (st *authState) releaseHash() { <-st.hashes }

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
