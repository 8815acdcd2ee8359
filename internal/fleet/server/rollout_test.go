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

	// After a rollback, a direct change of the object (no rollout) reaches
	// everyone: the rolled-back rollout holds the gateways off its own
	// toRevision only.
	srv.MustDo(t, "POST", "/api/v1/rollouts/filter-v3/rollback", map[string]int64{"resourceVersion": r.ResourceVersion}, 200, &r)
	waitAll(t, gws, specJSON("v1"))
	srv.MustDo(t, "PUT", "/api/v1/objects/ruleset/filter", map[string]any{"target": map[string]any{"selector": "app=x"}, "spec": sqlSpec("v4")}, 200, nil)
	waitAll(t, gws, specJSON("v4"))
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
	// Done lifts the hold: the stuck gateway gets the current revision
	// when it comes back.
	fleettest.Eventually(t, 5*time.Second, "the stuck gateway's desired state is v2 after done", func() bool {
		srv.MustDo(t, "GET", "/api/v1/gateways/gw-dead/desired", nil, 200, &doc)
		return len(doc.Objects) == 1 && compact(doc.Objects[0].Spec) == specJSON("v2")
	})

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
	// (The desired state is served from the replica's cache, which follows
	// the store's change log: eventually, within milliseconds.)
	fleettest.Eventually(t, 5*time.Second, "the stuck gateway is back at the last good revision", func() bool {
		srv.MustDo(t, "GET", "/api/v1/gateways/gw-dead/desired", nil, 200, &doc)
		return compact(doc.Objects[0].Spec) == specJSON("v2") && doc.Objects[0].ResourceVersion == r.FromRevision
	})

	// Resume: the halted wave runs again and its gates are checked again;
	// the stuck gateway still counts, so it halts again. Rollback: every
	// target back at the last good revision.
	srv.MustDo(t, "POST", "/api/v1/rollouts/r2/resume", map[string]int64{"resourceVersion": r.ResourceVersion}, 200, &r)
	if r.State != "running" || r.Waves[0].State != "running" {
		t.Fatalf("resumed: %+v", r)
	}
	r = waitState(t, srv, "r2", "halted")
	if len(r.Failing) != 1 || r.Failing[0].Gateway != "gw-dead" {
		t.Fatalf("halted again: %q %+v", r.Reason, r.Failing)
	}
	srv.MustDo(t, "POST", "/api/v1/rollouts/r2/rollback", map[string]int64{"resourceVersion": r.ResourceVersion}, 200, &r)
	if r.State != "rolledback" {
		t.Fatalf("rollback: %+v", r)
	}
	waitAll(t, gws, specJSON("v2"))
}

