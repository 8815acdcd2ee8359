package dashboard_test

// Tests in a real browser: headless Chromium from Debian's packages
// (scripts/deps.sh installs it) driven by chromedp over the DevTools
// protocol, against a real outpost-server with real gateways (client.Syncer
// over mTLS HTTP/2). One browser serves the package; every test has its own
// incognito browser context (cookies apart). On failure each tab's
// screenshot is saved under $OUTPOST_ARTIFACTS (or a kept temporary
// directory) and its path printed. With OUTPOST_DOCS_IMG=DIR the tests also
// save the screenshots used by docs/fleet.md into DIR.

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/outpost-edge/outpost/internal/fleet/dashboard"
	"github.com/outpost-edge/outpost/internal/fleet/fleettest"
)

var (
	browserOnce   sync.Once
	browserCtx    context.Context
	browserErr    error
	browserCancel = func() {}
)

func TestMain(m *testing.M) {
	code := m.Run()
	browserCancel()
	os.Exit(code)
}

func startBrowser() {
	path := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		browserErr = fmt.Errorf("no chromium in PATH: install it with scripts/deps.sh (apt-get install chromium)")
		return
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox,
		chromedp.Flag("ignore-certificate-errors", true), chromedp.WindowSize(1280, 860))
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(alloc)
	browserCtx = ctx
	browserCancel = func() { cancelCtx(); cancelAlloc() }
	browserErr = chromedp.Do(ctx) // starts the browser
}

// tab opens a tab in a fresh incognito context; the returned context
// bounds the test's browser actions. On failure the tab's screenshot is
// saved and its path printed.
func tab(t *testing.T, name string) context.Context {
	t.Helper()
	browserOnce.Do(startBrowser)
	if browserErr != nil {
		t.Fatalf("chromium: %v", browserErr)
	}
	ctx, cancel := chromedp.NewContext(browserCtx, chromedp.WithNewBrowserContext())
	if err := chromedp.Do(ctx); err != nil { // creates the tab; no timeout on this first run
		cancel()
		t.Fatalf("new tab: %v", err)
	}
	tctx, tcancel := context.WithTimeout(ctx, 40*time.Second)
	t.Cleanup(func() {
		if t.Failed() {
			sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
			png, err := chromedp.Run(sctx, chromedp.CaptureScreenshot())
			scancel()
			if err == nil {
				dir := os.Getenv("OUTPOST_ARTIFACTS")
				if dir == "" {
					dir, _ = os.MkdirTemp("", "outpost-dashboard-artifacts-")
				}
				p := filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_")+"-"+name+".png")
				if werr := os.WriteFile(p, png, 0o644); werr == nil {
					t.Logf("screenshot of tab %s: %s", name, p)
				}
			}
		}
		tcancel()
		cancel()
	})
	return tctx
}

// docShot saves a screenshot for docs/fleet.md when OUTPOST_DOCS_IMG is set.
func docShot(t *testing.T, ctx context.Context, name string) {
	dir := os.Getenv("OUTPOST_DOCS_IMG")
	if dir == "" {
		return
	}
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
}

func must(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// text reads an element's text in one evaluation (the live region can be
// swapped between a node lookup and a read from outside the page).
func text(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`(() => { const e = document.querySelector(`+strconv.Quote(sel)+`); return e ? e.textContent : '<no `+sel+`>'; })()`))
	must(t, "text of "+sel, err)
	return strings.TrimSpace(s)
}

func eval[T any](t *testing.T, ctx context.Context, js string, opts ...chromedp.EvaluateOption) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](js, opts...))
	must(t, "evaluate "+js, err)
	return v
}

// waitJS waits until the expression is true, for at most 15 s. It
// evaluates again after a navigation (the page being replaced interrupts
// an evaluation) and every 20 ms otherwise.
func waitJS(t *testing.T, ctx context.Context, what, js string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	var last error
	for time.Now().Before(deadline) && ctx.Err() == nil {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool]("!!("+js+")"))
		if err == nil && ok {
			return
		}
		last = err
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s (last error: %v)", what, last)
}

// browserLogin logs in through the form (typing, as a person would).
func browserLogin(t *testing.T, ctx context.Context, base, user, pw string) {
	t.Helper()
	must(t, "login", chromedp.Do(ctx,
		chromedp.Navigate(base+"/login"),
		chromedp.WaitVisible(chromedp.ID("user")),
		chromedp.SendKeys(chromedp.ID("user"), user),
		chromedp.SendKeys(chromedp.ID("password"), pw),
		chromedp.Click(chromedp.ID("login")),
		chromedp.WaitVisible(chromedp.ID("whoami")),
	))
}

