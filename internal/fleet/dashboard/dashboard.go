// Package dashboard is outpost-server's web dashboard: server-rendered HTML
// (html/template) with a little vanilla JavaScript, everything embedded in
// the binary (no CDN; it works offline).
//
// Pages: the fleet overview (counts by state, connection, version, label),
// the gateway list (selector filter and search), a gateway's detail, and
// the rollouts (list, detail with per-wave progress, halt reason and the
// pause/resume/abort/rollback buttons). /events is a Server-Sent Events
// stream signalled on every fleet change; the pages' script then fetches
// the page again and swaps its live region, so nothing reloads.
//
// Login is with local users (argon2id hashes in the store's meta table,
// shared by replicas), managed with `outpost-server users` through the
// admin API (/api/v1/users). A session is a signed cookie (HMAC-SHA256 with
// a key kept in the store) that is HttpOnly, Secure and SameSite=Strict and
// carries the user's epoch: changing the password or deleting the user ends
// every session. Every POST carries a CSRF token bound to the session (the
// login form's to a pre-login cookie). Roles are those of API tokens:
// viewer reads; operator also acts on rollouts; admin also manages users.
// A viewer is not shown operator buttons, and the POST is refused (403)
// whatever the page showed. Failed logins are counted per user and per
// client address in a sliding window; past the limit the password is not
// even checked (429). Every refusal is logged with the user name and the
// address, never the password.
package dashboard

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/selector"
	"github.com/outpost-edge/outpost/internal/fleet/store"
	"github.com/outpost-edge/outpost/internal/fleet/twin"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Fleet is what the dashboard reads of the server (server.Server has it).
type Fleet interface {
	// Gateways lists the registry with Connected filled in.
	Gateways(ctx context.Context) ([]store.Gateway, error)
	// Gateway returns one gateway (store.ErrNotFound).
	Gateway(ctx context.Context, id string) (store.Gateway, error)
	// Changes is signalled after every change the pages show.
	Changes() (<-chan struct{}, func())
}

// Options configure a Dashboard.
type Options struct {
	Fleet Fleet
	Meta  MetaStore
	// Rollouts is the rollout controller; nil shows "no rollout
	// controller in this server" on the rollout pages. When it also has
	// Changes() (<-chan struct{}, func()), its changes update the pages.
	Rollouts Rollouts
	Logger   *slog.Logger
	// Argon2 are the parameters of new password hashes (default
	// DefaultArgon2; tests lower them).
	Argon2 Argon2Params
	// SessionTTL is how long a login lasts (default 12h).
	SessionTTL time.Duration
	// UserFailures and IPFailures are the failed logins allowed per user
	// and per address within FailureWindow (defaults 5, 20, 15m).
	UserFailures, IPFailures int
	FailureWindow            time.Duration
	// LiveInterval is the shortest time between two live-update events
	// on one /events stream (default 1s): at 10,000 gateways reporting,
	// a page refreshes at most once per interval.
	LiveInterval time.Duration
	// MaxRows bounds the rows of the gateway list (default 200).
	MaxRows int
	// MaxAge is how stale the registry a page load shows may be while
	// changes stream in (default 1s; the page's event stream then
	// refreshes it). The registry is read once per MaxAge at most for
	// page loads, not once per page.
	MaxAge time.Duration
	// TrustedProxies are the reverse proxies whose X-Forwarded-For is
	// believed: a request from one of them counts against the login limit
	// (and is logged) as the address the proxies name, the rightmost one
	// that is not itself a trusted proxy. Without it every login behind a
	// proxy would share the proxy's address, and one attacker could lock
	// every operator out; a request from any other address is taken by its
	// own address, whatever headers it sends (a client cannot pick its
	// limit bucket by forging X-Forwarded-For).
	TrustedProxies []netip.Prefix
	Now            func() time.Time
}

// Dashboard serves the pages.
type Dashboard struct {
	opt    Options
	log    *slog.Logger
	users  *Users
	sess   *sessions
	byUser *limiter
	byIP   *limiter
	tmpl   map[string]*template.Template
	static http.Handler
	snap   *snapshot
}