// A server restarted in the middle of a rollout resumes where it was: the
// soaking wave keeps its start and soak end, no wave is released twice,
// and every gateway applies the new revision exactly once.
func TestRolloutResumesAfterRestart(t *testing.T) {
	var clk clock
	dir := t.TempDir()
	opt := server.Options{RolloutTick: 20 * time.Millisecond, Now: clk.now}
	srv := fleettest.Start(t, dir, "", opt)
	dumpOnFailure(t, srv)
	gws := fleet(t, srv, map[string]map[string]string{"gw-0": {"app": "x"}, "gw-1": {"app": "x"}, "gw-2": {"app": "x"}}, true)
	srv.MustDo(t, "PUT", "/api/v1/objects/ruleset/filter", map[string]any{"spec": sqlSpec("v1")}, 200, nil)
	waitAll(t, gws, specJSON("v1"))
	var r server.Rollout
	srv.MustDo(t, "POST", "/api/v1/rollouts", map[string]any{
		"name": "r", "object": map[string]string{"kind": "ruleset", "name": "filter"}, "spec": sqlSpec("v2"), "selector": "app=x",
		"waves": []map[string]any{{"name": "first", "count": 1}, {"name": "second", "count": 1}}, "soak": "1h",
	}, 201, &r)
	fleettest.Eventually(t, 10*time.Second, "the first wave soaks", func() bool {
		r = getRollout(t, srv, "r")
		return r.Waves[0].State == "soaking"
	})
	before := r
	srv.Stop()

	srv2 := fleettest.Start(t, dir, strings.TrimPrefix(srv.URL, "https://"), opt)
	srv2.Admin = srv.Admin
	dumpOnFailure(t, srv2)
	fleettest.Eventually(t, 10*time.Second, "the gateways reconnect", func() bool {
		var list []struct{ Connected bool }
		srv2.MustDo(t, "GET", "/api/v1/gateways", nil, 200, &list)
		n := 0
		for _, g := range list {
			if g.Connected {
				n++
			}
		}
		return n == 3
	})
	r = getRollout(t, srv2, "r")
	if r.ResourceVersion != before.ResourceVersion || r.State != "running" || r.Waves[0].State != "soaking" ||
		!r.Waves[0].Started.Equal(*before.Waves[0].Started) || !r.Waves[0].SoakUntil.Equal(*before.Waves[0].SoakUntil) ||
		r.Waves[1].State != "pending" {
		t.Fatalf("after the restart: %+v\nbefore: %+v", r, before)
	}
	for _, want := range []string{"second", "rest"} {
		clk.advance(2 * time.Hour)
		fleettest.Eventually(t, 10*time.Second, "wave "+want+" soaks", func() bool {
			r = getRollout(t, srv2, "r")
			for _, w := range r.Waves {
				if w.Name == want {
					return w.State == "soaking"
				}
			}
			return false
		})
	}
	clk.advance(2 * time.Hour)
	r = waitState(t, srv2, "r", "done")
	if !r.Waves[0].Started.Equal(*before.Waves[0].Started) {
		t.Fatalf("the first wave was started again: %v, was %v", r.Waves[0].Started, before.Waves[0].Started)
	}
	waitAll(t, gws, specJSON("v2"))
	for id, g := range gws {
		if n := g.times(specJSON("v2")); n != 1 {
			t.Fatalf("%s applied v2 %d times", id, n)
		}
	}
}

