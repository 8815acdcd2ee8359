package dashboard

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/argon2"

	"github.com/outpost-edge/outpost/internal/fleet/store"
)

// Roles of dashboard users (the same ranks as API tokens).
const (
	RoleViewer   = store.RoleViewer
	RoleOperator = store.RoleOperator
	RoleAdmin    = store.RoleAdmin
)

// Sentinel errors.
var (
	// ErrBadLogin is returned by Login for an unknown user or a wrong
	// password (the caller cannot tell which, on purpose).
	ErrBadLogin = errors.New("dashboard: wrong user name or password")
	// ErrRateLimited is returned by Login while a user or an address has
	// too many recent failures; the password is not checked.
	ErrRateLimited = errors.New("dashboard: too many failed logins")
	// ErrNotFound is returned for an unknown user or rollout.
	ErrNotFound = errors.New("dashboard: not found")
	// ErrConflict is returned by Rollouts.Act when the rollout changed
	// since the resourceVersion the operator saw.
	ErrConflict = errors.New("dashboard: conflict")
)

// Argon2id parameters of new hashes (OWASP's second recommendation:
// 19 MiB, 2 passes, 1 lane). Stored hashes carry their own parameters.
type Argon2Params struct {
	Memory  uint32 // KiB
	Time    uint32
	Threads uint8
}

// DefaultArgon2 are the parameters of new hashes.
var DefaultArgon2 = Argon2Params{Memory: 19 * 1024, Time: 2, Threads: 1}

// HashPassword returns a PHC-format argon2id hash of pw with a random salt:
// $argon2id$v=19$m=19456,t=2,p=1$SALT$HASH.
func HashPassword(pw string, p Argon2Params) string {
	salt := make([]byte, 16)
	rand.Read(salt)
	h := argon2.IDKey([]byte(pw), salt, p.Time, p.Memory, p.Threads, 32)
	b64 := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, p.Memory, p.Time, p.Threads, b64.EncodeToString(salt), b64.EncodeToString(h))
}

// VerifyPassword reports whether pw matches a hash from HashPassword.
func VerifyPassword(hash, pw string) (bool, error) {
	parts := strings.Split(hash, "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		return false, errors.New("dashboard: not an argon2id hash")
	}
	var v int
	var p Argon2Params
	if _, err := fmt.Sscanf(parts[2], "v=%d", &v); err != nil || v != argon2.Version {
		return false, fmt.Errorf("dashboard: argon2id version %q", parts[2])
	}
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &p.Memory, &p.Time, &p.Threads); err != nil || p.Time == 0 || p.Threads == 0 || p.Memory > 1<<22 {
		return false, fmt.Errorf("dashboard: argon2id parameters %q", parts[3])
	}
	b64 := base64.RawStdEncoding
	salt, err1 := b64.DecodeString(parts[4])
	want, err2 := b64.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(want) == 0 {
		return false, errors.New("dashboard: argon2id hash encoding")
	}
	got := argon2.IDKey([]byte(pw), salt, p.Time, p.Memory, p.Threads, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1, nil
}

// User is a dashboard user, stored in the store's meta table under
// "user/NAME" (so every replica shares it).
type User struct {
	Name    string    `json:"name"`
	Role    string    `json:"role"`
	Hash    string    `json:"hash,omitempty"`
	Epoch   string    `json:"epoch,omitempty"` // changes on passwd: older sessions end
	Created time.Time `json:"created"`
}

// MetaStore is the part of store.Store the dashboard keeps its users and
// session key in.
type MetaStore interface {
	GetMeta(ctx context.Context, key string) (string, error)
	PutMetaIfAbsent(ctx context.Context, key, value string) (string, error)
	PutMeta(ctx context.Context, key, value string) error
	DeleteMeta(ctx context.Context, key string) error
	ListMeta(ctx context.Context, prefix string) (map[string]string, error)
}

const userPrefix = "user/"

var userNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// ValidateUserName checks a user name; the error names the field.
func ValidateUserName(name string) error {
	if !userNameRE.MatchString(name) {
		return fmt.Errorf("user: %q: want 1-64 lower-case letters, digits, . _ - (starting with a letter or digit)", name)
	}
	return nil
}

