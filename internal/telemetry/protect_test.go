package telemetry

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
)

// Issue 10: the update API needed no token unless telemetry.token was set.
// Protected prefixes are refused over TCP without a token, served with it,
// and served on the 0600 unix socket without one.
func TestProtectedRoutesNeedTokenOrSocket(t *testing.T) {
	update := func(m *http.ServeMux) {
		m.HandleFunc("POST /api/v1/update/apply", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "applied") })
		m.HandleFunc("GET /api/v1/other", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "other") })
	}
	start := func(cfg Config) *Server {
		cfg.Address = "127.0.0.1:0"
		cfg.SetDefaults()
		s := New(Options{Routes: []func(*http.ServeMux){update}, Protected: []string{"/api/v1/update/"}})
		if err := s.Init(context.Background(), &cfg); err != nil {
			t.Fatal(err)
		}
		if err := s.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Stop(context.Background()) })
		return s
	}
	// No token, no socket: refused, other APIs unchanged.
	s := start(Config{})
	if code, _, body := do(t, "POST", "http://"+s.Addr()+"/api/v1/update/apply", "", ""); code != http.StatusForbidden {
		t.Fatalf("update API without a token: %d %s", code, body)
	}
	if code, _, _ := do(t, "GET", "http://"+s.Addr()+"/api/v1/other", "", ""); code != 200 {
		t.Fatalf("other API: %d", code)
	}
	// With a token: only with it.
	sock := filepath.Join(t.TempDir(), "run", "api.sock")
	s = start(Config{Token: "s3cret", Socket: sock})
	if code, _, _ := do(t, "POST", "http://"+s.Addr()+"/api/v1/update/apply", "", ""); code != http.StatusUnauthorized {
		t.Fatalf("no token: %d", code)
	}
	if code, _, body := do(t, "POST", "http://"+s.Addr()+"/api/v1/update/apply", "s3cret", ""); code != 200 || body != "applied" {
		t.Fatalf("with token: %d %s", code, body)
	}
	// On the socket: no token needed; the socket is 0600.
	st, err := os.Stat(sock)
	if err != nil || st.Mode().Perm() != 0o600 || st.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket %v %v", st.Mode(), err)
	}
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := c.Post("http://agent/api/v1/update/apply", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "applied" {
		t.Fatalf("socket: %d %s", resp.StatusCode, b)
	}
	// A stale socket is replaced at the next start; another file is not.
	s.Stop(context.Background())
	s2 := start(Config{Token: "s3cret", Socket: sock})
	_ = s2
	other := filepath.Join(t.TempDir(), "file")
	os.WriteFile(other, []byte("x"), 0o644)
	cfg := Config{Address: "127.0.0.1:0", Socket: other}
	s3 := New(Options{})
	s3.Init(context.Background(), &cfg)
	if err := s3.Start(context.Background()); err == nil {
		s3.Stop(context.Background())
		t.Fatal("a regular file was replaced by the socket")
	}
}