// Two operators acting on one rollout at once: one wins, the other gets
// 409 and nothing is applied twice.
func TestRolloutConcurrentOperators(t *testing.T) {
	srv := fleettest.Start(t, t.TempDir(), "", server.Options{RolloutTick: 20 * time.Millisecond})
	dumpOnFailure(t, srv)
	gws := fleet(t, srv, map[string]map[string]string{"gw-0": {"app": "x"}, "gw-1": {"app": "x"}}, true)
	srv.MustDo(t, "PUT", "/api/v1/objects/ruleset/filter", map[string]any{"spec": sqlSpec("v1")}, 200, nil)
	waitAll(t, gws, specJSON("v1"))
	var op struct{ Token string }
	srv.MustDo(t, "POST", "/api/v1/apitokens", map[string]string{"role": "operator", "name": "op2"}, 201, &op)
	var viewer struct{ Token string }
	srv.MustDo(t, "POST", "/api/v1/apitokens", map[string]string{"role": "viewer", "name": "v"}, 201, &viewer)

	body := map[string]any{"name": "r", "object": map[string]string{"kind": "ruleset", "name": "filter"}, "spec": sqlSpec("v2"),
		"selector": "app=x", "waves": []map[string]any{{"name": "one", "count": 1}}, "soak": "1h"}
	if code, out := srv.Do(t, viewer.Token, "POST", "/api/v1/rollouts", body); code != 403 {
		t.Fatalf("viewer create: %d %s", code, out)
	}
	// Both watch streams open (a gateway may apply its List before its
	// watch starts; a watch resuming behind the server replays).
	fleettest.Eventually(t, 10*time.Second, "both gateways watching", func() bool {
		var list []struct{ Connected bool }
		srv.MustDo(t, "GET", "/api/v1/gateways", nil, 200, &list)
		return len(list) == 2 && list[0].Connected && list[1].Connected
	})
	var r server.Rollout
	sentBefore := srv.WatchObjectsSent()
	srv.MustDo(t, "POST", "/api/v1/rollouts", body, 201, &r)
	fleettest.Eventually(t, 10*time.Second, "the wave soaks", func() bool {
		r = getRollout(t, srv, "r")
		return r.Waves[0].State == "soaking"
	})
	// Releasing a wave of one sends one object event, not one per
	// gateway: the other streams' resolution did not change (the watch
	// stream skips slots it already sent with the same content and
	// revision; before, every stream re-sent the slot on every rollout
	// write).
	if n := srv.WatchObjectsSent() - sentBefore; n != 1 {
		t.Fatalf("releasing a wave of 1 of 2 gateways sent %d object events, want 1", n)
	}
	if code, out := srv.Do(t, viewer.Token, "POST", "/api/v1/rollouts/r/pause", map[string]int64{"resourceVersion": r.ResourceVersion}); code != 403 {
		t.Fatalf("viewer pause: %d %s", code, out)
	}
	type result struct {
		code int
		body string
	}
	res := make([]result, 2)
	var wg sync.WaitGroup
	for i, c := range []struct{ token, action string }{{srv.Admin, "pause"}, {op.Token, "abort"}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, out := srv.Do(t, c.token, "POST", "/api/v1/rollouts/r/"+c.action, map[string]int64{"resourceVersion": r.ResourceVersion})
			res[i] = result{code, string(out)}
		}()
	}
	wg.Wait()
	won, lost := res[0], res[1]
	if won.code != 200 {
		won, lost = lost, won
	}
	if won.code != 200 || lost.code != 409 || !strings.Contains(lost.body, "resourceVersion") {
		t.Fatalf("results: %+v", res)
	}
	var after server.Rollout
	if err := json.Unmarshal([]byte(won.body), &after); err != nil || after.ResourceVersion <= r.ResourceVersion ||
		(after.State != "paused" && after.State != "aborted") {
		t.Fatalf("winner: %v %s", err, won.body)
	}
	// Acting on the old resourceVersion again is stale too.
	if code, out := srv.Do(t, srv.Admin, "POST", "/api/v1/rollouts/r/rollback", map[string]int64{"resourceVersion": r.ResourceVersion}); code != 409 {
		t.Fatalf("stale rollback: %d %s", code, out)
	}
	if after.State == "paused" {
		srv.MustDo(t, "POST", "/api/v1/rollouts/r/resume", map[string]int64{"resourceVersion": after.ResourceVersion}, 200, &after)
		if after.State != "running" {
			t.Fatalf("resumed: %+v", after)
		}
	}
	r = getRollout(t, srv, "r")
	srv.MustDo(t, "POST", "/api/v1/rollouts/r/rollback", map[string]int64{"resourceVersion": r.ResourceVersion}, 200, &after)
	if after.State != "rolledback" {
		t.Fatalf("rolled back: %+v", after)
	}
	waitAll(t, gws, specJSON("v1"))
	for id, g := range gws {
		if n := g.times(specJSON("v2")); n > 1 {
			t.Fatalf("%s applied v2 %d times", id, n)
		}
	}
	if code, out := srv.Do(t, srv.Admin, "POST", "/api/v1/rollouts/r/resume", map[string]int64{"resourceVersion": after.ResourceVersion}); code != 409 || !strings.Contains(string(out), "rolledback") {
		t.Fatalf("resume after rollback: %d %s", code, out)
	}
}

