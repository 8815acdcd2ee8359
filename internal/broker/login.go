package broker

import (
	"container/list"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Logins. A password login is the one thing an unauthenticated client can
// make the broker spend real CPU and memory on (an argon2id verification
// holds its m parameter, 19 MiB with the old default, for tens of
// milliseconds). So:
//
//   - at most Login.MaxParallelHashes verifications run at once; a login
//     waits for a slot at most Login.HashWait, then is refused (0x89);
//   - every password that is not the exact cached right one pays a full
//     verification, and an unknown username pays one against a hash with the
//     users' usual parameters (authState.dummy): a guess costs the same
//     whether the user exists, has logged in before, or not;
//   - failed logins are counted per source address and per username; after
//     Login.FreeFailures, that address (or username) is refused without
//     verification (0x9F) for a backoff period that doubles with every
//     further failure. A username's backoff does not apply to an address the
//     user has logged in from before, so an attacker guessing a device's
//     password elsewhere does not lock the device out. Both maps are
//     bounded LRUs (Login.Tracked entries each).
//
// Authentication runs in the OnConnect hook (so it can answer with the
// reason code that fits); OnConnectAuthenticate only reads its verdict.

// verifyHook, when set (tests only), runs inside every slow verification
// while its slot is held.
var verifyHook atomic.Pointer[func()]

// loginGuard is the broker's failed-login state; it outlives config
// reloads.
type loginGuard struct {
	addrs   failLimiter // by source address (IPv6: its /64)
	users   failLimiter // by sha256 of the username
	trusted failLimiter // (username, address) pairs that logged in; only presence matters
}

// failEntry is one address's or username's recent failures.
type failEntry struct {
	key   string
	fails int
	until time.Time // refused before this
	last  time.Time
}

// failLimiter is a bounded LRU of failEntry: the least recently failed key
// is forgotten first.
type failLimiter struct {
	mu sync.Mutex
	ll *list.List
	m  map[string]*list.Element
}

func (l *failLimiter) get(key string) *failEntry {
	if e, ok := l.m[key]; ok {
		return e.Value.(*failEntry)
	}
	return nil
}

// blockedFor reports how long key is still refused (0: not refused).
func (l *failLimiter) blockedFor(key string, now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e := l.get(key); e != nil && now.Before(e.until) {
		return e.until.Sub(now)
	}
	return 0
}

// fail records a failure of key and returns the backoff it starts (0 while
// the key has free failures left).
func (l *failLimiter) fail(key string, now time.Time, p Login) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.touch(key, p.Tracked)
	if now.Sub(e.last) > 2*p.BackoffMax.D() {
		e.fails = 0 // quiet long enough: forgiven
	}
	e.last = now
	e.fails++
	if e.fails < p.FreeFailures {
		return 0
	}
	d := p.BackoffInitial.D()
	for i := p.FreeFailures; i < e.fails && d < p.BackoffMax.D(); i++ {
		d *= 2
	}
	d = min(d, p.BackoffMax.D())
	e.until = now.Add(d)
	return d
}

// touch returns key's entry, created if needed, as the most recent.
func (l *failLimiter) touch(key string, max int) *failEntry {
	if l.m == nil {
		l.m, l.ll = map[string]*list.Element{}, list.New()
	}
	if el, ok := l.m[key]; ok {
		l.ll.MoveToFront(el)
		return el.Value.(*failEntry)
	}
	e := &failEntry{key: key}
	l.m[key] = l.ll.PushFront(e)
	for l.ll.Len() > max {
		old := l.ll.Back()
		l.ll.Remove(old)
		delete(l.m, old.Value.(*failEntry).key)
	}
	return e
}

func (l *failLimiter) reset(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if el, ok := l.m[key]; ok {
		l.ll.Remove(el)
		delete(l.m, key)
	}
}

func (l *failLimiter) mark(key string, max int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.touch(key, max)
}

func (l *failLimiter) has(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.get(key) != nil
}

// addrKey is the rate-limiting key of a remote address: the IP (an IPv6
// client controls a whole /64, so that), or the listener for unix sockets.
func addrKey(remote, listener string) string {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	ip := net.ParseIP(host)
	switch {
	case ip == nil:
		return "local:" + listener
	case ip.To4() != nil:
		return ip.To4().String()
	default:
		return ip.Mask(net.CIDRMask(64, 128)).String() + "/64"
	}
}

func userKey(user string) string {
	s := sha256.Sum256([]byte(user))
	return string(s[:16])
}

func pairKey(user, addr string) string {
	s := sha256.Sum256([]byte(user + "\x00" + addr))
	return string(s[:16])
}

