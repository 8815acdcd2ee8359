package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/client"
	"github.com/outpost-edge/outpost/internal/fleet/fleettest"
	"github.com/outpost-edge/outpost/internal/fleet/proto"
	"github.com/outpost-edge/outpost/internal/fleet/server"
)

// simGateway is a simulated gateway: the real agent-side syncer with an
// applier that fails rule sets whose SQL contains BROKEN (as the gateway's
// rule compiler would) and records every spec it was asked to apply.
type simGateway struct {
	id string
	mu sync.Mutex
	// seen counts apply attempts per spec.
	seen    map[string]int
	current string
}

func (g *simGateway) Apply(_ context.Context, d proto.Desired) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.seen[string(d.Spec)]++
	if strings.Contains(string(d.Spec), "BROKEN") {
		return fmt.Errorf("fleet-%s.sql:1:1: syntax error at or near \"BROKEN\"", d.Name)
	}
	g.current = string(d.Spec)
	return nil
}

func (g *simGateway) Remove(context.Context, string, string) error { return nil }

func (g *simGateway) get() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.current
}

func (g *simGateway) times(spec string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.seen[spec]
}

// compact undoes the API's indentation of a spec.
func compact(b []byte) string {
	var buf bytes.Buffer
	_ = json.Compact(&buf, b)
	return buf.String()
}

// clock is an adjustable test clock.
type clock struct{ off atomic.Int64 }

func (c *clock) now() time.Time            { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *clock) advance(d time.Duration)   { c.off.Add(int64(d)) }
func sqlSpec(sql string) map[string]string { return map[string]string{"sql": sql} }
func specJSON(sql string) string           { b, _ := json.Marshal(sqlSpec(sql)); return string(b) }
func ruleset(sel string) map[string]any {
	return map[string]any{"target": map[string]any{"selector": sel}, "spec": sqlSpec("v1")}
}
func getRollout(t *testing.T, srv *fleettest.Server, name string) (r server.Rollout) {
	t.Helper()
	srv.MustDo(t, "GET", "/api/v1/rollouts/"+name, nil, 200, &r)
	return r
}

// fleet enrolls gateways (id -> labels) and starts a syncer for each.
func fleet(t *testing.T, srv *fleettest.Server, gws map[string]map[string]string, start bool) map[string]*simGateway {
	t.Helper()
	out := map[string]*simGateway{}
	for id, labels := range gws {
		dir := filepath.Join(t.TempDir(), id)
		tok := srv.Token(t, labels, "1h")
		if err := client.Enroll(context.Background(), client.EnrollOptions{Server: srv.URL, Token: tok, CAPEM: srv.CA, ID: id, Dir: dir}); err != nil {
			t.Fatal(err)
		}
		g := &simGateway{id: id, seen: map[string]int{}}
		out[id] = g
		if !start {
			continue
		}
		ctx, cancel := context.WithCancel(context.Background())
		s, err := client.New(ctx, client.Options{Dir: dir, Applier: g, ReconnectMax: 100 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { defer close(done); s.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	return out
}

func waitAll(t *testing.T, gws map[string]*simGateway, spec string) {
	t.Helper()
	fleettest.Eventually(t, 10*time.Second, "every gateway runs "+spec, func() bool {
		for _, g := range gws {
			if g.get() != spec {
				return false
			}
		}
		return true
	})
}

func waitState(t *testing.T, srv *fleettest.Server, name, state string) server.Rollout {
	t.Helper()
	var r server.Rollout
	fleettest.Eventually(t, 10*time.Second, "rollout "+name+" "+state, func() bool {
		r = getRollout(t, srv, name)
		return r.State == state
	})
	return r
}

func dumpOnFailure(t *testing.T, srv *fleettest.Server) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(srv.Logs.String())
		}
	})
}