// Every rollout input is validated with a message naming the field.
func TestRolloutBadInput(t *testing.T) {
	_, h, admin := newServer(t)
	if code, body := do(h, admin, "PUT", "/api/v1/objects/ruleset/filter", `{"spec": {"sql": "v1"}}`); code != 200 {
		t.Fatal(code, body)
	}
	ok := `"name": "r", "object": {"kind": "ruleset", "name": "filter"}, "selector": "app=x"`
	wave := `"waves": [{"name": "w", "count": 1}]`
	spec := `"spec": {"sql": "v2"}`
	tests := []struct {
		name, path, body string
		code             int
		msg              string
	}{
		{"no name", "/api/v1/rollouts", `{"object": {"kind": "ruleset", "name": "filter"}, ` + spec + `, ` + wave + `}`, 400, "name:"},
		{"bad name", "/api/v1/rollouts", `{"name": "a b", "object": {"kind": "ruleset", "name": "filter"}, ` + spec + `, ` + wave + `}`, 400, `name: "a b"`},
		{"bad kind", "/api/v1/rollouts", `{"name": "r", "object": {"kind": "widget", "name": "filter"}, ` + spec + `, ` + wave + `}`, 400, "object.kind"},
		{"bad object name", "/api/v1/rollouts", `{"name": "r", "object": {"kind": "ruleset", "name": ""}, ` + spec + `, ` + wave + `}`, 400, "object.name"},
		{"unknown object", "/api/v1/rollouts", `{"name": "r", "object": {"kind": "ruleset", "name": "nope"}, ` + spec + `, ` + wave + `}`, 400, "object: ruleset/nope does not exist"},
		{"no spec", "/api/v1/rollouts", `{` + ok + `, ` + wave + `}`, 400, "spec: the new spec"},
		{"spec and revision", "/api/v1/rollouts", `{` + ok + `, ` + spec + `, "revision": 1, ` + wave + `}`, 400, "spec: set spec or revision"},
		{"negative revision", "/api/v1/rollouts", `{` + ok + `, "revision": -3, ` + wave + `}`, 400, "revision: -3"},
		{"unknown revision", "/api/v1/rollouts", `{` + ok + `, "revision": 999, ` + wave + `}`, 400, "revision: ruleset/filter has no revision 999"},
		{"spec invalid for the kind", "/api/v1/rollouts", `{` + ok + `, "spec": {"text": "x"}, ` + wave + `}`, 400, "spec.sql"},
		{"spec not an object", "/api/v1/rollouts", `{` + ok + `, "spec": [1], ` + wave + `}`, 400, "spec: must be a JSON object"},
		{"bad selector", "/api/v1/rollouts", `{"name": "r", "object": {"kind": "ruleset", "name": "filter"}, "selector": "a in (b", ` + spec + `, ` + wave + `}`, 400, "selector: "},
		{"no waves", "/api/v1/rollouts", `{` + ok + `, ` + spec + `}`, 400, "waves: at least one"},
		{"wave without size", "/api/v1/rollouts", `{` + ok + `, ` + spec + `, "waves": [{"name": "w"}]}`, 400, "waves[0]: set exactly one of selector, percent, count"},
		{"wave with two sizes", "/api/v1/rollouts", `{` + ok + `, ` + spec + `, "waves": [{"name": "w", "count": 1, "percent": 5}]}`, 400, "waves[0]: set exactly one"},
		{"wave name", "/api/v1/rollouts", `{` + ok + `, ` + spec + `, "waves": [{"name": "", "count": 1}]}`, 400, "waves[0].name"},
		{"wave name twice", "/api/v1/rollouts", `{` + ok + `, ` + spec + `, "waves": [{"name": "w", "count": 1}, {"name": "w", "count": 1}]}`, 400, "waves[1].name"},
		{"wave named rest", "/api/v1/rollouts", `{` + ok + `, ` + spec + `, "waves": [{"name": "rest", "count": 1}]}`, 400, "waves[0].name"},
		{"percent zero", "/api/v1/rollouts", `{` + ok + `, ` + spec + `, "waves": [{"name": "w", "percent": 0}]}`, 400, "waves[0].percent"},
		{"percent over 100", "/api/v1/rollouts", `{` + ok + `, ` + spec + `, "waves": [{"name": "w", "percent": 101}]}`, 400, "waves[0].percent"},
		{"percent going down", "/api/v1/rollouts", `{` + ok + `, ` + spec + `, "waves": [{"name": "a", "percent": 50}, {"name": "b", "percent": 10}]}`, 400, "waves[1].percent"},
		{"count zero", "/api/v1/rollouts", `{` + ok + `, ` + spec + `, "waves": [{"name": "w", "count": 0}]}`, 400, "waves[0].count"},
		{"bad wave selector", "/api/v1/rollouts", `{` + ok + `, ` + spec + `, "waves": [{"name": "w", "selector": "ring in (a"}]}`, 400, "waves[0].selector"},
		{"bad soak", "/api/v1/rollouts", `{` + ok + `, ` + spec + `, ` + wave + `, "soak": "a while"}`, 400, "soak:"},
		{"negative soak", "/api/v1/rollouts", `{` + ok + `, ` + spec + `, ` + wave + `, "soak": "-1s"}`, 400, "soak:"},
		{"zero deadline", "/api/v1/rollouts", `{` + ok + `, ` + spec + `, ` + wave + `, "deadline": "0s"}`, 400, "deadline:"},
		{"gate percent", "/api/v1/rollouts", `{` + ok + `, ` + spec + `, ` + wave + `, "gates": {"maxFailedPercent": 150}}`, 400, "gates.maxFailedPercent"},
		{"gate count", "/api/v1/rollouts", `{` + ok + `, ` + spec + `, ` + wave + `, "gates": {"maxFailed": -1}}`, 400, "gates.maxFailed"},
		{"gate bricked", "/api/v1/rollouts", `{` + ok + `, ` + spec + `, ` + wave + `, "gates": {"maxBricked": -1}}`, 400, "gates.maxBricked"},
		{"gate restarts", "/api/v1/rollouts", `{` + ok + `, ` + spec + `, ` + wave + `, "gates": {"maxRestarts": -2}}`, 400, "gates.maxRestarts"},
		{"gate rule errors", "/api/v1/rollouts", `{` + ok + `, ` + spec + `, ` + wave + `, "gates": {"maxRuleErrors": -1}}`, 400, "gates.maxRuleErrors: -1"},
		{"gate queue growth", "/api/v1/rollouts", `{` + ok + `, ` + spec + `, ` + wave + `, "gates": {"maxQueueGrowth": -5}}`, 400, "gates.maxQueueGrowth: -5"},
		{"gate queue growth not a number", "/api/v1/rollouts", `{` + ok + `, ` + spec + `, ` + wave + `, "gates": {"maxQueueGrowth": "x"}}`, 400, "maxQueueGrowth"},
		{"gate type", "/api/v1/rollouts", `{` + ok + `, ` + spec + `, ` + wave + `, "gates": {"maxFailed": "one"}}`, 400, "field gates.maxFailed"},
		{"unknown field", "/api/v1/rollouts", `{` + ok + `, ` + spec + `, ` + wave + `, "wavez": []}`, 400, `unknown field "wavez"`},
		{"unknown rollout", "/api/v1/rollouts/nope/pause", `{"resourceVersion": 3}`, 404, "rollout nope"},
		{"unknown action", "/api/v1/rollouts/nope/explode", `{"resourceVersion": 3}`, 404, `action: "explode"`},
		{"action without resourceVersion", "/api/v1/rollouts/nope/pause", `{}`, 400, "resourceVersion: required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := do(h, admin, "POST", tt.path, tt.body)
			var e proto.Error
			if json.Unmarshal([]byte(body), &e) != nil || e.Error == "" {
				t.Fatalf("body is not a JSON error: %s", body)
			}
			if code != tt.code || !strings.Contains(e.Error, tt.msg) {
				t.Fatalf("got %d %q, want %d containing %q", code, e.Error, tt.code, tt.msg)
			}
		})
	}
	// Still nothing stored, and a good request works.
	if code, body := do(h, admin, "GET", "/api/v1/rollouts", ""); code != 200 || !strings.Contains(body, `"items": []`) {
		t.Fatalf("list: %d %s", code, body)
	}
	if code, body := do(h, admin, "POST", "/api/v1/rollouts", `{`+ok+`, `+spec+`, `+wave+`}`); code != 201 {
		t.Fatalf("good request: %d %s", code, body)
	}
	if code, body := do(h, admin, "POST", "/api/v1/rollouts", `{"name": "r2", "object": {"kind": "ruleset", "name": "filter"}, `+spec+`, `+wave+`}`); code != 409 ||
		!strings.Contains(body, "is being rolled out by r") {
		t.Fatalf("second rollout of the same object: %d %s", code, body)
	}
	if code, body := do(h, admin, "POST", "/api/v1/rollouts", `{`+ok+`, `+spec+`, `+wave+`}`); code != 409 {
		t.Fatalf("same name again: %d %s", code, body)
	}
}