func TestBrowserLogin(t *testing.T) {
	e := start(t, dashboard.Options{})
	ctx := tab(t, "login")
	// A page asks for a login and comes back to it afterwards.
	must(t, "navigate", chromedp.Do(ctx, chromedp.Navigate(e.srv.URL+"/gateways"), chromedp.WaitVisible(chromedp.ID("password"))))
	if loc := eval[string](t, ctx, "location.pathname"); loc != "/login" {
		t.Fatalf("at %s, want /login", loc)
	}
	must(t, "bad password", chromedp.Do(ctx,
		chromedp.SendKeys(chromedp.ID("user"), "operator"),
		chromedp.SendKeys(chromedp.ID("password"), "not the password"),
		chromedp.Click(chromedp.ID("login")),
		chromedp.WaitVisible(chromedp.ID("login-error")),
	))
	if got := text(t, ctx, "#login-error"); got != "wrong user name or password" {
		t.Fatalf("error shown: %q", got)
	}
	if eval[bool](t, ctx, "document.cookie.includes('outpost_session')") {
		t.Fatal("session cookie readable from JavaScript")
	}
	must(t, "good password", chromedp.Do(ctx,
		chromedp.SendKeys(chromedp.ID("password"), testPassword), // the refused form comes back without the password
		chromedp.Click(chromedp.ID("login")),
		chromedp.WaitVisible(chromedp.ID("whoami")),
	))
	if got := text(t, ctx, "#whoami"); got != "operator (operator)" {
		t.Fatalf("whoami %q", got)
	}
	if loc := eval[string](t, ctx, "location.pathname"); loc != "/gateways" {
		t.Fatalf("after login at %s, want back at /gateways", loc)
	}
}

func TestBrowserFilterAndLiveUpdate(t *testing.T) {
	e := start(t, dashboard.Options{LiveInterval: 100 * time.Millisecond})
	e.gateway(t, "gw-plant2-a", map[string]string{"site": "plant2", "ring": "canary"}, map[string]string{"version": "1.4.0", "hostname": "p2a", "msg_rate": "120", "queue_depth": "3"})
	e.gateway(t, "gw-plant2-b", map[string]string{"site": "plant2"}, map[string]string{"version": "1.4.0"})
	e.gateway(t, "gw-plant3-a", map[string]string{"site": "plant3"}, map[string]string{"version": "1.3.2"})
	ctx := tab(t, "viewer")
	browserLogin(t, ctx, e.srv.URL, "viewer", testPassword)
	waitJS(t, ctx, "3 connected gateways", `document.querySelector('#connected') && document.querySelector('#connected').textContent === '3'`)
	docShot(t, ctx, "dashboard-overview")

	// Filter with a selector typed into the form.
	must(t, "filter", chromedp.Do(ctx,
		chromedp.Navigate(e.srv.URL+"/gateways"),
		chromedp.WaitVisible(chromedp.ID("selector")),
		chromedp.SendKeys(chromedp.ID("selector"), "site=plant2,ring!=canary"),
		chromedp.Click(chromedp.ID("filter")),
	))
	waitJS(t, ctx, "the filtered list", `location.search.includes('selector=') && document.readyState === 'complete' && !!document.querySelector('#matched')`)
	ids := eval[[]string](t, ctx, `[...document.querySelectorAll('#gateways tbody tr')].map(r => r.dataset.id)`)
	if len(ids) != 1 || ids[0] != "gw-plant2-b" {
		t.Fatalf("rows %v, want [gw-plant2-b]", ids)
	}
	// A bad selector is answered with a message naming the field.
	must(t, "bad selector", chromedp.Do(ctx,
		chromedp.SetValue(chromedp.ID("selector"), "site in (plant2"),
		chromedp.Click(chromedp.ID("filter")),
	))
	waitJS(t, ctx, "the error", `document.readyState === 'complete' && !!document.querySelector('p.error')`)
	if msg := text(t, ctx, "p.error"); !strings.HasPrefix(msg, "selector: ") {
		t.Fatalf("error %q", msg)
	}
	must(t, "filter plant2", chromedp.Do(ctx, chromedp.Navigate(e.srv.URL+"/gateways?selector="+url.QueryEscape("site=plant2")), chromedp.WaitVisible(chromedp.ID("matched"))))
	docShot(t, ctx, "dashboard-gateways")

	// Live update: relabel a gateway through the API; the page shows it
	// without a reload (a marker set in the page survives).
	must(t, "detail", chromedp.Do(ctx, chromedp.Navigate(e.srv.URL+"/gateways/gw-plant2-a"), chromedp.WaitVisible(chromedp.ID("labels"))))
	waitJS(t, ctx, "the event stream", `document.body.dataset.sse === 'open'`)
	if r := text(t, ctx, "#rate"); r != "120 msg/s" {
		t.Fatalf("message rate %q", r)
	}
	eval[bool](t, ctx, `window.noReload = true`)
	e.srv.MustDo(t, "POST", "/api/v1/gateways/gw-plant2-a/labels", map[string]any{"set": map[string]string{"ring": "wave2"}}, 200, nil)
	waitJS(t, ctx, "the new label", `document.querySelector('#labels').textContent.includes('ring=wave2')`)
	if !eval[bool](t, ctx, `window.noReload === true`) {
		t.Fatal("the page was reloaded")
	}
	// A failing rule on the gateway shows as its state and recent error.
	e.srv.MustDo(t, "PUT", "/api/v1/objects/ruleset/bad", fleettest.RuleSet("CREATE RULE BROKEN", map[string]any{"gateway": "gw-plant2-a"}), 200, nil)
	waitJS(t, ctx, "the apply error", `document.querySelector('#state').textContent === 'error'`)
	if errs := text(t, ctx, "#errors"); !strings.Contains(errs, "syntax error near BROKEN") {
		t.Fatalf("errors %q", errs)
	}
	docShot(t, ctx, "dashboard-gateway")
}