// New prepares a dashboard (it reads or creates the session key). It
// follows the fleet's changes until ctx ends.
func New(ctx context.Context, opt Options) (*Dashboard, error) {
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.Argon2.Time == 0 {
		opt.Argon2 = DefaultArgon2
	}
	if opt.SessionTTL <= 0 {
		opt.SessionTTL = 12 * time.Hour
	}
	if opt.UserFailures <= 0 {
		opt.UserFailures = 5
	}
	if opt.IPFailures <= 0 {
		opt.IPFailures = 20
	}
	if opt.FailureWindow <= 0 {
		opt.FailureWindow = 15 * time.Minute
	}
	if opt.LiveInterval <= 0 {
		opt.LiveInterval = time.Second
	}
	if opt.MaxRows <= 0 {
		opt.MaxRows = 200
	}
	if opt.MaxAge <= 0 {
		opt.MaxAge = time.Second
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	sess, err := loadSessions(ctx, opt.Meta)
	if err != nil {
		return nil, err
	}
	d := &Dashboard{opt: opt, log: opt.Logger, users: NewUsers(opt.Meta, opt.Argon2), sess: sess,
		byUser: newLimiter(opt.UserFailures, opt.FailureWindow), byIP: newLimiter(opt.IPFailures, opt.FailureWindow)}
	d.users.now = opt.Now
	d.snap = newSnapshot(ctx, opt.Fleet, opt.MaxAge)
	if err := d.parseTemplates(); err != nil {
		return nil, err
	}
	sub, _ := fs.Sub(staticFS, "static")
	d.static = http.StripPrefix("/static/", http.FileServerFS(sub))
	return d, nil
}

// Users is the user manager (the CLI's API and tests use it).
func (d *Dashboard) Users() *Users { return d.users }

var funcs = template.FuncMap{
	"add": func(a, b int) int { return a + b },
	// field is one labelled input of a form: name, label, value,
	// placeholder, error.
	"field": func(n, l, v, p, e string) map[string]string {
		return map[string]string{"N": n, "L": l, "V": v, "P": p, "E": e}
	},
	"pct": func(n, of int) int {
		if of <= 0 {
			return 0
		}
		return n * 100 / of
	},
	"ago": func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		d := time.Since(t).Round(time.Second)
		if d < 0 {
			d = 0
		}
		return d.String() + " ago"
	},
	"ts": func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	},
	"title": func(s string) string {
		if s == "" {
			return s
		}
		return strings.ToUpper(s[:1]) + s[1:]
	},
}

func (d *Dashboard) parseTemplates() error {
	d.tmpl = map[string]*template.Template{}
	pages, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return err
	}
	for _, p := range pages {
		name := strings.TrimSuffix(strings.TrimPrefix(p, "templates/"), ".html")
		if name == "layout" {
			continue
		}
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", p)
		if err != nil {
			return fmt.Errorf("dashboard: template %s: %w", p, err)
		}
		d.tmpl[name] = t
	}
	return nil
}

// Mounter is where the dashboard registers its routes (server.Server).
type Mounter interface {
	Mount(pattern string, h http.Handler)
	RequireRole(role string, h http.HandlerFunc) http.HandlerFunc
}

// Register mounts the pages at "/" and the user API under /api/v1/users
// (admin API tokens, for `outpost-server users`).
func (d *Dashboard) Register(m Mounter) {
	m.Mount("/", d.Handler())
	m.Mount("GET /api/v1/users", m.RequireRole(RoleAdmin, d.apiUsersList))
	m.Mount("POST /api/v1/users", m.RequireRole(RoleAdmin, d.apiUsersAdd))
	m.Mount("DELETE /api/v1/users/{name}", m.RequireRole(RoleAdmin, d.apiUsersDelete))
	m.Mount("POST /api/v1/users/{name}/password", m.RequireRole(RoleAdmin, d.apiUsersPasswd))
}

// Handler serves the pages, /events and /static/.
func (d *Dashboard) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /static/", d.static)
	mux.HandleFunc("GET /login", d.loginPage)
	mux.HandleFunc("POST /login", d.loginPost)
	mux.HandleFunc("POST /logout", d.auth(RoleViewer, d.logout))
	mux.HandleFunc("GET /{$}", d.auth(RoleViewer, d.overview))
	mux.HandleFunc("GET /gateways", d.auth(RoleViewer, d.gatewayList))
	mux.HandleFunc("GET /gateways/{id}", d.auth(RoleViewer, d.gatewayDetail))
	mux.HandleFunc("GET /rollouts", d.auth(RoleViewer, d.rolloutList))
	mux.HandleFunc("GET /rollouts/{name}", d.auth(RoleViewer, d.rolloutDetail))
	mux.HandleFunc("POST /rollouts", d.auth(RoleOperator, d.rolloutCreate))
	mux.HandleFunc("POST /rollouts/{name}/{action}", d.auth(RoleOperator, d.rolloutAction))
	mux.HandleFunc("GET /events", d.auth(RoleViewer, d.events))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no page "+r.URL.Path, http.StatusNotFound)
	})
	return securityHeaders(mux)
}