// ValidatePassword checks a new password; the error names the field.
func ValidatePassword(pw string) error {
	switch {
	case len(pw) < 8:
		return errors.New("password: at least 8 characters")
	case len(pw) > 1024:
		return errors.New("password: at most 1024 bytes")
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Users manages dashboard users in a MetaStore.
type Users struct {
	st     MetaStore
	params Argon2Params
	now    func() time.Time
}

// NewUsers returns a user manager hashing with p.
func NewUsers(st MetaStore, p Argon2Params) *Users {
	return &Users{st: st, params: p, now: time.Now}
}

// Add creates a user (store.ErrExists when the name is taken).
func (u *Users) Add(ctx context.Context, name, role, pw string) error {
	if err := validateUser(name, role, pw); err != nil {
		return err
	}
	b, _ := json.Marshal(User{Name: name, Role: role, Hash: HashPassword(pw, u.params), Epoch: randomHex(8), Created: u.now().UTC()})
	got, err := u.st.PutMetaIfAbsent(ctx, userPrefix+name, string(b))
	if err != nil {
		return fmt.Errorf("dashboard: add user: %w", err)
	}
	if got != string(b) {
		return fmt.Errorf("%w: user %s", store.ErrExists, name)
	}
	return nil
}

func validateUser(name, role, pw string) error {
	if err := ValidateUserName(name); err != nil {
		return err
	}
	if store.RoleRank(role) == 0 {
		return fmt.Errorf("role: %q: want viewer, operator or admin", role)
	}
	return ValidatePassword(pw)
}

// Get returns a user (ErrNotFound).
func (u *Users) Get(ctx context.Context, name string) (User, error) {
	v, err := u.st.GetMeta(ctx, userPrefix+name)
	if errors.Is(err, store.ErrNotFound) {
		return User{}, fmt.Errorf("%w: user %s", ErrNotFound, name)
	} else if err != nil {
		return User{}, fmt.Errorf("dashboard: user %s: %w", name, err)
	}
	var usr User
	if err := json.Unmarshal([]byte(v), &usr); err != nil {
		return User{}, fmt.Errorf("dashboard: user %s: %w", name, err)
	}
	return usr, nil
}

// List returns every user, by name, without hashes.
func (u *Users) List(ctx context.Context) ([]User, error) {
	m, err := u.st.ListMeta(ctx, userPrefix)
	if err != nil {
		return nil, fmt.Errorf("dashboard: users: %w", err)
	}
	out := []User{}
	for _, v := range m {
		var usr User
		if json.Unmarshal([]byte(v), &usr) == nil {
			usr.Hash, usr.Epoch = "", ""
			out = append(out, usr)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Delete removes a user; their sessions end (ErrNotFound).
func (u *Users) Delete(ctx context.Context, name string) error {
	err := u.st.DeleteMeta(ctx, userPrefix+name)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("%w: user %s", ErrNotFound, name)
	}
	return err
}

// SetPassword replaces a user's password (and optionally role, when not
// ""); their other sessions end.
func (u *Users) SetPassword(ctx context.Context, name, pw string) error {
	usr, err := u.Get(ctx, name)
	if err != nil {
		return err
	}
	if err := ValidatePassword(pw); err != nil {
		return err
	}
	usr.Hash, usr.Epoch = HashPassword(pw, u.params), randomHex(8)
	b, _ := json.Marshal(usr)
	return u.st.PutMeta(ctx, userPrefix+name, string(b))
}

// limiter counts failed logins per key in a sliding window.
type limiter struct {
	mu     sync.Mutex
	max    int
	window time.Duration
	fails  map[string][]time.Time
}

func newLimiter(max int, window time.Duration) *limiter {
	return &limiter{max: max, window: window, fails: map[string][]time.Time{}}
}

// blocked reports whether key has max failures in the window, and when the
// oldest of them leaves it.
func (l *limiter) blocked(key string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.pruneLocked(key, now)
	if len(f) < l.max {
		return false, 0
	}
	return true, f[0].Add(l.window).Sub(now)
}

func (l *limiter) fail(key string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.fails) > 100000 { // bound memory under a spray of names
		for k := range l.fails {
			l.pruneLocked(k, now)
		}
	}
	l.fails[key] = append(l.pruneLocked(key, now), now)
}

func (l *limiter) reset(key string) {
	l.mu.Lock()
	delete(l.fails, key)
	l.mu.Unlock()
}

func (l *limiter) pruneLocked(key string, now time.Time) []time.Time {
	f := l.fails[key]
	i := 0
	for i < len(f) && now.Sub(f[i]) >= l.window {
		i++
	}
	f = f[i:]
	if len(f) == 0 {
		delete(l.fails, key)
		return nil
	}
	l.fails[key] = f
	return f
}

// session is the content of the signed session cookie.
type session struct {
	User    string `json:"u"`
	Epoch   string `json:"e"`
	Expires int64  `json:"x"` // unix seconds
	Nonce   string `json:"n"`
}

// sessions signs and checks session cookies and CSRF tokens with a key
// shared by the replicas (meta "dashboard_session_key").
type sessions struct {
	key []byte

	mu      sync.Mutex
	revoked map[string]int64 // nonce -> expiry (logged out on this replica)
}

func loadSessions(ctx context.Context, st MetaStore) (*sessions, error) {
	k, err := st.PutMetaIfAbsent(ctx, "dashboard_session_key", randomHex(32))
	if err != nil {
		return nil, fmt.Errorf("dashboard: session key: %w", err)
	}
	key, err := hex.DecodeString(k)
	if err != nil || len(key) < 16 {
		return nil, errors.New("dashboard: session key: bad stored value")
	}
	return &sessions{key: key, revoked: map[string]int64{}}, nil
}

func (s *sessions) mac(parts ...string) string {
	m := hmac.New(sha256.New, s.key)
	for _, p := range parts {
		m.Write([]byte(p))
		m.Write([]byte{0})
	}
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func (s *sessions) encode(se session) string {
	b, _ := json.Marshal(se)
	p := base64.RawURLEncoding.EncodeToString(b)
	return p + "." + s.mac("session", p)
}

func (s *sessions) decode(v string, now time.Time) (session, bool) {
	p, sig, ok := strings.Cut(v, ".")
	if !ok || !hmac.Equal([]byte(sig), []byte(s.mac("session", p))) {
		return session{}, false
	}
	b, err := base64.RawURLEncoding.DecodeString(p)
	var se session
	if err != nil || json.Unmarshal(b, &se) != nil || now.Unix() >= se.Expires {
		return session{}, false
	}
	s.mu.Lock()
	_, gone := s.revoked[se.Nonce]
	s.mu.Unlock()
	return se, !gone
}

func (s *sessions) revoke(se session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now().Unix()
	for n, x := range s.revoked {
		if x < now {
			delete(s.revoked, n)
		}
	}
	s.revoked[se.Nonce] = se.Expires
}

// csrf is the CSRF token bound to a session (or, before login, to the
// login cookie).
func (s *sessions) csrf(kind, nonce string) string { return s.mac("csrf", kind, nonce) }

func (s *sessions) checkCSRF(kind, nonce, tok string) bool {
	return nonce != "" && hmac.Equal([]byte(tok), []byte(s.csrf(kind, nonce)))
}