func TestBrowserRolloutHaltAndRoles(t *testing.T) {
	e := start(t, dashboard.Options{LiveInterval: 100 * time.Millisecond})
	e.ro.put(dashboard.Rollout{Name: "rules-v7", Object: dashboard.RolloutRef{Kind: "ruleset", Name: "hot"}, FromRevision: 41, ToRevision: 57,
		Selector: "site=plant2", State: "running", Waves: []dashboard.Wave{
			{Name: "canary", State: "soaking", Targets: 1, Applied: 1},
			{Name: "5%", State: "running", Targets: 50, Applied: 12},
			{Name: "25%", State: "pending", Targets: 250},
			{Name: "100%", State: "pending", Targets: 699}}})

	op := tab(t, "operator")
	browserLogin(t, op, e.srv.URL, "operator", testPassword)
	must(t, "rollout page", chromedp.Do(op, chromedp.Navigate(e.srv.URL+"/rollouts/rules-v7"), chromedp.WaitVisible(chromedp.ID("btn-pause"))))
	waitJS(t, op, "the event stream", `document.body.dataset.sse === 'open'`)

	// The controller halts the rollout: the page shows it, with the reason
	// and the failing gateways, without a reload.
	e.ro.put(dashboard.Rollout{Name: "rules-v7", Object: dashboard.RolloutRef{Kind: "ruleset", Name: "hot"}, FromRevision: 41, ToRevision: 57,
		Selector: "site=plant2", State: "halted", Reason: "wave 5%: 2 of 50 gateways failed (4% > 2%): apply_error",
		Failing: []dashboard.Failing{{Gateway: "gw-0017", Signal: "apply_error", Detail: "fleet-hot.sql:3:14: unknown function AVGG"},
			{Gateway: "gw-0031", Signal: "apply_error", Detail: "fleet-hot.sql:3:14: unknown function AVGG"}},
		Waves: []dashboard.Wave{
			{Name: "canary", State: "done", Targets: 1, Applied: 1},
			{Name: "5%", State: "halted", Targets: 50, Applied: 31, Failed: 2},
			{Name: "25%", State: "pending", Targets: 250},
			{Name: "100%", State: "pending", Targets: 699}}})
	waitJS(t, op, "the halt", `document.querySelector('#ro-state').textContent === 'halted'`)
	if r := text(t, op, "#reason"); !strings.Contains(r, "2 of 50 gateways failed") {
		t.Fatalf("reason %q", r)
	}
	if f := text(t, op, "#failing"); !strings.Contains(f, "gw-0017") || !strings.Contains(f, "unknown function AVGG") {
		t.Fatalf("failing %q", f)
	}
	if v := eval[[]float64](t, op, `[...document.querySelectorAll('#waves progress')].map(p => p.value)`); len(v) != 4 || v[1] != 31 {
		t.Fatalf("progress values %v", v)
	}
	// Keyboard only: Tab reaches the Resume button, Enter presses it.
	reached := false
	for i := 0; i < 40 && !reached; i++ {
		must(t, "tab", chromedp.Do(op, chromedp.KeyEvent("\t")))
		reached = eval[string](t, op, `document.activeElement && document.activeElement.id`) == "btn-resume"
	}
	if !reached {
		t.Fatal("Tab never reached the Resume button")
	}
	must(t, "enter", chromedp.Do(op, chromedp.KeyEvent("\r")))
	waitJS(t, op, "resumed", `document.querySelector('#ro-state') && document.querySelector('#ro-state').textContent === 'running'`)

	// A viewer sees no operator button, and the server refuses the POST
	// even with the viewer's valid CSRF token.
	vw := tab(t, "viewer")
	browserLogin(t, vw, e.srv.URL, "viewer", testPassword)
	must(t, "viewer rollout page", chromedp.Do(vw, chromedp.Navigate(e.srv.URL+"/rollouts/rules-v7"), chromedp.WaitVisible(chromedp.ID("ro-state"))))
	if n := eval[int](t, vw, `document.querySelectorAll('button.act').length`); n != 0 {
		t.Fatalf("viewer sees %d action buttons", n)
	}
	r, _ := e.ro.Get(context.Background(), "rules-v7")
	status := eval[int](t, vw, fmt.Sprintf(`(async () => {
		const csrf = document.querySelector('input[name=csrf]').value;
		const r = await fetch('/rollouts/rules-v7/abort', {method: 'POST', body: new URLSearchParams({csrf, resourceVersion: '%d'})});
		return r.status; })()`, r.ResourceVersion), chromedp.EvalAwaitPromise)
	if status != 403 {
		t.Fatalf("viewer abort POST = %d, want 403", status)
	}
	if r2, _ := e.ro.Get(context.Background(), "rules-v7"); r2.State != "running" {
		t.Fatalf("state %s after the viewer's refused abort", r2.State)
	}
}