func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "same-origin")
		hd.Set("X-Frame-Options", "DENY")
		h.ServeHTTP(w, r)
	})
}

// reqCtx is one authenticated request.
type reqCtx struct {
	User User
	CSRF string
	sess session
}

const sessionCookie = "outpost_session"
const loginCookie = "outpost_login"

func (d *Dashboard) current(r *http.Request) (reqCtx, bool) {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return reqCtx{}, false
	}
	se, ok := d.sess.decode(c.Value, d.opt.Now())
	if !ok {
		return reqCtx{}, false
	}
	u, err := d.users.Get(r.Context(), se.User)
	if err != nil || u.Epoch != se.Epoch {
		return reqCtx{}, false
	}
	return reqCtx{User: u, CSRF: d.sess.csrf("session", se.Nonce), sess: se}, true
}

// auth requires a session with at least role; POSTs also need the
// session's CSRF token (form field csrf or header X-CSRF-Token).
func (d *Dashboard) auth(role string, h func(http.ResponseWriter, *http.Request, reqCtx)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rc, ok := d.current(r)
		if !ok {
			if r.Method == http.MethodGet && r.URL.Path != "/events" {
				http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
				return
			}
			http.Error(w, "log in first", http.StatusUnauthorized)
			return
		}
		if r.Method == http.MethodPost {
			tok := r.Header.Get("X-CSRF-Token")
			if tok == "" {
				tok = r.PostFormValue("csrf")
			}
			if !d.sess.checkCSRF("session", rc.sess.Nonce, tok) {
				d.log.Warn("dashboard: refused", "reason", "csrf", "user", rc.User.Name, "path", r.URL.Path, "client", d.clientIP(r))
				http.Error(w, "csrf: missing or wrong token; reload the page", http.StatusForbidden)
				return
			}
		}
		if store.RoleRank(rc.User.Role) < store.RoleRank(role) {
			d.log.Warn("dashboard: refused", "reason", "role", "user", rc.User.Name, "role", rc.User.Role, "path", r.URL.Path)
			d.render(w, r, http.StatusForbidden, "error", rc, map[string]any{"Title": "Forbidden",
				"Message": fmt.Sprintf("this needs the %s role; %s has %s", role, rc.User.Name, rc.User.Role)})
			return
		}
		h(w, r, rc)
	}
}

// clientIP is the address a request is counted and logged as (see
// Options.TrustedProxies).
func (d *Dashboard) clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	if len(d.opt.TrustedProxies) == 0 {
		return host
	}
	addr, err := netip.ParseAddr(host)
	if err != nil || !d.trusted(addr) {
		return host
	}
	// The proxies append the address they got the request from; walk
	// from the right past our own proxies. A malformed entry ends the
	// walk at the last address a trusted proxy vouched for.
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			break
		}
		addr = a.Unmap()
		if !d.trusted(addr) {
			break
		}
	}
	return addr.String()
}

