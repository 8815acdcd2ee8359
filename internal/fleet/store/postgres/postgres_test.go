package postgres_test

import (
	"context"
	"errors"
	"fmt"
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
	"github.com/outpost-edge/outpost/internal/fleet/store/postgres"
	"github.com/outpost-edge/outpost/internal/fleet/store/postgres/pgtest"
	"github.com/outpost-edge/outpost/internal/fleet/store/storetest"
)

var (
	once sync.Once
	pg   *pgtest.Cluster
)

// database returns an empty database of the test's own on the cluster
// the package's tests share (starting one takes ~2 s). A shared database
// leaked one test's objects into the next test's gateway (desired state
// matches every gateway), which once failed TestDatabaseUnavailable.
func database(t *testing.T) string {
	once.Do(func() { pg = pgtest.StartCluster(&keepAlive{t}) })
	if pg == nil {
		t.Fatal("no PostgreSQL cluster")
	}
	return pg.NewDatabase(t)
}

// keepAlive defers the cluster's cleanup to the end of the process
// (TestMain), not the first test.
type keepAlive struct{ *testing.T }

var cleanups []func()

func (k *keepAlive) Cleanup(f func()) { cleanups = append(cleanups, f) }

func TestMain(m *testing.M) {
	code := m.Run()
	for _, f := range cleanups {
		f()
	}
	os.Exit(code)
}

func open(t *testing.T, url string) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(context.Background(), url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestStore(t *testing.T) {
	ctx := context.Background()
	db := database(t)
	s := open(t, db)
	defer s.Close()
	// A second Open (a second replica) migrates nothing and shares state.
	s2 := open(t, db)
	defer s2.Close()
	ch, stop := s2.Notify()
	defer stop()
	base, _ := s.CurrentRV(ctx)
	o1, err := s.PutObject(ctx, proto.Object{Kind: "ruleset", ID: "a", Name: "a", Spec: []byte(`{"sql":"x"}`)}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if o1.ResourceVersion != base+1 {
		t.Fatalf("rv = %d, want %d", o1.ResourceVersion, base+1)
	}
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("the other replica got no NOTIFY")
	}
	if _, err := s2.PutObject(ctx, proto.Object{Kind: "ruleset", ID: "a", Name: "a", Spec: []byte(`{}`)}, o1.ResourceVersion+7); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale put = %v", err)
	}
	o2, err := s2.PutObject(ctx, proto.Object{Kind: "ruleset", ID: "a", Name: "b", Spec: []byte(`{}`)}, o1.ResourceVersion)
	if err != nil {
		t.Fatal(err)
	}
	evs, err := s.Events(ctx, base, 10)
	if err != nil || len(evs) != 3 || !evs[1].Deleted || evs[1].Name != "a" || evs[2].RV != o2.ResourceVersion {
		t.Fatalf("events = %+v %v", evs, err)
	}
	if err := s.Compact(ctx, o1.ResourceVersion); err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Events(ctx, base, 10); !errors.Is(err, store.ErrCompacted) {
		t.Fatalf("events behind compaction = %v", err)
	}
	now := time.Now()
	s.CreateBootstrapToken(ctx, store.BootstrapToken{ID: "t1", Hash: "h1", Expires: now.Add(time.Hour), Created: now})
	if _, err := s.ConsumeBootstrapToken(ctx, "h1", "gw", now); err != nil {
		t.Fatal(err)
	}
	if _, err := s2.ConsumeBootstrapToken(ctx, "h1", "gw2", now); !errors.Is(err, store.ErrTokenUsed) {
		t.Fatalf("second use through the other replica = %v", err)
	}
	if _, err := s.DeleteObject(ctx, "ruleset", "a", 0); err != nil {
		t.Fatal(err)
	}
	checkGatewayCert(t, s)
}

