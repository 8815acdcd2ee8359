package client_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/client"
	"github.com/outpost-edge/outpost/internal/fleet/fleettest"
	"github.com/outpost-edge/outpost/internal/fleet/proto"
	"github.com/outpost-edge/outpost/internal/fleet/server"
	"github.com/outpost-edge/outpost/internal/fleet/store"
)

// memApplier records what the syncer applies; objects whose spec contains
// "BROKEN" fail validation.
type memApplier struct {
	mu      sync.Mutex
	applied map[string]string // slot -> spec
	applies int
}

func (m *memApplier) Apply(_ context.Context, d proto.Desired) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if strings.Contains(string(d.Spec), "BROKEN") {
		return fmt.Errorf("%s.sql:1:8: syntax error near BROKEN", d.Name)
	}
	m.applied[d.Key()] = string(d.Spec)
	m.applies++
	return nil
}

func (m *memApplier) Remove(_ context.Context, kind, name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.applied, kind+"/"+name)
	return nil
}

func (m *memApplier) get(key string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.applied[key]
}

func enroll(t *testing.T, srv *fleettest.Server, id string, labels map[string]string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "fleet")
	tok := srv.Token(t, labels, "1h")
	if err := client.Enroll(context.Background(), client.EnrollOptions{Server: srv.URL, Token: tok, CAPEM: srv.CA, ID: id, Dir: dir}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"key.pem", "cert.pem", "ca.pem", "server.json"} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v, want mode 0600", f, fi.Mode(), err)
		}
	}
	return dir
}

func startSyncer(t *testing.T, dir string, app client.Applier) (*client.Syncer, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s, err := client.New(ctx, client.Options{Dir: dir, Applier: app, ReconnectMax: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(tw{t}, nil)),
		Facts:  func() map[string]string { return map[string]string{"arch": "amd64"} }})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return s, stop
}

type tw struct{ t *testing.T }

func (w tw) Write(p []byte) (int, error) { w.t.Log(strings.TrimSpace(string(p))); return len(p), nil }

func gateway(t *testing.T, srv *fleettest.Server, id string) store.Gateway {
	var g store.Gateway
	srv.MustDo(t, "GET", "/api/v1/gateways/"+id, nil, 200, &g)
	return g
}

func condition(g store.Gateway, key string) (proto.Condition, bool) {
	for _, c := range g.Status.Conditions {
		if c.Kind+"/"+c.Name == key {
			return c, true
		}
	}
	return proto.Condition{}, false
}

func TestSyncLayersAndStatus(t *testing.T) {
	srv := fleettest.Start(t, t.TempDir(), "", server.Options{})
	dirA := enroll(t, srv, "gw-a", map[string]string{"site": "plant2", "line": "3"})
	dirB := enroll(t, srv, "gw-b", map[string]string{"site": "plant1"})
	appA, appB := &memApplier{applied: map[string]string{}}, &memApplier{applied: map[string]string{}}
	startSyncer(t, dirA, appA)
	startSyncer(t, dirB, appB)

	// Fleet default, a selector group and one gateway fill the slot "hot".
	srv.MustDo(t, "PUT", "/api/v1/objects/ruleset/hot-default", map[string]any{"name": "hot", "spec": map[string]string{"sql": "default"}}, 200, nil)
	defer func() {
		if t.Failed() {
			t.Log(srv.Logs.String())
		}
	}()
	fleettest.Eventually(t, 5*time.Second, "both gateways get the fleet default", func() bool {
		return appA.get("ruleset/hot") == `{"sql":"default"}` && appB.get("ruleset/hot") == `{"sql":"default"}`
	})
	srv.MustDo(t, "PUT", "/api/v1/objects/ruleset/hot-plant2", map[string]any{"name": "hot", "target": map[string]any{"selector": "site=plant2"}, "spec": map[string]string{"sql": "plant2"}}, 200, nil)
	fleettest.Eventually(t, 5*time.Second, "gw-a gets the plant2 group's version", func() bool { return appA.get("ruleset/hot") == `{"sql":"plant2"}` })
	srv.MustDo(t, "PUT", "/api/v1/objects/ruleset/hot-b", map[string]any{"name": "hot", "target": map[string]any{"gateway": "gw-b"}, "spec": map[string]string{"sql": "only-b"}}, 200, nil)
	fleettest.Eventually(t, 5*time.Second, "gw-b gets its own version", func() bool { return appB.get("ruleset/hot") == `{"sql":"only-b"}` })
	if got := appA.get("ruleset/hot"); got != `{"sql":"plant2"}` {
		t.Fatalf("gw-a has %s", got)
	}

	// Status comes back with the applied resourceVersion.
	var obj proto.Object
	srv.MustDo(t, "GET", "/api/v1/objects/ruleset/hot-plant2", nil, 200, &obj)
	fleettest.Eventually(t, 5*time.Second, "gw-a reports the applied object", func() bool {
		g := gateway(t, srv, "gw-a")
		c, ok := condition(g, "ruleset/hot")
		return ok && c.Applied && c.ResourceVersion == obj.ResourceVersion && g.Status.AppliedResourceVersion >= obj.ResourceVersion &&
			g.Facts["arch"] == "amd64" && g.Connected
	})

	// Relabel gw-a out of plant2: back to the fleet default.
	srv.MustDo(t, "POST", "/api/v1/gateways/gw-a/labels", server.LabelChange{Set: map[string]string{"site": "plant9"}}, 200, nil)
	fleettest.Eventually(t, 5*time.Second, "gw-a falls back to the default", func() bool { return appA.get("ruleset/hot") == `{"sql":"default"}` })

	// A selector list for gateways.
	var gws []store.Gateway
	srv.MustDo(t, "GET", "/api/v1/gateways?selector=site+in+(plant1,plant9),line", nil, 200, &gws)
	if len(gws) != 1 || gws[0].ID != "gw-a" {
		t.Fatalf("selector list = %+v", gws)
	}

	// A broken object is reported with its error; the running one stays.
	srv.MustDo(t, "PUT", "/api/v1/objects/ruleset/hot-default", map[string]any{"name": "hot", "spec": map[string]string{"sql": "BROKEN"}}, 200, nil)
	fleettest.Eventually(t, 5*time.Second, "gw-a reports the error", func() bool {
		c, ok := condition(gateway(t, srv, "gw-a"), "ruleset/hot")
		return ok && !c.Applied && strings.Contains(c.Error, "hot.sql:1:8: syntax error near BROKEN")
	})
	if got := appA.get("ruleset/hot"); got != `{"sql":"default"}` {
		t.Fatalf("a failed apply changed the running object: %s", got)
	}
	if g := gateway(t, srv, "gw-a"); g.Status.Health != "degraded" {
		t.Fatalf("health = %q", g.Status.Health)
	}

	// Deleting the default removes the slot on gw-a only.
	srv.MustDo(t, "DELETE", "/api/v1/objects/ruleset/hot-default", nil, 200, nil)
	srv.MustDo(t, "PUT", "/api/v1/objects/ruleset/other", map[string]any{"spec": map[string]string{"sql": "x"}}, 200, nil)
	fleettest.Eventually(t, 5*time.Second, "the slot is removed on gw-a", func() bool {
		return appA.get("ruleset/hot") == "" && appA.get("ruleset/other") != ""
	})
	if got := appB.get("ruleset/hot"); got != `{"sql":"only-b"}` {
		t.Fatalf("gw-b lost its own object: %s", got)
	}
}