func (d *Dashboard) trusted(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range d.opt.TrustedProxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// render executes page with data; a request with X-Live: 1 gets only the
// page's live region (the script swaps it in).
func (d *Dashboard) render(w http.ResponseWriter, r *http.Request, code int, page string, rc reqCtx, data map[string]any) {
	t := d.tmpl[page]
	if data == nil {
		data = map[string]any{}
	}
	data["User"] = rc.User
	data["CSRF"] = rc.CSRF
	data["Operator"] = store.RoleRank(rc.User.Role) >= store.RoleRank(RoleOperator)
	data["Page"] = page
	name := "layout.html"
	if r.Header.Get("X-Live") == "1" {
		name = "live"
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	if err := t.ExecuteTemplate(w, name, data); err != nil {
		d.log.Error("dashboard: render", "page", page, "err", err)
	}
}

// ---- login ----

func (d *Dashboard) loginPage(w http.ResponseWriter, r *http.Request) {
	d.renderLogin(w, r, http.StatusOK, "", "")
}

func (d *Dashboard) renderLogin(w http.ResponseWriter, r *http.Request, code int, user, msg string) {
	nonce := randomHex(16)
	http.SetCookie(w, &http.Cookie{Name: loginCookie, Value: nonce, Path: "/login", HttpOnly: true, Secure: true,
		SameSite: http.SameSiteStrictMode, MaxAge: 3600})
	next := r.FormValue("next")
	if !localPath(next) {
		next = "/"
	}
	d.render(w, r, code, "login", reqCtx{}, map[string]any{"Title": "Log in", "LoginCSRF": d.sess.csrf("login", nonce),
		"Next": next, "Name": user, "Error": msg})
}

func (d *Dashboard) loginPost(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "form: "+err.Error(), http.StatusBadRequest)
		return
	}
	ip := d.clientIP(r)
	c, err := r.Cookie(loginCookie)
	if err != nil || !d.sess.checkCSRF("login", c.Value, r.PostFormValue("csrf")) {
		d.log.Warn("dashboard: login refused", "reason", "csrf", "client", ip)
		d.renderLogin(w, r, http.StatusForbidden, "", "csrf: the login form expired; try again")
		return
	}
	name := strings.TrimSpace(r.PostFormValue("user"))
	pw := r.PostFormValue("password")
	var msg string
	switch {
	case name == "":
		msg = "user: required"
	case ValidateUserName(name) != nil:
		msg = ValidateUserName(name).Error()
	case pw == "":
		msg = "password: required"
	case len(pw) > 1024:
		msg = "password: at most 1024 bytes"
	}
	if msg != "" {
		d.renderLogin(w, r, http.StatusBadRequest, name, msg)
		return
	}
	u, err := d.Login(r.Context(), name, pw, ip)
	switch {
	case errors.Is(err, ErrRateLimited):
		d.renderLogin(w, r, http.StatusTooManyRequests, name, err.Error())
		return
	case errors.Is(err, ErrBadLogin):
		d.renderLogin(w, r, http.StatusUnauthorized, name, "wrong user name or password")
		return
	case err != nil:
		d.log.Error("dashboard: login", "err", err)
		d.renderLogin(w, r, http.StatusInternalServerError, name, "internal error (see the server log)")
		return
	}
	se := session{User: u.Name, Epoch: u.Epoch, Expires: d.opt.Now().Add(d.opt.SessionTTL).Unix(), Nonce: randomHex(16)}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: d.sess.encode(se), Path: "/", HttpOnly: true, Secure: true,
		SameSite: http.SameSiteStrictMode, MaxAge: int(d.opt.SessionTTL / time.Second)})
	http.SetCookie(w, &http.Cookie{Name: loginCookie, Path: "/login", MaxAge: -1, HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
	next := r.PostFormValue("next")
	if !localPath(next) {
		next = "/"
	}
	http.Redirect(w, r, next, http.StatusSeeOther)
}

// localPath reports whether next is a path on this server (a login
// returns there): "/..." but not "//host" or "/\host", which browsers
// read as another site.
func localPath(next string) bool {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.ContainsAny(next, "\\\r\n\t") {
		return false
	}
	u, err := url.Parse(next)
	return err == nil && u.Scheme == "" && u.Host == ""
}

// Login checks a password with the per-user and per-address limits; every
// refusal is logged (user, address, reason), never the password.
func (d *Dashboard) Login(ctx context.Context, name, pw, ip string) (User, error) {
	now := d.opt.Now()
	if b, wait := d.byIP.blocked(ip, now); b {
		d.log.Warn("dashboard: login refused", "reason", "rate_limited_client", "user", name, "client", ip)
		return User{}, fmt.Errorf("%w from this address; try again in %s", ErrRateLimited, wait.Round(time.Second))
	}
	if b, wait := d.byUser.blocked(name, now); b {
		d.log.Warn("dashboard: login refused", "reason", "rate_limited_user", "user", name, "client", ip)
		return User{}, fmt.Errorf("%w for this user; try again in %s", ErrRateLimited, wait.Round(time.Second))
	}
	u, err := d.users.Get(ctx, name)
	hash := u.Hash
	if errors.Is(err, ErrNotFound) {
		hash = dummyHash // same work as a real check: no user enumeration by timing
	} else if err != nil {
		return User{}, err
	}
	ok, verr := VerifyPassword(hash, pw)
	if err != nil || verr != nil || !ok {
		d.byUser.fail(name, now)
		d.byIP.fail(ip, now)
		reason := "bad_password"
		if err != nil {
			reason = "unknown_user"
		}
		d.log.Warn("dashboard: login refused", "reason", reason, "user", name, "client", ip)
		return User{}, ErrBadLogin
	}
	d.byUser.reset(name)
	d.log.Info("dashboard: login", "user", name, "client", ip)
	return u, nil
}

var dummyHash = HashPassword("not a password", DefaultArgon2)

func (d *Dashboard) logout(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	d.sess.revoke(rc.sess)
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Path: "/", MaxAge: -1, HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// ---- pages ----

// GatewayState is the one-word state the pages show and count:
// revoked, error (a condition failed to apply), the reported health
// (ok, degraded, ...), or new (never reported).
func GatewayState(g store.Gateway) string {
	if g.Revoked {
		return "revoked"
	}
	for _, c := range g.Status.Conditions {
		if !c.Applied && c.Error != "" {
			return "error"
		}
	}
	if g.Status.Health != "" {
		return g.Status.Health
	}
	if g.LastSeen.IsZero() {
		return "new"
	}
	return "unknown"
}

// Count is one row of an overview table.
type Count struct {
	Key string
	N   int
}

func sortedCounts(m map[string]int, max int) []Count {
	out := make([]Count, 0, len(m))
	for k, n := range m {
		out = append(out, Count{k, n})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].N != out[j].N {
			return out[i].N > out[j].N
		}
		return out[i].Key < out[j].Key
	})
	if max > 0 && len(out) > max {
		out = out[:max]
	}
	return out
}

