// Package fleettest starts a real outpost-server (SQLite store, TLS,
// HTTP/2 on a loopback port) for tests and gives an admin API client.
package fleettest

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/server"
	"github.com/outpost-edge/outpost/internal/fleet/store"
	"github.com/outpost-edge/outpost/internal/fleet/store/sqlite"
)

// Server is a running test server.
type Server struct {
	*server.Server
	URL   string
	Admin string // admin token
	CA    []byte
	Logs  *SyncBuffer
	HC    *http.Client
	Store *sqlite.Store
	stop  func()
}

// SyncBuffer is a goroutine-safe log buffer.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Start runs a server on a SQLite store in dir (on addr, "" =
// 127.0.0.1:0) until the test ends or Stop. opt's Store and Logger are
// filled in. setup runs before the server serves (e.g. to mount the
// dashboard).
func Start(t testing.TB, dir, addr string, opt server.Options, setup ...func(*server.Server)) *Server {
	t.Helper()
	st, err := sqlite.Open(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	s := StartWith(t, st, addr, opt, setup...)
	s.Store = st
	return s
}

// StartWith runs a server on st (closed when the server stops).
func StartWith(t testing.TB, st store.Store, addr string, opt server.Options, setup ...func(*server.Server)) *Server {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	logs := &SyncBuffer{}
	opt.Store = st
	opt.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, admin, err := server.Open(ctx, opt)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range setup {
		f(srv)
	}
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ctx, ln) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done; st.Close() }) }
	t.Cleanup(stop)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(srv.CACertPEM())
	return &Server{Server: srv, URL: "https://" + ln.Addr().String(), Admin: admin, CA: srv.CACertPEM(), Logs: logs, stop: stop,
		HC: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}}
}

// Stop stops the server (its streams close) and closes the store.
func (s *Server) Stop() { s.stop() }

// Do calls the API with token; body may be nil, a []byte or a value to
// marshal. It returns the status code and the body.
func (s *Server) Do(t testing.TB, token, method, path string, body any) (int, []byte) {
	t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		r = bytes.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		r = bytes.NewReader(j)
	}
	req, _ := http.NewRequest(method, s.URL+path, r)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := s.HC.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

// MustDo is Do with the admin token that fails the test unless the status
// is want; it decodes the body into v when v is not nil.
func (s *Server) MustDo(t testing.TB, method, path string, body any, want int, v any) {
	t.Helper()
	code, out := s.Do(t, s.Admin, method, path, body)
	if code != want {
		t.Fatalf("%s %s = %d %s, want %d", method, path, code, out, want)
	}
	if v != nil {
		if err := json.Unmarshal(out, v); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, out)
		}
	}
}

// Token creates a bootstrap token with labels and expiry ("" = 24h).
func (s *Server) Token(t testing.TB, labels map[string]string, expires string) string {
	t.Helper()
	var resp server.TokenResponse
	s.MustDo(t, "POST", "/api/v1/tokens", server.TokenRequest{Labels: labels, Expires: expires}, 201, &resp)
	return resp.Token
}

// Eventually polls cond every 10ms until it returns true or d passes.
func Eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// RuleSet returns an object body for a rule set.
func RuleSet(sql string, target map[string]any) map[string]any {
	b := map[string]any{"spec": map[string]string{"sql": sql}}
	if target != nil {
		b["target"] = target
	}
	return b
}
