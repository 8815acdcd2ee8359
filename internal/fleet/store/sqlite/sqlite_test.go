package sqlite

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/proto"
	"github.com/outpost-edge/outpost/internal/fleet/store"
	"github.com/outpost-edge/outpost/internal/fleet/store/storetest"
)

func TestMigrationsEventsAndCompaction(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	var mode string
	s.db.QueryRow(`PRAGMA journal_mode`).Scan(&mode)
	if mode != "wal" {
		t.Fatalf("journal_mode = %s", mode)
	}
	ch, stop := s.Notify()
	defer stop()
	o1, err := s.PutObject(ctx, proto.Object{Kind: "ruleset", ID: "a", Name: "a", Spec: []byte(`{"sql":"x"}`)}, 0)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	case <-time.After(time.Second):
		t.Fatal("no change notification")
	}
	o2, _ := s.PutObject(ctx, proto.Object{Kind: "ruleset", ID: "a", Name: "b", Spec: []byte(`{"sql":"y"}`)}, o1.ResourceVersion)
	if o2.ResourceVersion <= o1.ResourceVersion {
		t.Fatalf("rv %d after %d", o2.ResourceVersion, o1.ResourceVersion)
	}
	evs, err := s.Events(ctx, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	// Renaming the slot logs the old slot's removal, then the new slot.
	if len(evs) != 3 || !evs[1].Deleted || evs[1].Name != "a" || evs[2].Name != "b" || evs[2].RV != o2.ResourceVersion {
		t.Fatalf("events = %+v", evs)
	}
	if _, err := s.PutObject(ctx, proto.Object{Kind: "ruleset", ID: "a", Name: "b", Spec: []byte(`{}`)}, o1.ResourceVersion); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale put = %v", err)
	}
	if err := s.Compact(ctx, o2.ResourceVersion); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Events(ctx, 1, 10); !errors.Is(err, store.ErrCompacted) {
		t.Fatalf("events behind compaction = %v", err)
	}
	if rv, _ := s.CurrentRV(ctx); rv != o2.ResourceVersion {
		t.Fatalf("current rv after compaction = %d", rv)
	}
	s.Close()

	// Reopen: migrations are not applied twice; rvs continue.
	s, err = Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var n int
	s.db.QueryRow(`SELECT COUNT(*) FROM schema_migrations`).Scan(&n)
	if n != SchemaVersion() {
		t.Fatalf("%d migrations recorded, want %d", n, SchemaVersion())
	}
	o3, _ := s.PutObject(ctx, proto.Object{Kind: "ruleset", ID: "c", Name: "c", Spec: []byte(`{}`)}, 0)
	if o3.ResourceVersion != o2.ResourceVersion+1 {
		t.Fatalf("rv after reopen = %d, want %d", o3.ResourceVersion, o2.ResourceVersion+1)
	}
	// A database from a newer build is refused.
	s.db.Exec(`INSERT INTO schema_migrations (version, applied) VALUES (999, 0)`)
	s.Close()
	if _, err := Open(ctx, dir); err == nil {
		t.Fatal("a newer schema was accepted")
	}
}

func TestBootstrapTokenSingleUse(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	now := time.Now()
	s.CreateBootstrapToken(ctx, store.BootstrapToken{ID: "t1", Hash: "h1", Expires: now.Add(time.Hour), Created: now})
	if _, err := s.ConsumeBootstrapToken(ctx, "h1", "gw", now); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ConsumeBootstrapToken(ctx, "h1", "gw2", now); !errors.Is(err, store.ErrTokenUsed) {
		t.Fatalf("second use = %v", err)
	}
	s.CreateBootstrapToken(ctx, store.BootstrapToken{ID: "t2", Hash: "h2", Expires: now.Add(time.Minute), Created: now})
	if _, err := s.ConsumeBootstrapToken(ctx, "h2", "gw", now.Add(time.Minute)); !errors.Is(err, store.ErrTokenExpired) {
		t.Fatalf("expired = %v", err)
	}
	if _, err := s.ConsumeBootstrapToken(ctx, "nope", "gw", now); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("unknown = %v", err)
	}
}

// TestTwins: desired patches are versioned (ErrConflict on a stale
// version) and logged as twin events; reported batches apply in version
// order and skip replays; deleting the gateway deletes its twins.
func TestTwins(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	storetest.Twins(t, s)
}

// TestSetGatewayCert: a renewal stores serial and expiry with a gateway
// event; a revoked gateway's certificate is not changed.
func TestSetGatewayCert(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	now := time.Now().UTC().Truncate(time.Millisecond)
	if err := s.CreateGateway(ctx, store.Gateway{ID: "gw-c", Labels: map[string]string{}, CertSerial: "1", CertExpiry: now, Enrolled: now}); err != nil {
		t.Fatal(err)
	}
	rv, err := s.SetGatewayCert(ctx, "gw-c", "2", now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	evs, err := s.Events(ctx, rv-1, 1)
	if err != nil || len(evs) != 1 || evs[0].Kind != store.KindGateway || evs[0].ID != "gw-c" {
		t.Fatalf("event of the renewal = %+v %v", evs, err)
	}
	if g, err := s.GetGateway(ctx, "gw-c"); err != nil || g.CertSerial != "2" || !g.CertExpiry.Equal(now.Add(time.Hour)) {
		t.Fatalf("after renewal: %+v %v", g, err)
	}
	if err := s.RevokeGateway(ctx, "gw-c"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetGatewayCert(ctx, "gw-c", "3", now); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("renewal of a revoked gateway = %v, want ErrNotFound", err)
	}
	if _, err := s.SetGatewayCert(ctx, "nope", "3", now); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("renewal of an unknown gateway = %v, want ErrNotFound", err)
	}
}

func TestMeta(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, kv := range [][2]string{{"user/a", "1"}, {"user/b", "2"}, {"user/a", "3"}, {"usex", "9"}} {
		if err := s.PutMeta(ctx, kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}
	m, err := s.ListMeta(ctx, "user/")
	if err != nil || len(m) != 2 || m["user/a"] != "3" || m["user/b"] != "2" {
		t.Fatalf("ListMeta = %v, %v", m, err)
	}
	if err := s.DeleteMeta(ctx, "user/a"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteMeta(ctx, "user/a"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("second delete = %v", err)
	}
	if _, err := s.GetMeta(ctx, "user/a"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get deleted = %v", err)
	}
}