func (d *Dashboard) overview(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	sum, err := d.snap.summary(r.Context())
	if err != nil {
		d.fail(w, r, rc, "gateways", err)
		return
	}
	data := map[string]any{"Title": "Fleet", "Total": sum.Total, "Connected": sum.Connected, "Offline": sum.Total - sum.Connected,
		"States": sum.States, "Versions": sum.Versions, "Labels": sum.Labels}
	if d.opt.Rollouts != nil {
		if ros, err := d.opt.Rollouts.List(r.Context()); err == nil {
			active := []Rollout{}
			for _, ro := range ros {
				if ro.State == "running" || ro.State == "paused" || ro.State == "halted" {
					active = append(active, ro)
				}
			}
			data["Active"] = active
		}
	}
	d.render(w, r, http.StatusOK, "overview", rc, data)
}

func (d *Dashboard) fail(w http.ResponseWriter, r *http.Request, rc reqCtx, what string, err error) {
	code, msg := http.StatusInternalServerError, what+": internal error (see the server log)"
	switch {
	case errors.Is(err, store.ErrNotFound), errors.Is(err, ErrNotFound):
		code, msg = http.StatusNotFound, what+": not found"
	default:
		d.log.Error("dashboard: "+what, "err", err)
	}
	d.render(w, r, code, "error", rc, map[string]any{"Title": title(what), "Message": msg})
}

func title(s string) string { return funcs["title"].(func(string) string)(s) }

// GatewayRow is one row of the gateway list.
type GatewayRow struct {
	ID, State, Version string
	Connected          bool
	Labels             []string
	LastSeen           time.Time
}

func (d *Dashboard) gatewayList(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	q := r.URL.Query()
	selText, search := strings.TrimSpace(q.Get("selector")), strings.TrimSpace(q.Get("q"))
	data := map[string]any{"Title": "Gateways", "Selector": selText, "Search": search}
	var errs []string
	sel, err := selector.Parse(selText)
	if err != nil {
		errs = append(errs, "selector: "+err.Error())
	}
	if len(search) > 200 {
		errs = append(errs, "search: at most 200 characters")
	}
	if len(errs) > 0 {
		data["Errors"] = errs
		d.render(w, r, http.StatusBadRequest, "gateways", rc, data)
		return
	}
	gws, err := d.snap.get(r.Context(), false)
	if err != nil {
		d.fail(w, r, rc, "gateways", err)
		return
	}
	needle := strings.ToLower(search)
	rows := []GatewayRow{}
	matched := 0
	for _, g := range gws {
		if !sel.Matches(g.Labels) {
			continue
		}
		labels := make([]string, 0, len(g.Labels))
		for k, v := range g.Labels {
			labels = append(labels, k+"="+v)
		}
		sort.Strings(labels)
		if needle != "" && !strings.Contains(strings.ToLower(g.ID+" "+g.Facts["hostname"]+" "+strings.Join(labels, " ")), needle) {
			continue
		}
		matched++
		rows = append(rows, GatewayRow{ID: g.ID, State: GatewayState(g), Version: g.Facts["version"], Connected: g.Connected, Labels: labels, LastSeen: g.LastSeen})
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].ID < rows[j].ID })
	if len(rows) > d.opt.MaxRows {
		rows = rows[:d.opt.MaxRows]
	}
	data["Rows"], data["Matched"], data["Total"] = rows, matched, len(gws)
	d.render(w, r, http.StatusOK, "gateways", rc, data)
}