// A rule set that does not compile on the canary: the rollout halts in the
// first wave, rolls the canary back, and no gateway beyond the canary ever
// receives the broken revision.
func TestRolloutCanaryFailureHaltsAndRollsBack(t *testing.T) {
	srv := fleettest.Start(t, t.TempDir(), "", server.Options{RolloutTick: 20 * time.Millisecond})
	dumpOnFailure(t, srv)
	gws := fleet(t, srv, map[string]map[string]string{
		"gw-canary": {"app": "x", "ring": "canary"},
		"gw-1":      {"app": "x"}, "gw-2": {"app": "x"}, "gw-3": {"app": "x"}, "gw-4": {"app": "x"},
	}, true)
	var obj proto.Object
	srv.MustDo(t, "PUT", "/api/v1/objects/ruleset/filter", ruleset("app=x"), 200, &obj)
	waitAll(t, gws, specJSON("v1"))

	bad := "CREATE RULE filter AS SELECT BROKEN"
	var r server.Rollout
	srv.MustDo(t, "POST", "/api/v1/rollouts", map[string]any{
		"name": "filter-v2", "object": map[string]string{"kind": "ruleset", "name": "filter"},
		"spec": sqlSpec(bad), "selector": "app=x",
		"waves": []map[string]any{{"name": "canary", "selector": "ring=canary"}, {"name": "half", "percent": 50}, {"name": "all", "percent": 100}},
		"soak":  "0s", "deadline": "30s", "gates": map[string]any{"maxFailed": 0}, "autoRollback": true,
	}, 201, &r)
	if r.FromRevision != obj.ResourceVersion || r.ToRevision <= r.FromRevision || r.State != "running" {
		t.Fatalf("created: %+v (object at %d)", r, obj.ResourceVersion)
	}
	if len(r.Waves) != 3 || r.Waves[0].Targets != 1 || r.Waves[1].Targets != 2 || r.Waves[2].Targets != 2 {
		t.Fatalf("waves: %+v", r.Waves)
	}
	r = waitState(t, srv, "filter-v2", "rolledback")
	if !strings.Contains(r.Reason, "wave canary") || len(r.Failing) != 1 || r.Failing[0].Gateway != "gw-canary" ||
		r.Failing[0].Signal != server.SignalApplyError || !strings.Contains(r.Failing[0].Detail, "syntax error") {
		t.Fatalf("halt: reason %q failing %+v", r.Reason, r.Failing)
	}
	if r.Waves[0].State != "halted" || r.Waves[0].Failed != 1 || r.Waves[1].State != "pending" || r.Waves[2].State != "pending" {
		t.Fatalf("waves after the halt: %+v", r.Waves)
	}
	// The canary is told to go back: its desired state is the old revision.
	var doc proto.Document
	fleettest.Eventually(t, 5*time.Second, "the canary's desired state is back at v1", func() bool {
		srv.MustDo(t, "GET", "/api/v1/gateways/gw-canary/desired", nil, 200, &doc)
		return len(doc.Objects) == 1 && compact(doc.Objects[0].Spec) == specJSON("v1") && doc.Objects[0].ResourceVersion == r.FromRevision
	})
	if gws["gw-canary"].times(specJSON(bad)) == 0 {
		t.Fatal("the canary never received the new revision")
	}
	for id, g := range gws {
		if id != "gw-canary" && g.times(specJSON(bad)) != 0 {
			t.Fatalf("%s beyond the canary received the broken revision", id)
		}
		if g.get() != specJSON("v1") {
			t.Fatalf("%s runs %s", id, g.get())
		}
	}
	// A new rollout of the same object (a fixed rule) goes to everyone.
	srv.MustDo(t, "POST", "/api/v1/rollouts", map[string]any{
		"name": "filter-v3", "object": map[string]string{"kind": "ruleset", "name": "filter"}, "spec": sqlSpec("v3"), "selector": "app=x",
		"waves": []map[string]any{{"name": "one", "count": 1}, {"name": "all", "percent": 100}},
	}, 201, &r)
	if r.FromRevision != obj.ResourceVersion {
		t.Fatalf("the next rollout starts from %d, want %d (what the gateways run)", r.FromRevision, obj.ResourceVersion)
	}
	r = waitState(t, srv, "filter-v3", "done")
	waitAll(t, gws, specJSON("v3"))
	for _, w := range r.Waves {
		if w.State != "done" || w.Applied != w.Targets {
			t.Fatalf("waves: %+v", r.Waves)
		}
	}
}

// Waves release in order; a rollout ends with every target on the new
// revision and every wave's counts visible.
func TestRolloutWavesInOrder(t *testing.T) {
	srv := fleettest.Start(t, t.TempDir(), "", server.Options{RolloutTick: 20 * time.Millisecond})
	dumpOnFailure(t, srv)
	labels := map[string]map[string]string{"gw-other": {"app": "y"}}
	for i := range 8 {
		labels[fmt.Sprintf("gw-%d", i)] = map[string]string{"app": "x"}
	}
	gws := fleet(t, srv, labels, true)
	srv.MustDo(t, "PUT", "/api/v1/objects/ruleset/filter", map[string]any{"spec": sqlSpec("v1")}, 200, nil)
	waitAll(t, gws, specJSON("v1"))
	var r server.Rollout
	srv.MustDo(t, "POST", "/api/v1/rollouts", map[string]any{
		"name": "r", "object": map[string]string{"kind": "ruleset", "name": "filter"}, "spec": sqlSpec("v2"), "selector": "app=x",
		"waves": []map[string]any{{"name": "one", "count": 1}, {"name": "quarter", "percent": 25}, {"name": "half", "percent": 50}},
	}, 201, &r)
	// The waves did not cover everyone: the rest is one more wave.
	if len(r.Waves) != 4 || r.Waves[3].Name != "rest" || r.Waves[0].Targets != 1 || r.Waves[1].Targets != 1 || r.Waves[2].Targets != 2 || r.Waves[3].Targets != 4 {
		t.Fatalf("waves: %+v", r.Waves)
	}
	r = waitState(t, srv, "r", "done")
	for _, w := range r.Waves {
		if w.State != "done" || w.Applied != w.Targets || w.Failed+w.Stuck != 0 {
			t.Fatalf("waves: %+v", r.Waves)
		}
	}
	if g := gws["gw-other"].get(); g != specJSON("v1") {
		// Not selected by the rollout: held at v1 while it ran, then the
		// object's current revision.
		waitAll(t, map[string]*simGateway{"o": gws["gw-other"]}, specJSON("v2"))
	}
	waitAll(t, gws, specJSON("v2"))
	for id, g := range gws {
		if n := g.times(specJSON("v2")); n != 1 {
			t.Fatalf("%s applied v2 %d times", id, n)
		}
	}
}