// TestBrowserRealRolloutHalt: the server's rollout controller against real
// gateways (client.Syncer): a rule set that does not compile on the canary
// halts the rollout in its first wave; the rollouts list shows the new
// rollout and the detail page the halt, its reason and the failing
// gateway, live; Rollback pressed from the keyboard rolls it back.
func TestBrowserRealRolloutHalt(t *testing.T) {
	e := startReal(t, dashboard.Options{LiveInterval: 100 * time.Millisecond})
	e.gateway(t, "gw-canary", map[string]string{"app": "x", "ring": "canary"}, map[string]string{"version": "1.4.0"})
	for _, id := range []string{"gw-1", "gw-2", "gw-3"} {
		e.gateway(t, id, map[string]string{"app": "x"}, map[string]string{"version": "1.4.0"})
	}
	e.srv.MustDo(t, "PUT", "/api/v1/objects/ruleset/filter", fleettest.RuleSet("CREATE RULE filter AS SELECT 1", map[string]any{"selector": "app=x"}), 200, nil)

	t.Cleanup(func() {
		if t.Failed() {
			_, b := e.srv.Do(t, e.srv.Admin, "GET", "/api/v1/rollouts/filter-v2", nil)
			_, g := e.srv.Do(t, e.srv.Admin, "GET", "/api/v1/gateways/gw-canary", nil)
			t.Logf("rollout: %s\ncanary: %s\nserver log:\n%s", b, g, e.srv.Logs.String())
		}
	})
	op := tab(t, "operator")
	browserLogin(t, op, e.srv.URL, "operator", testPassword)
	// The rollout is started from the "New rollout" form; a bad selector,
	// then a wave percent of 150 first, each refused by the API with the
	// message next to the field it names.
	must(t, "rollouts", chromedp.Do(op, chromedp.Navigate(e.srv.URL+"/rollouts"), chromedp.WaitVisible(chromedp.ID("new-rollout"))))
	must(t, "fill the form", chromedp.Do(op,
		chromedp.SendKeys(chromedp.ID("f-name"), "filter-v2"),
		chromedp.SetValue(chromedp.ID("f-kind"), "ruleset"),
		chromedp.SetValue(chromedp.ID("f-object"), "filter"),
		chromedp.SetValue(chromedp.ID("f-spec"), `{"sql": "CREATE RULE filter AS SELECT BROKEN"}`),
		chromedp.SetValue(chromedp.ID("f-selector"), "app=x,,"),
		chromedp.SetValue(chromedp.ID("f-waves"), "canary selector=ring=canary\nhalf percent=150\nall percent=100"),
		chromedp.SetValue(chromedp.ID("f-soak"), "0s"),
		chromedp.SetValue(chromedp.ID("f-deadline"), "30s"),
		chromedp.SetValue(chromedp.ID("f-maxFailed"), "0"),
		chromedp.Click(chromedp.ID("btn-create")),
	))
	waitJS(t, op, "the selector error", `!!document.querySelector('#err-selector')`)
	if m := text(t, op, "#err-selector"); !strings.HasPrefix(m, "selector: ") {
		t.Fatalf("selector error %q", m)
	}
	must(t, "fix the selector", chromedp.Do(op,
		chromedp.SetValue(chromedp.ID("f-selector"), "app=x"),
		chromedp.Click(chromedp.ID("btn-create")),
	))
	waitJS(t, op, "the waves error", `!!document.querySelector('#err-waves')`)
	if eval[bool](t, op, `!!document.querySelector('#err-selector')`) {
		t.Fatal("the selector error is still shown after the fix")
	}
	if m := text(t, op, "#err-waves"); !strings.Contains(m, "waves[1].percent: 150") {
		t.Fatalf("waves error %q", m)
	}
	if v := eval[string](t, op, `document.querySelector('#f-spec').value`); !strings.Contains(v, "BROKEN") {
		t.Fatalf("the refused form lost its spec: %q", v)
	}
	eval[bool](t, op, `document.querySelector('#err-waves').scrollIntoView({block: 'center'}), true`)
	docShot(t, op, "dashboard-rollout-new")
	must(t, "fix the waves", chromedp.Do(op,
		chromedp.SetValue(chromedp.ID("f-waves"), "canary selector=ring=canary\nhalf percent=50\nall percent=100"),
		chromedp.Click(chromedp.ID("btn-create")),
	))
	waitJS(t, op, "the rollout page", `location.pathname === '/rollouts/filter-v2' && !!document.querySelector('#ro-state')`)
	waitJS(t, op, "the event stream", `document.body.dataset.sse === 'open'`)
	waitJS(t, op, "the halt", `document.querySelector('#ro-state').textContent === 'halted'`)
	if r := text(t, op, "#reason"); !strings.Contains(r, "canary") {
		t.Fatalf("reason %q", r)
	}
	if f := text(t, op, "#failing"); !strings.Contains(f, "gw-canary") || !strings.Contains(f, "apply_error") || !strings.Contains(f, "BROKEN") {
		t.Fatalf("failing %q", f)
	}
	docShot(t, op, "dashboard-rollout-halted")
	reached := false
	for i := 0; i < 40 && !reached; i++ {
		must(t, "tab", chromedp.Do(op, chromedp.KeyEvent("\t")))
		reached = eval[string](t, op, `document.activeElement && document.activeElement.id`) == "btn-rollback"
	}
	if !reached {
		t.Fatal("Tab never reached the Rollback button")
	}
	must(t, "enter", chromedp.Do(op, chromedp.KeyEvent("\r")))
	waitJS(t, op, "rolled back", `document.querySelector('#ro-state') && document.querySelector('#ro-state').textContent === 'rolledback'`)

	// A viewer is not shown the form, and the server refuses its POST.
	vw := tab(t, "viewer")
	browserLogin(t, vw, e.srv.URL, "viewer", testPassword)
	must(t, "viewer rollouts", chromedp.Do(vw, chromedp.Navigate(e.srv.URL+"/rollouts"), chromedp.WaitVisible(chromedp.ID("rollouts"))))
	if eval[bool](t, vw, `!!document.querySelector('#new-rollout, #f-name')`) {
		t.Fatal("a viewer sees the New rollout form")
	}
	status := eval[int](t, vw, `(async () => {
		const csrf = document.querySelector('input[name=csrf]').value;
		const r = await fetch('/rollouts', {method: 'POST', body: new URLSearchParams({csrf, name: 'v-ro', kind: 'ruleset', object: 'filter', revision: '1', waves: 'all percent=100'})});
		return r.status; })()`, chromedp.EvalAwaitPromise)
	if status != 403 {
		t.Fatalf("viewer New rollout POST = %d, want 403", status)
	}
}