// TestResumeOfflineAndCompaction: a gateway restarted without a server runs
// from its cache; reconnected, it resumes from its resourceVersion without
// a list; compacted, it lists again.
func TestResumeOfflineAndCompaction(t *testing.T) {
	sdir := t.TempDir()
	srv := fleettest.Start(t, sdir, "", server.Options{Keepalive: 100 * time.Millisecond})
	dir := enroll(t, srv, "gw-r", nil)
	app := &memApplier{applied: map[string]string{}}
	_, stop := startSyncer(t, dir, app)
	srv.MustDo(t, "PUT", "/api/v1/objects/ruleset/r1", map[string]any{"spec": map[string]string{"sql": "v1"}}, 200, nil)
	fleettest.Eventually(t, 5*time.Second, "r1 applied", func() bool { return app.get("ruleset/r1") != "" })
	stop()
	addr := strings.TrimPrefix(srv.URL, "https://")
	srv.Stop()

	// Reboot without network: the cache is applied by a fresh applier.
	app2 := &memApplier{applied: map[string]string{}}
	if _, err := client.New(context.Background(), client.Options{Dir: dir, Applier: app2}); err != nil {
		t.Fatal(err)
	}
	// The cache says r1 is applied (its rule file is on disk already), so
	// a new process does not apply it twice; a fresh cache would.
	if app2.applies != 0 {
		t.Fatalf("offline start re-applied %d objects that were applied", app2.applies)
	}
	var c struct {
		ResourceVersion int64                    `json:"resourceVersion"`
		Desired         map[string]proto.Desired `json:"desired"`
	}
	b, _ := os.ReadFile(filepath.Join(dir, "cache.json"))
	if err := json.Unmarshal(b, &c); err != nil || c.Desired["ruleset/r1"].Spec == nil || c.ResourceVersion == 0 {
		t.Fatalf("cache = %s (%v)", b, err)
	}

	// The server comes back on the same address with the same data.
	admin := srv.Admin
	srv = fleettest.Start(t, sdir, addr, server.Options{Keepalive: 100 * time.Millisecond})
	if srv.Admin != "" {
		t.Fatal("a restarted server made a second admin token")
	}
	srv.Admin = admin
	srv.MustDo(t, "PUT", "/api/v1/objects/ruleset/r2", map[string]any{"spec": map[string]string{"sql": "v2"}}, 200, nil)
	_, stop = startSyncer(t, dir, app)
	fleettest.Eventually(t, 5*time.Second, "r2 applied after the restart", func() bool { return app.get("ruleset/r2") != "" })
	if n := app.applies; n != 2 {
		t.Fatalf("applies = %d, want 2 (r1 once, r2 once: nothing applied twice)", n)
	}
	stop()

	// Compact past the gateway's resume point: it lists again.
	srv.MustDo(t, "PUT", "/api/v1/objects/ruleset/r3", map[string]any{"spec": map[string]string{"sql": "v3"}}, 200, nil)
	srv.MustDo(t, "DELETE", "/api/v1/objects/ruleset/r1", nil, 200, nil)
	rv, _ := srv.Store.CurrentRV(context.Background())
	if err := srv.Compact(context.Background(), rv); err != nil {
		t.Fatal(err)
	}
	_, stop = startSyncer(t, dir, app)
	defer stop()
	fleettest.Eventually(t, 5*time.Second, "the re-list applies r3 and removes r1", func() bool {
		return app.get("ruleset/r3") != "" && app.get("ruleset/r1") == ""
	})
}

