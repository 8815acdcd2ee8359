package server_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/client"
	"github.com/outpost-edge/outpost/internal/fleet/fleettest"
	"github.com/outpost-edge/outpost/internal/fleet/server"
)

// measuringGateway reports what a real agent's Measure reports: a rule set
// whose SQL contains ERRS fails 5 times at run time; one with QUEUE makes
// the uplink backlog grow from 10 to 5,000 records.
type measuringGateway struct{ simGateway }

func (g *measuringGateway) Measure(kind, name string) (errs, queue, queueStart int64, ok bool) {
	cur := g.get()
	switch {
	case strings.Contains(cur, "ERRS"):
		return 5, 10, 10, true
	case strings.Contains(cur, "QUEUE"):
		return 0, 5000, 10, true
	}
	return 0, 10, 10, true
}

// TestRolloutHaltsOnRuntimeSignals: a revision that applies but whose rules
// fail at run time (gates.maxRuleErrors), or after which the gateway's
// uplink backlog grows (gates.maxQueueGrowth), halts the rollout in its
// canary wave with the signal named; no other gateway gets it.
func TestRolloutHaltsOnRuntimeSignals(t *testing.T) {
	srv := fleettest.Start(t, t.TempDir(), "", server.Options{RolloutTick: 20 * time.Millisecond})
	dumpOnFailure(t, srv)
	gws := map[string]*measuringGateway{}
	for id, labels := range map[string]map[string]string{"gw-canary": {"app": "x", "ring": "canary"}, "gw-1": {"app": "x"}, "gw-2": {"app": "x"}} {
		dir := filepath.Join(t.TempDir(), id)
		if err := client.Enroll(context.Background(), client.EnrollOptions{Server: srv.URL, Token: srv.Token(t, labels, "1h"), CAPEM: srv.CA, ID: id, Dir: dir}); err != nil {
			t.Fatal(err)
		}
		g := &measuringGateway{simGateway{id: id, seen: map[string]int{}}}
		gws[id] = g
		ctx, cancel := context.WithCancel(context.Background())
		s, err := client.New(ctx, client.Options{Dir: dir, Applier: g, ReconnectMax: 100 * time.Millisecond, ObserveEvery: 50 * time.Millisecond,
			Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { defer close(done); s.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	srv.MustDo(t, "PUT", "/api/v1/objects/ruleset/filter", ruleset("app=x"), 200, nil)
	sims := map[string]*simGateway{}
	for id, g := range gws {
		sims[id] = &g.simGateway
	}
	waitAll(t, sims, specJSON("v1"))
	for _, tc := range []struct {
		name, sql, signal, detail string
		gates                     map[string]any
	}{
		{"errs", "CREATE RULE filter AS SELECT ERRS", server.SignalRuleErrors, "5 run-time errors since applied (gate maxRuleErrors 2)", map[string]any{"maxRuleErrors": 2}},
		{"queue", "CREATE RULE filter AS SELECT QUEUE", server.SignalQueueGrowth, "uplink backlog 5000 records, 10 when applied (gate maxQueueGrowth 1000)", map[string]any{"maxQueueGrowth": 1000}},
	} {
		srv.MustDo(t, "POST", "/api/v1/rollouts", map[string]any{
			"name": tc.name, "object": map[string]string{"kind": "ruleset", "name": "filter"}, "spec": sqlSpec(tc.sql), "selector": "app=x",
			"waves": []map[string]any{{"name": "canary", "selector": "ring=canary"}, {"name": "all", "percent": 100}},
			"soak":  "2s", "gates": tc.gates, "autoRollback": true,
		}, 201, nil)
		r := waitState(t, srv, tc.name, "rolledback")
		if len(r.Failing) != 1 || r.Failing[0].Gateway != "gw-canary" || r.Failing[0].Signal != tc.signal || !strings.Contains(r.Failing[0].Detail, tc.detail) {
			t.Fatalf("%s: failing %+v (reason %q)", tc.name, r.Failing, r.Reason)
		}
		for id, g := range gws {
			if id != "gw-canary" && g.times(specJSON(tc.sql)) != 0 {
				t.Fatalf("%s: %s beyond the canary received the revision", tc.name, id)
			}
		}
		waitAll(t, sims, specJSON("v1"))
	}
}