// The watchdog: a gateway that never reports the new revision within the
// wave's deadline is marked stuck (silent: nothing heard since the wave
// started), counted against the gate and sent back to the old revision.
func TestRolloutWatchdogStuckGateway(t *testing.T) {
	var clk clock
	srv := fleettest.Start(t, t.TempDir(), "", server.Options{RolloutTick: 20 * time.Millisecond, Now: clk.now})
	dumpOnFailure(t, srv)
	gws := fleet(t, srv, map[string]map[string]string{"gw-a": {"app": "x"}, "gw-b": {"app": "x"}}, true)
	fleet(t, srv, map[string]map[string]string{"gw-dead": {"app": "x"}}, false) // enrolled, never connects
	srv.MustDo(t, "PUT", "/api/v1/objects/ruleset/filter", map[string]any{"spec": sqlSpec("v1")}, 200, nil)
	waitAll(t, gws, specJSON("v1"))
	var r server.Rollout
	srv.MustDo(t, "POST", "/api/v1/rollouts", map[string]any{
		"name": "r", "object": map[string]string{"kind": "ruleset", "name": "filter"}, "spec": sqlSpec("v2"), "selector": "app=x",
		"waves": []map[string]any{{"name": "all", "percent": 100}}, "deadline": "1m", "gates": map[string]any{"maxFailed": 1},
	}, 201, &r)
	waitAll(t, gws, specJSON("v2"))
	fleettest.Eventually(t, 5*time.Second, "two applied, one pending", func() bool {
		r = getRollout(t, srv, "r")
		return r.Waves[0].Applied == 2 && r.State == "running"
	})
	clk.advance(2 * time.Minute)
	r = waitState(t, srv, "r", "done")
	if r.Waves[0].Stuck != 1 || r.Waves[0].Applied != 2 {
		t.Fatalf("waves: %+v", r.Waves)
	}
	var doc proto.Document
	srv.MustDo(t, "GET", "/api/v1/gateways/gw-dead/desired", nil, 200, &doc)
	if len(doc.Objects) != 1 || compact(doc.Objects[0].Spec) != specJSON("v2") {
		// Done lifts the hold: the stuck gateway gets the current revision
		// when it comes back.
		t.Fatalf("after done: %+v", doc)
	}

	// The same with the gate at 0: the stuck gateway halts the rollout,
	// the reason names it, and it is held at the last good revision.
	srv.MustDo(t, "POST", "/api/v1/rollouts", map[string]any{
		"name": "r2", "object": map[string]string{"kind": "ruleset", "name": "filter"}, "spec": sqlSpec("v3"), "selector": "app=x",
		"waves": []map[string]any{{"name": "all", "percent": 100}}, "deadline": "1m",
	}, 201, &r)
	waitAll(t, gws, specJSON("v3"))
	fleettest.Eventually(t, 5*time.Second, "two applied, one pending", func() bool {
		r = getRollout(t, srv, "r2")
		return r.Waves[0].Applied == 2 && r.State == "running"
	})
	clk.advance(2 * time.Minute)
	r = waitState(t, srv, "r2", "halted")
	if len(r.Failing) != 1 || r.Failing[0].Gateway != "gw-dead" || r.Failing[0].Signal != server.SignalSilent || !strings.Contains(r.Reason, "1 of 3") {
		t.Fatalf("halt: %q %+v", r.Reason, r.Failing)
	}
	srv.MustDo(t, "GET", "/api/v1/gateways/gw-dead/desired", nil, 200, &doc)
	if compact(doc.Objects[0].Spec) != specJSON("v2") || doc.Objects[0].ResourceVersion != r.FromRevision {
		t.Fatalf("the stuck gateway is not back at the last good revision %d: %+v", r.FromRevision, doc)
	}
}