func (d *Dashboard) gatewayDetail(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	g, err := d.opt.Fleet.Gateway(r.Context(), r.PathValue("id"))
	if err != nil {
		d.fail(w, r, rc, "gateway "+r.PathValue("id"), err)
		return
	}
	labels := make([]string, 0, len(g.Labels))
	for k, v := range g.Labels {
		labels = append(labels, k+"="+v)
	}
	sort.Strings(labels)
	facts := make([]Count, 0, len(g.Facts))
	for k := range g.Facts {
		facts = append(facts, Count{Key: k})
	}
	sort.Slice(facts, func(i, j int) bool { return facts[i].Key < facts[j].Key })
	var errs []string
	for _, c := range g.Status.Conditions {
		if c.Error != "" {
			errs = append(errs, c.Kind+"/"+c.Name+": "+c.Error)
		}
	}
	var twins []twinRow
	if tl, ok := d.opt.Fleet.(interface {
		Twins(ctx context.Context, gateway string) ([]twin.Twin, error)
	}); ok {
		ts, err := tl.Twins(r.Context(), g.ID)
		if err != nil {
			d.fail(w, r, rc, "twins of "+g.ID, err)
			return
		}
		for _, t := range ts {
			row := twinRow{Device: t.Device, Desired: compactJSON(t.Desired), Reported: compactJSON(t.Reported), DesiredVersion: t.DesiredVersion,
				ReportedVersion: t.ReportedVersion, Delta: compactJSON(t.Delta), Updated: t.Metadata.ReportedUpdated}
			if t.Metadata.DesiredUpdated.After(row.Updated) {
				row.Updated = t.Metadata.DesiredUpdated
			}
			twins = append(twins, row)
		}
	}
	d.render(w, r, http.StatusOK, "gateway", rc, map[string]any{"Title": "Gateway " + g.ID, "G": g, "State": GatewayState(g),
		"Labels": labels, "FactKeys": facts, "Errors": errs, "Twins": twins,
		"Rate": g.Facts["msg_rate"], "Queue": g.Facts["queue_depth"]})
}

// twinRow is one device twin on the gateway page.
type twinRow struct {
	Device                          string
	Desired, Reported, Delta        string
	DesiredVersion, ReportedVersion int64
	Updated                         time.Time
}

// compactJSON shows a JSON document on one line ("" for none).
func compactJSON(b json.RawMessage) string {
	if len(b) == 0 || string(b) == "null" {
		return ""
	}
	var buf bytes.Buffer
	if json.Compact(&buf, b) != nil {
		return string(b)
	}
	return buf.String()
}

func (d *Dashboard) noRollouts(w http.ResponseWriter, r *http.Request, rc reqCtx) bool {
	if d.opt.Rollouts != nil {
		return false
	}
	d.render(w, r, http.StatusNotFound, "error", rc, map[string]any{"Title": "Rollouts", "Message": "no rollout controller in this server"})
	return true
}

func (d *Dashboard) rolloutList(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	if d.noRollouts(w, r, rc) {
		return
	}
	d.rolloutListWith(w, r, rc, http.StatusOK, url.Values{"soak": {"10m"}, "deadline": {"5m"}}, nil)
}

// rolloutListWith renders the rollouts page with the "New rollout" form
// filled from form and err (a refused input) shown next to its field.
func (d *Dashboard) rolloutListWith(w http.ResponseWriter, r *http.Request, rc reqCtx, code int, form url.Values, ierr *InputError) {
	ros, err := d.opt.Rollouts.List(r.Context())
	if err != nil {
		d.fail(w, r, rc, "rollouts", err)
		return
	}
	sort.Slice(ros, func(i, j int) bool { return ros[i].Created.After(ros[j].Created) })
	errs := map[string]string{}
	if ierr != nil {
		errs[ierr.Field] = ierr.Msg
	}
	d.render(w, r, code, "rollouts", rc, map[string]any{"Title": "Rollouts", "Rollouts": ros,
		"CanCreate": d.creator() != nil, "Form": form, "Errs": errs})
}