// loginResult is the verdict on one CONNECT.
type loginResult struct {
	user   string       // the authenticated username (from a certificate, it replaces the CONNECT's)
	code   packets.Code // CodeSuccess or the refusal
	reason string       // refusal metric label
	why    string       // for the log; never a secret
}

func (r loginResult) ok() bool { return r.code.Code == packets.CodeSuccess.Code }

func refused(code packets.Code, reason, why string) loginResult {
	return loginResult{code: code, reason: reason, why: why}
}

// login authenticates a client from its CONNECT, checks its client id
// against the user's binding and, when refused, answers with the CONNACK
// that says why. It returns nil when the client may connect.
func (b *Broker) login(cl *mqtt.Client, pk packets.Packet) error {
	st := b.auth.Load()
	r := b.authenticate(st, cl, pk)
	if r.ok() {
		if u, ok := st.users[r.user]; ok && u.clientIDs != nil &&
			(pk.Connect.ClientIdentifier == "" || !u.clientIDs.match(pk.Connect.ClientIdentifier)) {
			r = refused(packets.ErrClientIdentifierNotValid, "client_id",
				fmt.Sprintf("client id %q does not match the user's client_id_pattern %q", pk.Connect.ClientIdentifier, u.clientIDs))
		}
	}
	if r.ok() {
		cl.Properties.Username = []byte(r.user)
		b.admitted.Store(cl.Net.Conn, struct{}{})
		return nil
	}
	b.m.authFailures.Inc()
	b.m.loginRefused(r.reason).Inc()
	if r.why != "" && b.logOnce.first("login:"+addrKey(cl.Net.Remote, cl.Net.Listener)+":"+r.reason) {
		b.log.Warn("broker: connection refused", "client", cl.ID, "user", string(pk.Connect.Username),
			"remote", cl.Net.Remote, "listener", cl.Net.Listener, "reason", r.why)
	}
	code := r.code
	if cl.Properties.ProtocolVersion < 5 {
		// 3.1.1 has no code for these; mochi maps the ones below.
		switch code {
		case packets.ErrServerBusy, packets.ErrConnectionRateExceeded:
			code = packets.ErrServerUnavailable // 0x03
		case packets.ErrNotAuthorized:
			code = packets.ErrBadUsernameOrPassword // 0x05 not authorized
		}
	}
	if srv := b.server(); srv != nil {
		_ = srv.SendConnack(cl, code, false, nil)
	}
	return r.code
}

// loggedIn reports (once) whether login admitted cl.
func (b *Broker) loggedIn(cl *mqtt.Client) bool {
	if cl.Net.Conn == nil {
		return false
	}
	_, ok := b.admitted.LoadAndDelete(cl.Net.Conn)
	return ok
}

func (b *Broker) authenticate(st *authState, cl *mqtt.Client, pk packets.Packet) loginResult {
	user := string(pk.Connect.Username)
	if mode := st.certListener[cl.Net.Listener]; mode != "" {
		name, err := certIdentity(cl.Net.Conn, mode)
		switch {
		case err == nil:
			if _, known := st.users[name]; !known {
				return refused(packets.ErrNotAuthorized, "certificate",
					fmt.Sprintf("certificate identity %q is not a configured user", name))
			}
			return loginResult{user: name}
		case mode != identityLenient:
			return refused(packets.ErrNotAuthorized, "certificate", err.Error())
		}
		// use_cn_as_username without a certificate: a password login.
	}
	switch {
	case strings.HasPrefix(user, IdentityPrefix):
		id := b.identity(user)
		switch {
		case id == nil:
			return refused(packets.ErrBadUsernameOrPassword, "bad_credentials", "unknown or revoked component identity")
		case !b.isUnixListener(cl.Net.Listener):
			return refused(packets.ErrBadUsernameOrPassword, "bad_credentials", "component identities may connect only through the unix listener")
		}
		sum := sha256.Sum256(pk.Connect.Password)
		if subtle.ConstantTimeCompare(sum[:], id.secret[:]) != 1 {
			return refused(packets.ErrBadUsernameOrPassword, "bad_credentials", "wrong password")
		}
		return loginResult{user: user}
	case user == "" && len(pk.Connect.Password) == 0:
		if !st.anonymous {
			return refused(packets.ErrBadUsernameOrPassword, "bad_credentials", "anonymous access is disabled")
		}
		return loginResult{}
	}
	return b.checkPassword(st, cl, user, pk.Connect.Password)
}

