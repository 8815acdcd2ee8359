package client_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/client"
	"github.com/outpost-edge/outpost/internal/fleet/fleettest"
	"github.com/outpost-edge/outpost/internal/fleet/server"
)

// copyDir copies the flat fleet directory src to a new directory.
func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "fleet")
	if err := os.MkdirAll(dst, 0o700); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// TestCertificateRenewal: with 6 s certificates, the syncer renews at 2/3
// of the lifetime, keeps syncing past the first certificate's expiry, and
// the registry holds the current serial.
func TestCertificateRenewal(t *testing.T) {
	srv := fleettest.Start(t, t.TempDir(), "", server.Options{Keepalive: 200 * time.Millisecond, CertValidity: 6 * time.Second})
	dir := enroll(t, srv, "gw-r", nil)
	first, err := client.LoadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	app := &memApplier{applied: map[string]string{}}
	s, _ := startSyncer(t, dir, app)
	srv.MustDo(t, "PUT", "/api/v1/objects/ruleset/a", fleettest.RuleSet("A", nil), 200, nil)
	fleettest.Eventually(t, 5*time.Second, "a applied", func() bool { return app.get("ruleset/a") != "" })

	seen := map[string]bool{first.Serial(): true}
	fleettest.Eventually(t, 30*time.Second, "two renewals, past the first certificate's expiry", func() bool {
		seen[s.Identity().Serial()] = true
		return len(seen) >= 3 && time.Now().After(first.NotAfter())
	})
	srv.MustDo(t, "PUT", "/api/v1/objects/ruleset/b", fleettest.RuleSet("B", nil), 200, nil)
	fleettest.Eventually(t, 5*time.Second, "b applied with a renewed certificate", func() bool { return app.get("ruleset/b") != "" })
	fleettest.Eventually(t, 5*time.Second, "the registry holds the current certificate and the status", func() bool {
		g := gateway(t, srv, "gw-r")
		_, ok := condition(g, "ruleset/b")
		return ok && g.CertSerial == s.Identity().Serial()
	})
	if s.State().RenewErr != nil {
		t.Fatalf("renew error: %v", s.State().RenewErr)
	}
	for _, f := range []string{"renew-key.pem", "renewed.pem"} {
		if _, err := os.Stat(filepath.Join(dir, f)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s left behind: %v", f, err)
		}
	}
}

// TestRenewLostAnswerAndRevoked: a renewal whose answer was lost is asked
// again with the same key from the superseded certificate and gets the same
// serial; a superseded certificate with another key is refused; a revoked
// gateway cannot renew.
func TestRenewLostAnswerAndRevoked(t *testing.T) {
	srv := fleettest.Start(t, t.TempDir(), "", server.Options{Keepalive: time.Hour})
	ctx := context.Background()
	dir := enroll(t, srv, "gw-l", nil)
	old := copyDir(t, dir)   // the state before the renewal: old certificate and key
	other := copyDir(t, dir) // the same, for a different new key
	id0, err := client.LoadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	id1, err := client.Renew(ctx, dir, id0, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if id1.Serial() == id0.Serial() || gateway(t, srv, "gw-l").CertSerial != id1.Serial() {
		t.Fatalf("serials: old %s new %s registry %s", id0.Serial(), id1.Serial(), gateway(t, srv, "gw-l").CertSerial)
	}
	// The answer "was lost": old holds the old pair and the pending new key.
	key, err := os.ReadFile(filepath.Join(dir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(old, "renew-key.pem"), key, 0o600); err != nil {
		t.Fatal(err)
	}
	idOld, err := client.LoadIdentity(old)
	if err != nil {
		t.Fatal(err)
	}
	again, err := client.Renew(ctx, old, idOld, srv.URL)
	if err != nil {
		t.Fatalf("renewal retried with the same key: %v", err)
	}
	if again.Serial() != id1.Serial() {
		t.Fatalf("retried renewal serial %s, want %s", again.Serial(), id1.Serial())
	}
	// The superseded certificate with another key: refused.
	idOther, err := client.LoadIdentity(other)
	if err != nil {
		t.Fatal(err)
	}
	var se *client.StatusError
	if _, err := client.Renew(ctx, other, idOther, srv.URL); !errors.As(err, &se) || se.Code != 401 {
		t.Fatalf("renewal from a superseded certificate with a new key = %v, want 401", err)
	}
	// Revoked: refused, the registry keeps the serial.
	srv.MustDo(t, "POST", "/api/v1/gateways/gw-l/revoke", nil, 204, nil)
	if _, err := client.Renew(ctx, dir, id1, srv.URL); !errors.As(err, &se) || se.Code != 403 {
		t.Fatalf("renewal of a revoked gateway = %v, want 403", err)
	}
	if g := gateway(t, srv, "gw-l"); g.CertSerial != id1.Serial() || !g.Revoked {
		t.Fatalf("after a refused renewal: %+v", g)
	}
	if srv.Refused("revoked") == 0 || srv.Refused("superseded_certificate") == 0 {
		t.Fatalf("refusals not counted: revoked %d superseded %d", srv.Refused("revoked"), srv.Refused("superseded_certificate"))
	}
}
