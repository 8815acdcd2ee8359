package postgres_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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

func TestRolloutStore(t *testing.T) {
	ctx := context.Background()
	db := database(t)
	s, s2 := open(t, db), open(t, db)
	defer s.Close()
	defer s2.Close()
	o, err := s.PutObject(ctx, proto.Object{Kind: "ruleset", ID: "a", Name: "a", Spec: []byte(`{"sql":"v1"}`)}, 0)
	if err != nil {
		t.Fatal(err)
	}
	next := o
	next.Spec = []byte(`{"sql":"v2"}`)
	var objRV int64
	r, err := s.PutRollout(ctx, store.Rollout{Name: "r", Kind: "ruleset", ObjectID: "a", Slot: "ruleset/a"}, -1, &next,
		func(rv int64) (json.RawMessage, error) {
			objRV = rv
			return json.RawMessage(fmt.Sprintf(`{"to":%d}`, rv)), nil
		})
	if err != nil {
		t.Fatal(err)
	}
	// The rollout's event comes before the object's: a watcher never sees
	// the new revision without the rollout holding it back.
	if objRV != r.ResourceVersion+1 {
		t.Fatalf("object rv %d, rollout rv %d", objRV, r.ResourceVersion)
	}
	if _, err := s2.PutRollout(ctx, store.Rollout{Name: "r"}, -1, nil, func(int64) (json.RawMessage, error) { return []byte(`{}`), nil }); !errors.Is(err, store.ErrExists) {
		t.Fatalf("create twice = %v", err)
	}
	if _, err := s2.PutRollout(ctx, store.Rollout{Name: "r"}, r.ResourceVersion-1, nil, func(int64) (json.RawMessage, error) { return []byte(`{}`), nil }); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale update = %v", err)
	}
	// A stale object expectation writes nothing, not even the rollout.
	stale := next
	stale.ResourceVersion = o.ResourceVersion
	if _, err := s2.PutRollout(ctx, store.Rollout{Name: "r2", Kind: "ruleset", ObjectID: "a", Slot: "ruleset/a"}, -1, &stale,
		func(int64) (json.RawMessage, error) { return []byte(`{}`), nil }); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale object = %v", err)
	}
	if _, err := s.GetRollout(ctx, "r2"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("r2 = %v", err)
	}
	got, err := s2.GetRollout(ctx, "r")
	if err != nil || string(got.Doc) != fmt.Sprintf(`{"to":%d}`, objRV) || got.ResourceVersion != r.ResourceVersion {
		t.Fatalf("get = %+v %v", got, err)
	}
	rev, err := s2.GetObjectRevision(ctx, "ruleset", "a", o.ResourceVersion)
	if err != nil || string(rev.Spec) != `{"sql":"v1"}` {
		t.Fatalf("revision = %+v %v", rev, err)
	}
	// The singleton lock: one holder across replicas.
	rel, ok, err := s.TryLock(ctx, 42)
	if err != nil || !ok {
		t.Fatalf("lock = %v %v", ok, err)
	}
	if _, ok, err := s2.TryLock(ctx, 42); err != nil || ok {
		t.Fatalf("second holder = %v %v", ok, err)
	}
	rel()
	rel2, ok, err := s2.TryLock(ctx, 42)
	if err != nil || !ok {
		t.Fatalf("after release = %v %v", ok, err)
	}
	rel2()
}

// pgGateway fails rule sets containing BROKEN and remembers every spec.
type pgGateway struct {
	mu      sync.Mutex
	seen    map[string]int
	current string
}

func (g *pgGateway) Apply(_ context.Context, d proto.Desired) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.seen[string(d.Spec)]++
	if strings.Contains(string(d.Spec), "BROKEN") {
		return fmt.Errorf("fleet-%s.sql:1:1: syntax error", d.Name)
	}
	g.current = string(d.Spec)
	return nil
}

func (g *pgGateway) Remove(context.Context, string, string) error { return nil }

func (g *pgGateway) state() (string, map[string]int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	seen := map[string]int{}
	for k, v := range g.seen {
		seen[k] = v
	}
	return g.current, seen
}