// checkPassword verifies a config user's password under the login limits.
func (b *Broker) checkPassword(st *authState, cl *mqtt.Client, user string, pw []byte) loginResult {
	lg := st.login
	addr := addrKey(cl.Net.Remote, cl.Net.Listener)
	ukey, pair := userKey(user), pairKey(user, addr)
	limited := func() (loginResult, bool) {
		if !lg.RateLimitOn() {
			return loginResult{}, false
		}
		now := time.Now()
		if d := b.guard.addrs.blockedFor(addr, now); d > 0 {
			return refused(packets.ErrConnectionRateExceeded, "rate_limited_address", ""), true
		}
		if d := b.guard.users.blockedFor(ukey, now); d > 0 && !b.guard.trusted.has(pair) {
			return refused(packets.ErrConnectionRateExceeded, "rate_limited_username", ""), true
		}
		return loginResult{}, false
	}
	if r, stop := limited(); stop {
		return r
	}
	u, known := st.users[user]
	m := st.mac(user, pw)
	if known && st.cached(m) {
		b.loginSucceeded(user, addr, ukey, pair, lg)
		return loginResult{user: user}
	}
	hash := st.dummy
	if known {
		hash = u.hash
	}
	if hash == "" { // no users configured: nothing to compare with
		return refused(packets.ErrBadUsernameOrPassword, "bad_credentials", "unknown user or wrong password")
	}
	if !st.acquireHash(lg.HashWait.D()) {
		return refused(packets.ErrServerBusy, "verification_busy",
			fmt.Sprintf("all %d password verification slots busy for %s", cap(st.hashes), lg.HashWait.D()))
	}
	// The state may have changed while this login waited for its slot.
	if r, stop := limited(); stop {
		st.releaseHash()
		return r
	}
	b.m.verifications.Inc()
	if h := verifyHook.Load(); h != nil {
		(*h)()
	}
	ok := verifyPassword(hash, pw) && known
	st.releaseHash()
	if ok {
		st.remember(m)
		b.loginSucceeded(user, addr, ukey, pair, lg)
		return loginResult{user: user}
	}
	if lg.RateLimitOn() {
		now := time.Now()
		if d := b.guard.addrs.fail(addr, now, lg); d > 0 && b.logOnce.first("backoff:"+addr) {
			b.log.Warn("broker: failed logins from an address; refusing it for a while",
				"remote", addr, "backoff", d.String())
		}
		if d := b.guard.users.fail(ukey, now, lg); d > 0 && b.logOnce.first("backoff-user:"+ukey) {
			b.log.Warn("broker: failed logins for a username; refusing it from new addresses for a while",
				"user", user, "backoff", d.String())
		}
	}
	return refused(packets.ErrBadUsernameOrPassword, "bad_credentials", "unknown user or wrong password")
}

func (b *Broker) loginSucceeded(user, addr, ukey, pair string, lg Login) {
	if !lg.RateLimitOn() {
		return
	}
	b.guard.addrs.reset(addr)
	b.guard.users.reset(ukey)
	b.guard.trusted.mark(pair, lg.Tracked)
	b.logOnce.forget("backoff:" + addr)
	b.logOnce.forget("backoff-user:" + ukey)
	b.logOnce.forget("login:" + addr)
}

// certIdentity returns the username a verified client certificate carries:
// its common name (cert_cn, use_cn_as_username) or its one DNS subject
// alternative name (cert_san).
func certIdentity(c net.Conn, mode string) (string, error) {
	cert := peerCert(c)
	if cert == nil {
		return "", fmt.Errorf("no verified client certificate (identity %s)", strings.ReplaceAll(mode, identityLenient, IdentityCertCN))
	}
	if mode == IdentityCertSAN {
		if len(cert.DNSNames) != 1 {
			return "", fmt.Errorf("certificate has %d DNS names; identity cert_san needs exactly one", len(cert.DNSNames))
		}
		return cert.DNSNames[0], nil
	}
	if cert.Subject.CommonName == "" {
		return "", fmt.Errorf("certificate has no common name")
	}
	return cert.Subject.CommonName, nil
}

// peerCert returns the verified leaf certificate of a TLS connection, or
// nil. It looks through wrappers that expose the connection they run on with
// a NetConn method (mochi's WebSocket connection, PATCHES.md 26), so wss
// listeners work too.
func peerCert(c net.Conn) *x509.Certificate {
	for range 4 {
		switch cc := c.(type) {
		case nil:
			return nil
		case *tls.Conn:
			cs := cc.ConnectionState()
			if len(cs.VerifiedChains) == 0 || len(cs.PeerCertificates) == 0 {
				return nil
			}
			return cs.PeerCertificates[0]
		case interface{ NetConn() net.Conn }:
			c = cc.NetConn()
		default:
			return nil
		}
	}
	return nil
}