func TestEnrollRefused(t *testing.T) {
	now := time.Now()
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	srv := fleettest.Start(t, t.TempDir(), "", server.Options{Now: clock})
	ctx := context.Background()
	opts := func(tok, id string) client.EnrollOptions {
		return client.EnrollOptions{Server: srv.URL, Token: tok, CAPEM: srv.CA, ID: id, Dir: filepath.Join(t.TempDir(), "f")}
	}
	tok := srv.Token(t, nil, "1h")
	if err := client.Enroll(ctx, opts(tok, "gw-1")); err != nil {
		t.Fatal(err)
	}
	expired := srv.Token(t, nil, "1m")
	mu.Lock()
	now = now.Add(2 * time.Minute)
	mu.Unlock()
	tests := []struct {
		name, token, reason, msg string
	}{
		{"reused", tok, "token_used", "already used"},
		{"expired", expired, "token_expired", "expired"},
		{"forged", "opb_" + strings.Repeat("A", 32), "token_invalid", "invalid bootstrap token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := srv.Refused(tt.reason)
			err := client.Enroll(ctx, opts(tt.token, "gw-"+tt.name))
			var se *client.StatusError
			if !errors.As(err, &se) || se.Code != 401 || !strings.Contains(se.Msg, tt.msg) {
				t.Fatalf("enroll = %v, want 401 %q", err, tt.msg)
			}
			if srv.Refused(tt.reason) != before+1 {
				t.Fatalf("refusal %s not counted", tt.reason)
			}
			if strings.Contains(srv.Logs.String(), tt.token) {
				t.Fatal("the token was logged")
			}
		})
	}
	// The expired token's gateway was not registered.
	if code, _ := srv.Do(t, srv.Admin, "GET", "/api/v1/gateways/gw-expired", nil); code != 404 {
		t.Fatalf("gw-expired registered: %d", code)
	}
}

func TestRevokeAndForeignCertificates(t *testing.T) {
	srv := fleettest.Start(t, t.TempDir(), "", server.Options{Keepalive: time.Hour})
	dir := enroll(t, srv, "gw-x", nil)
	id, err := client.LoadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	hc := id.HTTPClient()

	// An open watch stream, over HTTP/2.
	resp, err := hc.Get(srv.URL + "/api/v1/agent/watch?resourceVersion=0")
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
		t.Fatalf("watch: %d %s", resp.StatusCode, resp.Proto)
	}
	closed := make(chan error, 1)
	go func() {
		buf := make([]byte, 4096)
		for {
			if _, err := resp.Body.Read(buf); err != nil {
				closed <- err
				return
			}
		}
	}()
	srv.MustDo(t, "POST", "/api/v1/gateways/gw-x/revoke", nil, 204, nil)
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the open watch stream of a revoked gateway stayed open")
	}
	r2, err := hc.Get(srv.URL + "/api/v1/agent/desired")
	if err != nil {
		t.Fatal(err)
	}
	r2.Body.Close()
	if r2.StatusCode != 403 || srv.Refused("revoked") != 1 {
		t.Fatalf("request after revoke = %d, refused = %d", r2.StatusCode, srv.Refused("revoked"))
	}

	// A client certificate from another CA, same CommonName.
	other := selfSignedClient(t, "gw-x")
	foreign := &http.Client{Transport: &http.Transport{ForceAttemptHTTP2: true, TLSClientConfig: &tls.Config{
		RootCAs: srv.HC.Transport.(*http.Transport).TLSClientConfig.RootCAs, Certificates: []tls.Certificate{other}}}}
	r3, err := foreign.Get(srv.URL + "/api/v1/agent/desired")
	if err != nil {
		t.Fatal(err)
	}
	r3.Body.Close()
	if r3.StatusCode != 401 || srv.Refused("bad_certificate") != 1 {
		t.Fatalf("foreign certificate = %d, refused = %d", r3.StatusCode, srv.Refused("bad_certificate"))
	}
	// No certificate at all.
	r4, err := srv.HC.Get(srv.URL + "/api/v1/agent/desired")
	if err != nil {
		t.Fatal(err)
	}
	r4.Body.Close()
	if r4.StatusCode != 401 || srv.Refused("no_certificate") != 1 {
		t.Fatalf("no certificate = %d", r4.StatusCode)
	}
}

func selfSignedClient(t *testing.T, cn string) tls.Certificate {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