// checkGatewayCert: a renewal stores serial and expiry with a gateway
// event; a revoked gateway's certificate is not changed.
func checkGatewayCert(t *testing.T, s store.Store) {
	t.Helper()
	ctx := context.Background()
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

// TestMeta: the dashboard's users live in meta (PutMeta, ListMeta by
// prefix, DeleteMeta), shared by replicas.
func TestMeta(t *testing.T) {
	ctx := context.Background()
	db := database(t)
	s := open(t, db)
	defer s.Close()
	s2 := open(t, db)
	defer s2.Close()
	for _, kv := range [][2]string{{"user/a", "1"}, {"user/b", "2"}, {"user/a", "3"}, {"usex", "9"}} {
		if err := s.PutMeta(ctx, kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}
	m, err := s2.ListMeta(ctx, "user/")
	if err != nil || len(m) != 2 || m["user/a"] != "3" || m["user/b"] != "2" {
		t.Fatalf("ListMeta through the other replica = %v, %v", m, err)
	}
	if err := s2.DeleteMeta(ctx, "user/a"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteMeta(ctx, "user/a"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("second delete = %v", err)
	}
}

// TestTwoReplicas: two outpost-server replicas on one database; a gateway
// watching replica B gets a change written through replica A (LISTEN /
// NOTIFY fan-out), and both share the CA and the admin token.
func TestTwoReplicas(t *testing.T) {
	db := database(t)
	sa, sb := open(t, db), open(t, db)
	a := fleettest.StartWith(t, sa, "", server.Options{})
	b := fleettest.StartWith(t, sb, "", server.Options{})
	admin := a.Admin + b.Admin // exactly one replica made it
	if a.Admin != "" && b.Admin != "" {
		t.Fatal("both replicas made an admin token")
	}
	if admin == "" {
		// Made by an earlier test's server on this cluster: make one.
		tok, err := a.CreateAPIToken(context.Background(), "admin", "test")
		if err != nil {
			t.Fatal(err)
		}
		admin = tok
	}
	a.Admin, b.Admin = admin, admin
	if string(a.CA) != string(b.CA) {
		t.Fatal("the replicas have different CAs")
	}
	dir := filepath.Join(t.TempDir(), "fleet")
	if err := client.Enroll(context.Background(), client.EnrollOptions{Server: a.URL, Token: a.Token(t, map[string]string{"site": "x"}, "1h"), CAPEM: a.CA, ID: "gw-pg", Dir: dir}); err != nil {
		t.Fatal(err)
	}
	app := &memApplier{m: map[string]string{}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := client.New(ctx, client.Options{Dir: dir, Server: b.URL, Applier: app})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	fleettest.Eventually(t, 10*time.Second, "connected to replica B", func() bool { return s.State().Connected })
	a.MustDo(t, "PUT", "/api/v1/objects/ruleset/pg", fleettest.RuleSet("v1", nil), 200, nil)
	fleettest.Eventually(t, 10*time.Second, "the change made on A applied through B", func() bool { return app.get("ruleset/pg") != "" })
	var g store.Gateway
	fleettest.Eventually(t, 10*time.Second, "status visible on A", func() bool {
		a.MustDo(t, "GET", "/api/v1/gateways/gw-pg", nil, 200, &g)
		return len(g.Status.Conditions) == 1 && g.Status.Conditions[0].Applied
	})
	// Revoked on A: B closes the stream and refuses.
	a.MustDo(t, "POST", "/api/v1/gateways/gw-pg/revoke", nil, 204, nil)
	fleettest.Eventually(t, 10*time.Second, "B drops the revoked gateway", func() bool {
		st := s.State()
		return !st.Connected && st.Err != nil
	})
}

// TestDatabaseUnavailable: PostgreSQL stops under a running server; the
// gateway keeps its applied state, the API answers 500 without crashing;
// when the database is back, a change made then reaches the gateway (the
// LISTEN connection reconnects) and its status is recorded.
func TestDatabaseUnavailable(t *testing.T) {
	st := open(t, database(t))
	srv := fleettest.StartWith(t, st, "", server.Options{Keepalive: 200 * time.Millisecond})
	if srv.Admin == "" {
		tok, err := srv.CreateAPIToken(context.Background(), "admin", "test")
		if err != nil {
			t.Fatal(err)
		}
		srv.Admin = tok
	}
	dir := filepath.Join(t.TempDir(), "fleet")
	// A gateway id of its own: the cluster outlives one run (-count N).
	id := fmt.Sprintf("gw-down-%d", time.Now().UnixNano())
	if err := client.Enroll(context.Background(), client.EnrollOptions{Server: srv.URL, Token: srv.Token(t, nil, "1h"), CAPEM: srv.CA, ID: id, Dir: dir}); err != nil {
		t.Fatal(err)
	}
	app := &memApplier{m: map[string]string{}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := client.New(ctx, client.Options{Dir: dir, Applier: app, ReconnectMax: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	srv.MustDo(t, "PUT", "/api/v1/objects/ruleset/down1", fleettest.RuleSet("v1", nil), 200, nil)
	fleettest.Eventually(t, 10*time.Second, "down1 applied", func() bool { return app.get("ruleset/down1") != "" })

	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	if code, body := srv.Do(t, srv.Admin, "GET", "/api/v1/gateways", nil); code != 500 || !strings.Contains(string(body), "internal error") {
		t.Fatalf("API with the database down = %d %s", code, body)
	}
	if app.get("ruleset/down1") == "" {
		t.Fatal("the gateway lost its state")
	}
	if err := pg.Start(); err != nil {
		t.Fatal(err)
	}
	fleettest.Eventually(t, 20*time.Second, "the API answers again", func() bool {
		code, _ := srv.Do(t, srv.Admin, "GET", "/api/v1/gateways", nil)
		return code == 200
	})
	srv.MustDo(t, "PUT", "/api/v1/objects/ruleset/down2", fleettest.RuleSet("v2", nil), 200, nil)
	fleettest.Eventually(t, 20*time.Second, "down2 applied after the database came back", func() bool { return app.get("ruleset/down2") != "" })
	// The status the gateway reports after applying down2 reaches the
	// database: both rulesets applied, nothing else (the database is the
	// test's own). Counting conditions alone passed on the stale report.
	var g store.Gateway
	fleettest.Eventually(t, 20*time.Second, "status with down2 applied recorded", func() bool {
		srv.MustDo(t, "GET", "/api/v1/gateways/"+id, nil, 200, &g)
		applied := map[string]bool{}
		for _, c := range g.Status.Conditions {
			applied[c.Kind+"/"+c.Name] = c.Applied
		}
		return len(applied) == 2 && applied["ruleset/down1"] && applied["ruleset/down2"]
	})
}

type memApplier struct {
	mu sync.Mutex
	m  map[string]string
}

func (a *memApplier) Apply(_ context.Context, d proto.Desired) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.m[d.Key()] = string(d.Spec)
	return nil
}

func (a *memApplier) Remove(_ context.Context, kind, name string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.m, kind+"/"+name)
	return nil
}

func (a *memApplier) get(k string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.m[k]
}

// TestTwins: the twin contract on a real PostgreSQL (migration 2).
func TestTwins(t *testing.T) {
	s := open(t, database(t))
	defer s.Close()
	storetest.Twins(t, s)
}
