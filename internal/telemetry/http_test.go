package telemetry

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"runtime"
	"strings"
	"testing"
)

func startServer(t *testing.T, cfg Config, routes ...func(*http.ServeMux)) string {
	t.Helper()
	cfg.Address = "127.0.0.1:0"
	cfg.SetDefaults()
	s := New(Options{Routes: routes})
	ctx := context.Background()
	if err := s.Init(ctx, &cfg); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop(context.Background()) })
	return "http://" + s.Addr()
}

func do(t *testing.T, method, url, token, body string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

func TestRoutes(t *testing.T) {
	extra := func(m *http.ServeMux) {
		m.HandleFunc("GET /api/v1/extra", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "extra") })
	}
	base := startServer(t, Config{}, extra)
	for _, c := range []struct {
		method, path string
		code         int
		want         string
	}{
		{"GET", "/healthz", 200, "ok"},
		{"HEAD", "/healthz", 200, ""},
		{"GET", "/readyz", 200, `"ready": true`},
		{"GET", "/metrics", 200, "go_memstats"},
		{"POST", "/metrics", 405, ""},
		{"GET", "/api/v1/version", 200, "{"},
		{"GET", "/api/v1/config", 404, "no config"},
		{"GET", "/api/v1/extra", 200, "extra"},
		{"GET", "/nope", 404, ""},
		{"GET", "/debug/pprof/", 200, "goroutine?debug=1"},
		{"GET", "/debug/pprof/cmdline", 200, ""},
		{"GET", "/debug/pprof/heap?debug=1", 200, "heap profile"},
		{"GET", "/debug/pprof/goroutine?debug=2", 200, "goroutine "},
		{"GET", "/debug/pprof/allocs?gc=1", 200, ""},
		{"GET", "/debug/pprof/nope", 404, "Unknown profile"},
		{"GET", "/debug/pprof/heap?seconds=5", 400, "diff_base"},
		{"GET", "/debug/pprof/symbol", 200, "num_symbols: 1"},
		{"GET", "/debug/pprof/profile?seconds=x", 400, "seconds"},
	} {
		code, h, body := do(t, c.method, base+c.path, "", "")
		if code != c.code || !strings.Contains(body, c.want) {
			t.Errorf("%s %s: %d %q, want %d containing %q", c.method, c.path, code, body, c.code, c.want)
		}
		if code == 405 && h.Get("Allow") != "GET, HEAD" {
			t.Errorf("%s %s: Allow %q", c.method, c.path, h.Get("Allow"))
		}
	}
	// Profiles in the protocol-buffer format go tool pprof reads (gzip).
	for _, p := range []string{"/debug/pprof/heap", "/debug/pprof/profile?seconds=1", "/debug/pprof/trace?seconds=1"} {
		code, _, body := do(t, "GET", base+p, "", "")
		if code != 200 || len(body) < 10 {
			t.Errorf("GET %s: %d, %d bytes", p, code, len(body))
		}
		if !strings.Contains(p, "trace") && !strings.HasPrefix(body, "\x1f\x8b") {
			t.Errorf("GET %s: not gzip", p)
		}
	}
	pc := reflect.ValueOf(TestRoutes).Pointer()
	name := runtime.FuncForPC(pc).Name()
	for _, m := range []string{"GET", "POST"} {
		path, body := fmt.Sprintf("/debug/pprof/symbol?%#x+0x0", pc), ""
		if m == "POST" {
			path, body = "/debug/pprof/symbol", fmt.Sprintf("0x0+%#x", pc)
		}
		if code, _, got := do(t, m, base+path, "", body); code != 200 || !strings.Contains(got, name) {
			t.Errorf("%s symbol: %d %q, want %s", m, code, got, name)
		}
	}
}

func TestPprofOffAndToken(t *testing.T) {
	off := false
	base := startServer(t, Config{Pprof: &off})
	if code, _, _ := do(t, "GET", base+"/debug/pprof/", "", ""); code != 404 {
		t.Errorf("pprof off: /debug/pprof/ %d, want 404", code)
	}
	base = startServer(t, Config{Token: "s3cret"})
	for _, p := range []string{"/debug/pprof/", "/api/v1/version"} {
		if code, _, _ := do(t, "GET", base+p, "", ""); code != 401 {
			t.Errorf("no token: %s %d, want 401", p, code)
		}
		if code, _, _ := do(t, "GET", base+p, "s3cret", ""); code != 200 {
			t.Errorf("token: %s %d, want 200", p, code)
		}
	}
	if code, _, _ := do(t, "GET", base+"/metrics", "", ""); code != 200 {
		t.Errorf("/metrics needs no token: %d", code)
	}
}