func (d *Dashboard) rolloutDetail(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	if d.noRollouts(w, r, rc) {
		return
	}
	d.showRollout(w, r, rc, http.StatusOK, r.PathValue("name"), r.URL.Query().Get("msg"), "")
}

func (d *Dashboard) showRollout(w http.ResponseWriter, r *http.Request, rc reqCtx, code int, name, msg, errMsg string) {
	ro, err := d.opt.Rollouts.Get(r.Context(), name)
	if err != nil {
		d.fail(w, r, rc, "rollout "+name, err)
		return
	}
	if len(msg) > 200 {
		msg = msg[:200]
	}
	d.render(w, r, code, "rollout", rc, map[string]any{"Title": "Rollout " + ro.Name, "R": ro,
		"Actions": available(ro.State), "Msg": msg, "Error": errMsg})
}

func (d *Dashboard) rolloutAction(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	if d.noRollouts(w, r, rc) {
		return
	}
	name, action := r.PathValue("name"), r.PathValue("action")
	if !validAction(action) {
		d.showRollout(w, r, rc, http.StatusBadRequest, name, "", fmt.Sprintf("action: %q: want one of %s", action, strings.Join(Actions, ", ")))
		return
	}
	rv, err := strconv.ParseInt(r.PostFormValue("resourceVersion"), 10, 64)
	if err != nil || rv <= 0 {
		d.showRollout(w, r, rc, http.StatusBadRequest, name, "", "resourceVersion: want a positive integer (the version the page showed)")
		return
	}
	_, err = d.opt.Rollouts.Act(r.Context(), name, action, rv)
	switch {
	case errors.Is(err, ErrConflict):
		d.showRollout(w, r, rc, http.StatusConflict, name, "", fmt.Sprintf("conflict: %s (the page showed resourceVersion %d); look again before you %s",
			strings.TrimPrefix(err.Error(), ErrConflict.Error()+": "), rv, action))
		return
	case err != nil && errors.Is(err, ErrNotFound):
		d.fail(w, r, rc, "rollout "+name, err)
		return
	case err != nil:
		d.showRollout(w, r, rc, http.StatusBadRequest, name, "", action+": "+err.Error())
		return
	}
	d.log.Info("dashboard: rollout action", "user", rc.User.Name, "rollout", name, "action", action)
	http.Redirect(w, r, "/rollouts/"+url.PathEscape(name)+"?msg="+url.QueryEscape(action+" accepted"), http.StatusSeeOther)
}

// events is the live-update stream: one "change" event per fleet change,
// at most one per LiveInterval.
func (d *Dashboard) events(w http.ResponseWriter, r *http.Request, _ reqCtx) {
	ch, stop := d.opt.Fleet.Changes()
	defer stop()
	var rch <-chan struct{} // the rollout controller's own changes, if it has them
	if n, ok := d.opt.Rollouts.(interface {
		Changes() (<-chan struct{}, func())
	}); ok {
		var rstop func()
		rch, rstop = n.Changes()
		defer rstop()
	}
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, "retry: 2000\n: connected\n\n")
	if d.snap.stale() {
		// Something changed since the registry was last read (maybe after
		// this page was rendered from it): refresh it now.
		if _, err := d.snap.get(r.Context(), true); err == nil {
			fmt.Fprint(w, "event: change\ndata: 0\n\n")
		}
	}
	if rc.Flush() != nil {
		return
	}
	keep := time.NewTicker(25 * time.Second)
	defer keep.Stop()
	n := 0
	for {
		select {
		case <-r.Context().Done():
			return
		case <-keep.C:
			fmt.Fprint(w, ": keepalive\n\n")
		case <-ch:
			n++
			// Read the registry now, so the page's refresh gets it fresh.
			if _, err := d.snap.get(r.Context(), true); err != nil {
				d.log.Warn("dashboard: gateways", "err", err)
			}
			fmt.Fprintf(w, "event: change\ndata: %d\n\n", n)
		case <-rch:
			n++
			fmt.Fprintf(w, "event: change\ndata: %d\n\n", n)
		}
		if rc.Flush() != nil {
			return
		}
		t := time.NewTimer(d.opt.LiveInterval)
		select {
		case <-r.Context().Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}
