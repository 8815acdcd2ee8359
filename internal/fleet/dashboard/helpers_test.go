package dashboard_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/client"
	"github.com/outpost-edge/outpost/internal/fleet/dashboard"
	"github.com/outpost-edge/outpost/internal/fleet/fleettest"
	"github.com/outpost-edge/outpost/internal/fleet/proto"
	"github.com/outpost-edge/outpost/internal/fleet/server"
	"github.com/outpost-edge/outpost/internal/fleet/store"
)

// Test users; argon2id with small parameters so logins are fast under -race.
const testPassword = "correct horse battery"

var testArgon = dashboard.Argon2Params{Memory: 64, Time: 1, Threads: 1}

type env struct {
	srv  *fleettest.Server
	dash *dashboard.Dashboard
	ro   *memRollouts
}

// start runs a real server (SQLite, TLS, HTTP/2) with the dashboard
// mounted, users admin/operator/viewer and an in-memory rollout controller.
func start(t testing.TB, opt dashboard.Options) *env { return startWith(t, opt, false) }

// startReal is start with the server's own rollout controller (stepping
// every 20 ms) behind the pages instead of the in-memory one.
func startReal(t testing.TB, opt dashboard.Options) *env { return startWith(t, opt, true) }

func startWith(t testing.TB, opt dashboard.Options, real bool) *env {
	t.Helper()
	e := &env{ro: newMemRollouts()}
	e.srv = fleettest.Start(t, t.TempDir(), "", server.Options{RolloutTick: 20 * time.Millisecond}, func(s *server.Server) {
		opt.Fleet, opt.Meta, opt.Rollouts, opt.Argon2 = s, s.Store(), e.ro, testArgon
		if real {
			opt.Rollouts = dashboard.APIRollouts(s)
		}
		if opt.Logger == nil {
			opt.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		}
		d, err := dashboard.New(context.Background(), opt)
		if err != nil {
			t.Fatal(err)
		}
		d.Register(s)
		e.dash = d
	})
	for _, r := range []string{"admin", "operator", "viewer"} {
		if err := e.dash.Users().Add(context.Background(), r, r, testPassword); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// browserless HTTP client with a cookie jar (redirects not followed).
func (e *env) client(t testing.TB) *http.Client {
	jar, _ := cookiejar.New(nil)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(e.srv.CA)
	return &http.Client{Jar: jar, Timeout: 10 * time.Second,
		Transport:     &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func get(t testing.TB, hc *http.Client, u string) (int, string) {
	t.Helper()
	resp, err := hc.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func post(t testing.TB, hc *http.Client, u string, form url.Values) (int, string) {
	t.Helper()
	resp, err := hc.PostForm(u, form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func csrfOf(t testing.TB, page string) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no csrf field in page:\n%s", page)
	}
	return m[1]
}

// login logs hc in and returns the status of the POST.
func (e *env) login(t testing.TB, hc *http.Client, user, pw string) (int, string) {
	t.Helper()
	_, page := get(t, hc, e.srv.URL+"/login")
	return post(t, hc, e.srv.URL+"/login", url.Values{"csrf": {csrfOf(t, page)}, "user": {user}, "password": {pw}})
}

// memRollouts is an in-memory rollout controller with the contract's
// optimistic concurrency (the real one is on branch rollouts).
type memRollouts struct {
	store.Notifier
	mu sync.Mutex
	m  map[string]dashboard.Rollout
	rv int64
}

// Changes makes the dashboard's pages follow the controller's changes.
func (m *memRollouts) Changes() (<-chan struct{}, func()) { return m.Notify() }

func newMemRollouts() *memRollouts { return &memRollouts{m: map[string]dashboard.Rollout{}} }

func (m *memRollouts) put(r dashboard.Rollout) {
	m.mu.Lock()
	m.rv++
	r.ResourceVersion = m.rv
	r.Updated = time.Now()
	if r.Created.IsZero() {
		r.Created = r.Updated
	}
	m.m[r.Name] = r
	m.mu.Unlock()
	m.Broadcast()
}

func (m *memRollouts) List(context.Context) ([]dashboard.Rollout, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := []dashboard.Rollout{}
	for _, r := range m.m {
		out = append(out, r)
	}
	return out, nil
}

func (m *memRollouts) Get(_ context.Context, name string) (dashboard.Rollout, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.m[name]
	if !ok {
		return r, fmt.Errorf("%w: rollout %s", dashboard.ErrNotFound, name)
	}
	return r, nil
}

func (m *memRollouts) Act(_ context.Context, name, action string, rv int64) (dashboard.Rollout, error) {
	m.mu.Lock()
	r, ok := m.m[name]
	if !ok {
		m.mu.Unlock()
		return r, fmt.Errorf("%w: rollout %s", dashboard.ErrNotFound, name)
	}
	if r.ResourceVersion != rv {
		m.mu.Unlock()
		return r, fmt.Errorf("%w: rollout %s is at %d", dashboard.ErrConflict, name, r.ResourceVersion)
	}
	r.State = map[string]string{"pause": "paused", "resume": "running", "abort": "aborted", "rollback": "rolledback"}[action]
	m.mu.Unlock()
	m.put(r)
	return m.Get(context.Background(), name)
}

// gateway enrolls a real gateway (client.Syncer over mTLS HTTP/2) with
// labels and runs it until the test ends.
func (e *env) gateway(t testing.TB, id string, labels map[string]string, facts map[string]string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), id)
	tok := e.srv.Token(t, labels, "1h")
	if err := client.Enroll(context.Background(), client.EnrollOptions{Server: e.srv.URL, Token: tok, CAPEM: e.srv.CA, ID: id, Dir: dir}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s, err := client.New(ctx, client.Options{Dir: dir, Applier: failApplier{}, ReconnectMax: 200 * time.Millisecond,
		Facts: func() map[string]string { return facts }})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// failApplier applies everything except specs containing "BROKEN", which
// fail like a rule that does not compile on the gateway.
type failApplier struct{}

func (failApplier) Apply(_ context.Context, d proto.Desired) error {
	if strings.Contains(string(d.Spec), "BROKEN") {
		return fmt.Errorf("fleet-%s.sql:1:8: syntax error near BROKEN", d.Name)
	}
	return nil
}

func (failApplier) Remove(context.Context, string, string) error { return nil }
