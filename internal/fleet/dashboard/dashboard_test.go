package dashboard_test

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/dashboard"
	"github.com/outpost-edge/outpost/internal/fleet/fleettest"
)

func TestPasswordHash(t *testing.T) {
	h := dashboard.HashPassword("s3cret-pass", testArgon)
	if !strings.HasPrefix(h, "$argon2id$v=19$m=64,t=1,p=1$") {
		t.Fatalf("hash %q", h)
	}
	for _, c := range []struct {
		pw   string
		want bool
	}{{"s3cret-pass", true}, {"s3cret-pasS", false}, {"", false}} {
		ok, err := dashboard.VerifyPassword(h, c.pw)
		if err != nil || ok != c.want {
			t.Errorf("verify %q = %v, %v", c.pw, ok, err)
		}
	}
	for _, bad := range []string{"", "$2a$10$abc", "$argon2id$v=19$m=64,t=0,p=1$AAAA$AAAA", "$argon2id$v=19$m=64,t=1,p=1$!!$AAAA"} {
		if _, err := dashboard.VerifyPassword(bad, "x"); err == nil {
			t.Errorf("verify with hash %q: no error", bad)
		}
	}
}

func TestLoginSessionCookieAndRefusals(t *testing.T) {
	logs := &fleettest.SyncBuffer{}
	e := start(t, dashboard.Options{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	hc := e.client(t)

	// Not logged in: pages redirect to the login form, /events is 401.
	if code, _ := get(t, hc, e.srv.URL+"/gateways"); code != http.StatusSeeOther {
		t.Fatalf("GET /gateways without a session = %d, want 303", code)
	}
	if code, _ := get(t, hc, e.srv.URL+"/events"); code != http.StatusUnauthorized {
		t.Fatalf("GET /events without a session = %d, want 401", code)
	}
	// Field validation names the field.
	for _, c := range []struct{ user, pw, want string }{
		{"", "x", "user: required"}, {"Bad Name", "x", "user: "}, {"viewer", "", "password: required"},
	} {
		code, body := e.login(t, hc, c.user, c.pw)
		if code != http.StatusBadRequest || !strings.Contains(body, c.want) {
			t.Errorf("login %q/%q = %d, want 400 with %q", c.user, c.pw, code, c.want)
		}
	}
	// A login POST without the form's CSRF token is refused.
	if code, _ := post(t, hc, e.srv.URL+"/login", url.Values{"user": {"viewer"}, "password": {testPassword}}); code != http.StatusForbidden {
		t.Fatalf("login without csrf = %d, want 403", code)
	}
	if code, _ := e.login(t, hc, "viewer", "wrong password"); code != http.StatusUnauthorized {
		t.Fatalf("bad password = %d, want 401", code)
	}
	if strings.Contains(logs.String(), "wrong password") {
		t.Fatal("the password was logged")
	}
	if !strings.Contains(logs.String(), "reason=bad_password user=viewer") {
		t.Fatalf("refusal not logged:\n%s", logs)
	}

	code, _ := e.login(t, hc, "viewer", testPassword)
	if code != http.StatusSeeOther {
		t.Fatalf("good login = %d, want 303", code)
	}
	u, _ := url.Parse(e.srv.URL)
	var sess *http.Cookie
	for _, c := range hc.Jar.Cookies(u) {
		if c.Name == "outpost_session" {
			sess = c
		}
	}
	if sess == nil {
		t.Fatal("no session cookie")
	}
	code, body := get(t, hc, e.srv.URL+"/gateways")
	if code != 200 || !strings.Contains(body, "viewer (viewer)") {
		t.Fatalf("GET /gateways = %d", code)
	}

	// A viewer's POST to an operator action is refused even with a valid
	// CSRF token; an operator's works; a stale resourceVersion conflicts.
	e.ro.put(dashboard.Rollout{Name: "r1", State: "running", Waves: []dashboard.Wave{{Name: "canary", State: "running", Targets: 1}}})
	_, body = get(t, hc, e.srv.URL+"/rollouts/r1")
	if strings.Contains(body, `id="btn-pause"`) {
		t.Fatal("the viewer is shown the pause button")
	}
	csrf := csrfOf(t, body)
	code, _ = post(t, hc, e.srv.URL+"/rollouts/r1/pause", url.Values{"csrf": {csrf}, "resourceVersion": {"1"}})
	if code != http.StatusForbidden {
		t.Fatalf("viewer pause = %d, want 403", code)
	}
	op := e.client(t)
	e.login(t, op, "operator", testPassword)
	_, body = get(t, op, e.srv.URL+"/rollouts/r1")
	if !strings.Contains(body, `id="btn-pause"`) {
		t.Fatal("the operator is not shown the pause button")
	}
	csrf = csrfOf(t, body)
	if code, _ := post(t, op, e.srv.URL+"/rollouts/r1/pause", url.Values{"resourceVersion": {"1"}}); code != http.StatusForbidden {
		t.Fatalf("pause without csrf = %d, want 403", code)
	}
	if code, body := post(t, op, e.srv.URL+"/rollouts/r1/pause", url.Values{"csrf": {csrf}, "resourceVersion": {"x"}}); code != 400 || !strings.Contains(body, "resourceVersion: ") {
		t.Fatalf("bad resourceVersion = %d", code)
	}
	if code, body := post(t, op, e.srv.URL+"/rollouts/r1/explode", url.Values{"csrf": {csrf}, "resourceVersion": {"1"}}); code != 400 || !strings.Contains(body, "action: ") {
		t.Fatalf("bad action = %d", code)
	}
	if code, _ := post(t, op, e.srv.URL+"/rollouts/r1/pause", url.Values{"csrf": {csrf}, "resourceVersion": {"1"}}); code != http.StatusSeeOther {
		t.Fatalf("operator pause = %d, want 303", code)
	}
	if r, _ := e.ro.Get(t.Context(), "r1"); r.State != "paused" {
		t.Fatalf("state %s after pause", r.State)
	}
	if code, body := post(t, op, e.srv.URL+"/rollouts/r1/resume", url.Values{"csrf": {csrf}, "resourceVersion": {"1"}}); code != http.StatusConflict || !strings.Contains(body, "conflict: ") {
		t.Fatalf("stale resume = %d, want 409", code)
	}
	// The CSRF token of one session is not valid in another.
	if code, _ := post(t, hc, e.srv.URL+"/logout", url.Values{"csrf": {csrf}}); code != http.StatusForbidden {
		t.Fatalf("logout with another session's csrf = %d, want 403", code)
	}
	// Logout ends the session.
	_, body = get(t, op, e.srv.URL+"/")
	if code, _ := post(t, op, e.srv.URL+"/logout", url.Values{"csrf": {csrfOf(t, body)}}); code != http.StatusSeeOther {
		t.Fatalf("logout = %d", code)
	}
	if code, _ := get(t, op, e.srv.URL+"/"); code != http.StatusSeeOther {
		t.Fatalf("after logout GET / = %d, want 303", code)
	}
}

func TestSessionCookieAttributes(t *testing.T) {
	e := start(t, dashboard.Options{})
	hc := e.client(t)
	_, page := get(t, hc, e.srv.URL+"/login")
	resp, err := hc.PostForm(e.srv.URL+"/login", url.Values{"csrf": {csrfOf(t, page)}, "user": {"admin"}, "password": {testPassword}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	var found bool
	for _, c := range resp.Cookies() {
		if c.Name == "outpost_session" {
			found = true
			if !c.HttpOnly || !c.Secure || c.SameSite != http.SameSiteStrictMode {
				t.Fatalf("session cookie %+v: want HttpOnly, Secure, SameSite=Strict", c)
			}
		}
	}
	if !found {
		t.Fatal("no session cookie set")
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
		t.Fatalf("CSP %q", csp)
	}
}

func TestLoginRateLimit(t *testing.T) {
	logs := &fleettest.SyncBuffer{}
	e := start(t, dashboard.Options{UserFailures: 3, IPFailures: 6, FailureWindow: time.Hour,
		Logger: slog.New(slog.NewTextHandler(logs, nil))})
	hc := e.client(t)
	for i := 0; i < 3; i++ {
		if code, _ := e.login(t, hc, "operator", "nope-nope"); code != http.StatusUnauthorized {
			t.Fatalf("failure %d = %d", i, code)
		}
	}
	// Past the per-user limit even the right password is not checked.
	if code, body := e.login(t, hc, "operator", testPassword); code != http.StatusTooManyRequests || !strings.Contains(body, "too many failed logins for this user") {
		t.Fatalf("4th login = %d, want 429", code)
	}
	// Another user from the same address still works until the address limit.
	if code, _ := e.login(t, e.client(t), "viewer", testPassword); code != http.StatusSeeOther {
		t.Fatalf("other user = %d, want 303", code)
	}
	for _, u := range []string{"a1", "a2", "a3"} {
		e.login(t, hc, u, "nope-nope")
	}
	if code, body := e.login(t, hc, "admin", testPassword); code != http.StatusTooManyRequests || !strings.Contains(body, "from this address") {
		t.Fatalf("after 6 failures from one address = %d, want 429", code)
	}
	l := logs.String()
	for _, want := range []string{"reason=rate_limited_user user=operator", "reason=rate_limited_client user=admin", "reason=unknown_user user=a1"} {
		if !strings.Contains(l, want) {
			t.Errorf("log lacks %q", want)
		}
	}
	if strings.Contains(l, "nope-nope") || strings.Contains(l, testPassword) {
		t.Fatal("a password was logged")
	}
}

// xffTransport sends every request with an X-Forwarded-For header, as a
// reverse proxy in front of the server would.
type xffTransport struct {
	base http.RoundTripper
	xff  string
}

func (x xffTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("X-Forwarded-For", x.xff)
	return x.base.RoundTrip(r)
}

// TestLoginRateLimitBehindProxy: behind a trusted reverse proxy the
// per-address login limit counts the address the proxy names, so one
// client's failures do not lock out the others; from an untrusted address
// the header is ignored, so a client cannot dodge the limit by forging it.
func TestLoginRateLimitBehindProxy(t *testing.T) {
	for _, tc := range []struct {
		name    string
		trusted []netip.Prefix
		// want is the answer to the other client's right password after
		// the attacker's failures.
		want int
	}{
		{"trusted proxy", []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, http.StatusSeeOther},
		{"untrusted", nil, http.StatusTooManyRequests},
		{"other proxy trusted", []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")}, http.StatusTooManyRequests},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logs := &fleettest.SyncBuffer{}
			e := start(t, dashboard.Options{UserFailures: 100, IPFailures: 3, FailureWindow: time.Hour,
				TrustedProxies: tc.trusted, Logger: slog.New(slog.NewTextHandler(logs, nil))})
			via := func(xff string) *http.Client {
				hc := e.client(t)
				hc.Transport = xffTransport{hc.Transport, xff}
				return hc
			}
			// The attacker's address is spoofed on the left: only the
			// hop the (trusted) proxy appended counts.
			attacker := via("203.0.113.66, 198.51.100.7")
			for i := 0; i < 3; i++ {
				if code, _ := e.login(t, attacker, fmt.Sprintf("guess%d", i), "nope-nope"); code != http.StatusUnauthorized {
					t.Fatalf("failure %d = %d", i, code)
				}
			}
			if code, _ := e.login(t, attacker, "admin", testPassword); code != http.StatusTooManyRequests {
				t.Fatalf("attacker after 3 failures = %d, want 429", code)
			}
			if code, _ := e.login(t, via("198.51.100.8"), "admin", testPassword); code != tc.want {
				t.Fatalf("another client = %d, want %d", code, tc.want)
			}
			want := "client=127.0.0.1"
			if tc.want == http.StatusSeeOther {
				want = "client=198.51.100.7"
			}
			if !strings.Contains(logs.String(), want) {
				t.Fatalf("log does not name %s:\n%s", want, logs.String())
			}
		})
	}
}

func TestGatewayFilterValidation(t *testing.T) {
	e := start(t, dashboard.Options{})
	e.gateway(t, "gw-a", map[string]string{"site": "plant2"}, map[string]string{"version": "1.2.0", "msg_rate": "12.5", "queue_depth": "40"})
	e.gateway(t, "gw-b", map[string]string{"site": "plant3"}, map[string]string{"version": "1.3.0"})
	hc := e.client(t)
	e.login(t, hc, "viewer", testPassword)
	fleettest.Eventually(t, 10*time.Second, "both gateways connected", func() bool {
		_, b := get(t, hc, e.srv.URL+"/")
		return strings.Contains(b, `id="connected">2<`)
	})
	code, body := get(t, hc, e.srv.URL+"/gateways?selector="+url.QueryEscape("site=plant2"))
	if code != 200 || !strings.Contains(body, `data-id="gw-a"`) || strings.Contains(body, `data-id="gw-b"`) {
		t.Fatalf("selector site=plant2 = %d:\n%s", code, body)
	}
	code, body = get(t, hc, e.srv.URL+"/gateways?q=gw-b")
	if code != 200 || strings.Contains(body, `data-id="gw-a"`) || !strings.Contains(body, `data-id="gw-b"`) {
		t.Fatalf("search gw-b = %d", code)
	}
	code, body = get(t, hc, e.srv.URL+"/gateways?selector="+url.QueryEscape("site in (a"))
	if code != 400 || !strings.Contains(body, "selector: ") {
		t.Fatalf("bad selector = %d:\n%s", code, body)
	}
	// The twin of a device behind gw-a, with a desired value not reported yet.
	e.srv.MustDo(t, "PATCH", "/api/v1/gateways/gw-a/twins/press-7", map[string]any{"desired": map[string]any{"speed": 40}}, 200, nil)
	code, body = get(t, hc, e.srv.URL+"/gateways/gw-a")
	if code != 200 || !strings.Contains(body, "1.2.0") || !strings.Contains(body, "site=plant2") {
		t.Fatalf("detail = %d", code)
	}
	for _, want := range []string{`<dd id="rate">12.5 msg/s</dd>`, `<dd id="queue">40</dd>`, `<td>press-7</td>`, `<code>{&#34;speed&#34;:40}</code> (1)`, `<code class="err">{&#34;speed&#34;:40}</code>`} {
		if !strings.Contains(body, want) {
			t.Fatalf("gateway page lacks %s:\n%s", want, body)
		}
	}
	if _, b := get(t, hc, e.srv.URL+"/gateways/gw-b"); !strings.Contains(b, "no device twins") || !strings.Contains(b, `<dd id="rate">not reported</dd>`) {
		t.Fatalf("gw-b page:\n%s", b)
	}
	if code, _ := get(t, hc, e.srv.URL+"/gateways/nope"); code != 404 {
		t.Fatalf("unknown gateway = %d", code)
	}
}