// TestBrowserAccessibility checks the basics on every page: each visible
// input has a label, each button a name, the document a language, and
// keyboard navigation reaches every button and link of the main content.
func TestBrowserAccessibility(t *testing.T) {
	e := start(t, dashboard.Options{})
	e.gateway(t, "gw-1", map[string]string{"site": "a"}, map[string]string{"version": "1.0"})
	e.ro.put(dashboard.Rollout{Name: "r1", State: "paused", Waves: []dashboard.Wave{{Name: "canary", State: "done", Targets: 1, Applied: 1}}})
	ctx := tab(t, "admin")
	const audit = `(() => {
		const bad = [];
		if (!document.documentElement.lang) bad.push('html without lang');
		for (const el of document.querySelectorAll('input, select, textarea')) {
			if (el.type === 'hidden') continue;
			const named = (el.id && document.querySelector('label[for="' + el.id + '"]')) || el.getAttribute('aria-label') || el.getAttribute('aria-labelledby');
			if (!named) bad.push('input without label: ' + (el.id || el.name));
		}
		for (const el of document.querySelectorAll('button')) if (!el.textContent.trim() && !el.getAttribute('aria-label')) bad.push('button without a name');
		for (const el of document.querySelectorAll('progress')) if (!el.getAttribute('aria-label') && !el.getAttribute('aria-labelledby')) bad.push('progress without a label');
		return bad; })()`
	// Tab through the page and report the buttons it never reached.
	const unreached = `(() => {
		const want = new Set([...document.querySelectorAll('button, input:not([type=hidden]), select, textarea')]);
		document.activeElement && document.activeElement.blur();
		return [...want].map(b => b.id || b.textContent.trim() || b.name); })()`
	check := func(page string) {
		t.Helper()
		if bad := eval[[]string](t, ctx, audit); len(bad) > 0 {
			t.Errorf("%s: %v", page, bad)
		}
		want := eval[[]string](t, ctx, unreached)
		seen := map[string]bool{}
		all := func() bool {
			for _, w := range want {
				if !seen[w] {
					return false
				}
			}
			return true
		}
		for i := 0; i < 60 && !all(); i++ {
			must(t, "tab", chromedp.Do(ctx, chromedp.KeyEvent("\t")))
			id := eval[string](t, ctx, `(() => { const a = document.activeElement; return a ? (a.id || a.textContent.trim() || a.name || '') : ''; })()`)
			seen[id] = true
		}
		for _, w := range want {
			if !seen[w] {
				t.Errorf("%s: keyboard navigation never reaches %q", page, w)
			}
		}
	}
	must(t, "login page", chromedp.Do(ctx, chromedp.Navigate(e.srv.URL+"/login"), chromedp.WaitVisible(chromedp.ID("user"))))
	check("/login")
	browserLogin(t, ctx, e.srv.URL, "admin", testPassword)
	for _, p := range []string{"/", "/gateways", "/gateways/gw-1", "/rollouts", "/rollouts/r1"} {
		must(t, p, chromedp.Do(ctx, chromedp.Navigate(e.srv.URL+p), chromedp.WaitVisible(chromedp.ID("main"))))
		check(p)
	}
	// The New rollout form (shown with the server's own rollout
	// controller): every input labelled and reached from the keyboard.
	e2 := startReal(t, dashboard.Options{})
	ctx = tab(t, "admin-form")
	browserLogin(t, ctx, e2.srv.URL, "admin", testPassword)
	must(t, "/rollouts form", chromedp.Do(ctx, chromedp.Navigate(e2.srv.URL+"/rollouts"), chromedp.WaitVisible(chromedp.ID("new-rollout"))))
	for _, id := range []string{"name", "kind", "spec", "waves", "maxFailed", "maxRuleErrors", "maxQueueGrowth", "autoRollback"} {
		if !eval[bool](t, ctx, `!!document.getElementById('f-`+id+`')`) {
			t.Fatalf("/rollouts: the New rollout form has no #f-%s", id)
		}
	}
	check("/rollouts (New rollout form)")
}