// Two replicas on PostgreSQL: one runs the rollouts (advisory lock); a
// rollout made on either, with gateways on both, halts on the failing
// canary and rolls back; when the running replica stops, the other takes
// over and the next rollout completes.
func TestRolloutTwoReplicas(t *testing.T) {
	db := database(t)
	a := fleettest.StartWith(t, open(t, db), "", server.Options{RolloutTick: 20 * time.Millisecond})
	b := fleettest.StartWith(t, open(t, db), "", server.Options{RolloutTick: 20 * time.Millisecond})
	admin := a.Admin + b.Admin
	a.Admin, b.Admin = admin, admin
	defer func() {
		if t.Failed() {
			t.Log("A:\n" + a.Logs.String() + "\nB:\n" + b.Logs.String())
		}
	}()
	gws := map[string]*pgGateway{}
	for i, id := range []string{"gw-canary", "gw-1", "gw-2"} {
		labels := map[string]string{"app": "x", "on": "a"}
		if i == 0 {
			labels["ring"] = "canary"
		}
		if i%2 == 0 {
			labels["on"] = "b"
		}
		dir := filepath.Join(t.TempDir(), id)
		if err := client.Enroll(context.Background(), client.EnrollOptions{Server: a.URL, Token: a.Token(t, labels, "1h"), CAPEM: a.CA, ID: id, Dir: dir}); err != nil {
			t.Fatal(err)
		}
		srvURL := a.URL
		if i%2 == 0 {
			srvURL = b.URL
		}
		g := &pgGateway{seen: map[string]int{}}
		gws[id] = g
		ctx, cancel := context.WithCancel(context.Background())
		s, err := client.New(ctx, client.Options{Dir: dir, Server: srvURL, Applier: g, ReconnectMax: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { defer close(done); s.Run(ctx) }()
		defer func() { cancel(); <-done }()
	}
	spec := func(sql string) string { b, _ := json.Marshal(map[string]string{"sql": sql}); return string(b) }
	waitAll := func(want string) {
		t.Helper()
		fleettest.Eventually(t, 15*time.Second, "every gateway runs "+want, func() bool {
			for _, g := range gws {
				if cur, _ := g.state(); cur != want {
					return false
				}
			}
			return true
		})
	}
	a.MustDo(t, "PUT", "/api/v1/objects/ruleset/filter", map[string]any{"spec": map[string]string{"sql": "v1"}}, 200, nil)
	waitAll(spec("v1"))
	body := func(name, sql string) map[string]any {
		return map[string]any{"name": name, "object": map[string]string{"kind": "ruleset", "name": "filter"}, "spec": map[string]string{"sql": sql},
			"selector": "app=x", "waves": []map[string]any{{"name": "canary", "selector": "ring=canary"}, {"name": "all", "percent": 100}},
			"autoRollback": true}
	}
	b.MustDo(t, "POST", "/api/v1/rollouts", body("bad", "SELECT BROKEN"), 201, nil)
	var r server.Rollout
	fleettest.Eventually(t, 15*time.Second, "rolled back", func() bool {
		a.MustDo(t, "GET", "/api/v1/rollouts/bad", nil, 200, &r)
		return r.State == "rolledback"
	})
	if len(r.Failing) != 1 || r.Failing[0].Gateway != "gw-canary" || r.Waves[1].State != "pending" {
		t.Fatalf("%+v", r)
	}
	for id, g := range gws {
		if _, seen := g.state(); id != "gw-canary" && seen[spec("SELECT BROKEN")] != 0 {
			t.Fatalf("%s received the broken revision", id)
		}
	}
	leaderA := strings.Contains(a.Logs.String(), "this replica runs the rollouts")
	leaderB := strings.Contains(b.Logs.String(), "this replica runs the rollouts")
	if leaderA == leaderB {
		t.Fatalf("rollout leaders: A %v, B %v", leaderA, leaderB)
	}
	// The leader stops; the other replica takes the lock and runs the next
	// rollout (the gateways on the stopped replica cannot report, so it
	// targets the other replica's gateways).
	leader, other := a, b
	if leaderB {
		leader, other = b, a
	}
	leader.Stop()
	sel := "on=b"
	if leaderB {
		sel = "on=a"
	}
	nb := body("good", "v2")
	nb["selector"] = sel
	nb["waves"] = []map[string]any{{"name": "all", "percent": 100}}
	other.MustDo(t, "POST", "/api/v1/rollouts", nb, 201, nil)
	fleettest.Eventually(t, 15*time.Second, "the other replica finishes the next rollout", func() bool {
		other.MustDo(t, "GET", "/api/v1/rollouts/good", nil, 200, &r)
		return r.State == "done"
	})
	if !strings.Contains(other.Logs.String(), "this replica runs the rollouts") {
		t.Fatal("the other replica did not take over")
	}
}

// TestRolloutMadeOnAnotherReplicaStartsAtOnce: the orchestrator (A, which
// took the lock) learns of a rollout created through replica B from the
// change notification, not from its idle poll (an hour here), and no
// gateway reports to A that could wake it instead.
func TestRolloutMadeOnAnotherReplicaStartsAtOnce(t *testing.T) {
	db := database(t)
	opt := server.Options{RolloutTick: 20 * time.Millisecond, RolloutPoll: time.Hour}
	a := fleettest.StartWith(t, open(t, db), "", opt)
	fleettest.Eventually(t, 15*time.Second, "A runs the rollouts", func() bool {
		return strings.Contains(a.Logs.String(), "this replica runs the rollouts")
	})
	b := fleettest.StartWith(t, open(t, db), "", opt)
	admin := a.Admin + b.Admin
	a.Admin, b.Admin = admin, admin
	defer func() {
		if t.Failed() {
			t.Log("A:\n" + a.Logs.String() + "\nB:\n" + b.Logs.String())
		}
	}()
	dir := filepath.Join(t.TempDir(), "gw")
	if err := client.Enroll(context.Background(), client.EnrollOptions{Server: b.URL, Token: b.Token(t, map[string]string{"app": "x"}, "1h"), CAPEM: b.CA, ID: "gw", Dir: dir}); err != nil {
		t.Fatal(err)
	}
	g := &pgGateway{seen: map[string]int{}}
	ctx, cancel := context.WithCancel(context.Background())
	s, err := client.New(ctx, client.Options{Dir: dir, Server: b.URL, Applier: g, ReconnectMax: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	b.MustDo(t, "PUT", "/api/v1/objects/ruleset/filter", map[string]any{"spec": map[string]string{"sql": "v1"}}, 200, nil)
	b.MustDo(t, "POST", "/api/v1/rollouts", map[string]any{"name": "r", "object": map[string]string{"kind": "ruleset", "name": "filter"},
		"spec": map[string]string{"sql": "v2"}, "selector": "app=x", "waves": []map[string]any{{"name": "all", "percent": 100}}}, 201, nil)
	var r server.Rollout
	fleettest.Eventually(t, 15*time.Second, "the rollout made on B is done by A", func() bool {
		b.MustDo(t, "GET", "/api/v1/rollouts/r", nil, 200, &r)
		return r.State == "done"
	})
}
