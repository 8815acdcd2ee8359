package server_test

import (
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/fleettest"
	"github.com/outpost-edge/outpost/internal/fleet/proto"
	"github.com/outpost-edge/outpost/internal/fleet/server"
)

// desiredSpecs returns a gateway's desired objects: slot -> compact spec.
func desiredSpecs(t *testing.T, srv *fleettest.Server, gw string) map[string]string {
	t.Helper()
	var doc proto.Document
	srv.MustDo(t, "GET", "/api/v1/gateways/"+gw+"/desired", nil, 200, &doc)
	out := map[string]string{}
	for _, o := range doc.Objects {
		out[o.Kind+"/"+o.Name] = compact(o.Spec)
	}
	return out
}

// TestRolloutCreatesObject: a rollout can bring a brand-new object to the
// fleet in waves. Gateways outside the released waves resolve its slot as
// if it did not exist: the fleet default it overrides (slot "filter"), or
// nothing at all (slot "vision"). A rollback takes the new object away
// again; a rollout that completes gives it to every target.
func TestRolloutCreatesObject(t *testing.T) {
	srv := fleettest.Start(t, t.TempDir(), "", server.Options{RolloutTick: 20 * time.Millisecond})
	dumpOnFailure(t, srv)
	gws := fleet(t, srv, map[string]map[string]string{
		"gw-canary": {"site": "p2", "ring": "canary"},
		"gw-1":      {"site": "p2"}, "gw-2": {"site": "p2"}, "gw-3": {"site": "p2"},
		"gw-other": {"site": "p3"},
	}, true)
	// The fleet default every gateway runs.
	srv.MustDo(t, "PUT", "/api/v1/objects/ruleset/filter", map[string]any{"spec": sqlSpec("default")}, 200, nil)
	waitAll(t, gws, specJSON("default"))

	// A new group object for site=p2 over the default: canary first, then
	// a gate that never passes (soak), so the rest stays held.
	var r server.Rollout
	srv.MustDo(t, "POST", "/api/v1/rollouts", map[string]any{
		"name": "p2-filter", "object": map[string]string{"kind": "ruleset", "name": "filter-p2"},
		"create": map[string]any{"name": "filter", "target": map[string]any{"selector": "site=p2", "priority": 5}},
		"spec":   sqlSpec("p2"), "selector": "site=p2",
		"waves": []map[string]any{{"name": "canary", "selector": "ring=canary"}, {"name": "all", "percent": 100}},
		"soak":  "1h",
	}, 201, &r)
	if r.FromRevision != 0 || r.ToRevision == 0 || len(r.Waves) != 2 || r.Waves[0].Targets != 1 || r.Waves[1].Targets != 3 {
		t.Fatalf("created: from %d to %d waves %+v", r.FromRevision, r.ToRevision, r.Waves)
	}
	fleettest.Eventually(t, 10*time.Second, "the canary runs the new object", func() bool { return gws["gw-canary"].get() == specJSON("p2") })
	time.Sleep(300 * time.Millisecond) // several orchestrator ticks
	for _, id := range []string{"gw-1", "gw-2", "gw-3", "gw-other"} {
		if got := gws[id].get(); got != specJSON("default") {
			t.Fatalf("%s outside the released wave runs %s, want the default", id, got)
		}
		if d := desiredSpecs(t, srv, id); d["ruleset/filter"] != specJSON("default") {
			t.Fatalf("%s desired %v", id, d)
		}
	}
	// Rolled back: the canary is back on the default.
	r = getRollout(t, srv, "p2-filter")
	srv.MustDo(t, "POST", "/api/v1/rollouts/p2-filter/rollback", map[string]int64{"resourceVersion": r.ResourceVersion}, 200, &r)
	if !strings.Contains(r.Reason, "no object (the rollout created it)") {
		t.Fatalf("rollback reason %q", r.Reason)
	}
	waitAll(t, gws, specJSON("default"))

	// A new object in a slot of its own, rolled out to completion: held
	// gateways have no such object at all until their wave.
	srv.MustDo(t, "POST", "/api/v1/rollouts", map[string]any{
		"name": "vision", "object": map[string]string{"kind": "ruleset", "name": "vision"},
		"create": map[string]any{"target": map[string]any{"selector": "site=p2"}},
		"spec":   sqlSpec("vision"), "selector": "site=p2",
		"waves": []map[string]any{{"name": "canary", "selector": "ring=canary"}, {"name": "all", "percent": 100}},
		"soak":  "0s",
	}, 201, &r)
	r = waitState(t, srv, "vision", "done")
	for _, w := range r.Waves {
		if w.State != "done" || w.Applied != w.Targets {
			t.Fatalf("waves: %+v", r.Waves)
		}
	}
	for id := range gws {
		_, has := desiredSpecs(t, srv, id)["ruleset/vision"]
		if has != (id != "gw-other") {
			t.Fatalf("%s has vision: %v", id, has)
		}
	}

	// Bad requests name the field.
	for _, tc := range []struct {
		body map[string]any
		msg  string
	}{
		{map[string]any{"name": "x1", "object": map[string]string{"kind": "ruleset", "name": "nope"}, "spec": sqlSpec("x"), "selector": "site=p2",
			"waves": []map[string]any{{"name": "all", "percent": 100}}}, "give create: {target: ...}"},
		{map[string]any{"name": "x2", "object": map[string]string{"kind": "ruleset", "name": "vision"}, "spec": sqlSpec("x"), "selector": "site=p2",
			"create": map[string]any{"target": map[string]any{"selector": "site=p3"}}, "waves": []map[string]any{{"name": "all", "percent": 100}}}, "create: ruleset/vision exists"},
		{map[string]any{"name": "x3", "object": map[string]string{"kind": "ruleset", "name": "new2"}, "spec": sqlSpec("x"), "selector": "site=p2",
			"create": map[string]any{"target": map[string]any{"selector": "site in (p2"}}, "waves": []map[string]any{{"name": "all", "percent": 100}}}, "create.target.selector"},
		{map[string]any{"name": "x4", "object": map[string]string{"kind": "ruleset", "name": "new3"}, "revision": 3, "selector": "site=p2",
			"create": map[string]any{"target": map[string]any{"selector": "site=p2"}}, "waves": []map[string]any{{"name": "all", "percent": 100}}}, "revision: ruleset/new3 does not exist yet"},
	} {
		code, body := srv.Do(t, srv.Admin, "POST", "/api/v1/rollouts", tc.body)
		if code != 400 || !strings.Contains(string(body), tc.msg) {
			t.Errorf("%v: %d %s, want 400 %q", tc.body["name"], code, body, tc.msg)
		}
	}
}
