package server

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/proto"
	"github.com/outpost-edge/outpost/internal/fleet/store"
)

// Every signal a gateway reports, and each gate, table-driven.
func TestRolloutGates(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	cond := func(rv int64, applied bool, err string) proto.Status {
		return proto.Status{Conditions: []proto.Condition{{Kind: "ruleset", Name: "filter", ResourceVersion: rv, Applied: applied, Error: err}}, Health: "ok"}
	}
	ok := cond(10, true, "")
	intp := func(v int) *int { return &v }
	i64p := func(v int64) *int64 { return &v }
	fp := func(v float64) *float64 { return &v }
	tests := []struct {
		name   string
		gws    map[string]store.Gateway // g0..gN members of one running wave
		now    time.Time
		gates  Gates
		want   [4]int // applied, failed, stuck, pending
		signal string // of the first failing gateway
		breach string // "" = none
	}{
		{"all applied", map[string]store.Gateway{"g0": {Status: ok}, "g1": {Status: ok}}, t0, Gates{}, [4]int{2, 0, 0, 0}, "", ""},
		{"newer revision counts as applied", map[string]store.Gateway{"g0": {Status: cond(12, true, "")}}, t0, Gates{}, [4]int{1, 0, 0, 0}, "", ""},
		{"old revision is pending", map[string]store.Gateway{"g0": {Status: cond(9, true, "")}}, t0, Gates{}, [4]int{0, 0, 0, 1}, "", ""},
		{"apply error", map[string]store.Gateway{"g0": {Status: cond(10, false, "fleet-filter.sql:2:14: syntax error")}, "g1": {Status: ok}}, t0, Gates{},
			[4]int{1, 1, 0, 0}, SignalApplyError, "1 of 2 gateways failed (gate maxFailed 0)"},
		{"not applied without text", map[string]store.Gateway{"g0": {Status: cond(10, false, "")}}, t0, Gates{MaxFailed: intp(1)}, [4]int{0, 1, 0, 0}, SignalApplyError, ""},
		{"health broken", map[string]store.Gateway{"g0": {Status: proto.Status{Health: "broken"}}}, t0, Gates{MaxFailed: intp(5), MaxBricked: intp(0)},
			[4]int{0, 1, 0, 0}, SignalHealth, "1 gateways bricked"},
		{"ota trial failed", map[string]store.Gateway{"g0": {Status: ok, Facts: map[string]string{"ota_trial": "rolled_back"}}}, t0, Gates{}, [4]int{0, 1, 0, 0}, SignalOTATrial, "gate maxFailed 0"},
		{"component broken", map[string]store.Gateway{"g0": {Status: proto.Status{Health: "degraded", Conditions: []proto.Condition{{Kind: "ruleset", Name: "filter", ResourceVersion: 10, Applied: true,
			State: "broken", Restarts: 2, Reason: "exited with code 3"}}}}}, t0, Gates{MaxFailed: intp(5), MaxBricked: intp(0)}, [4]int{0, 1, 0, 0}, SignalHealth, "1 gateways bricked"},
		{"component install failed", map[string]store.Gateway{"g0": {Status: proto.Status{Conditions: []proto.Condition{{Kind: "ruleset", Name: "filter", ResourceVersion: 10, Applied: true,
			State: "install_failed"}}}}}, t0, Gates{}, [4]int{0, 1, 0, 0}, SignalHealth, "gate maxFailed 0"},
		{"component restarting past maxRestarts", map[string]store.Gateway{"g0": {Status: proto.Status{Conditions: []proto.Condition{{Kind: "ruleset", Name: "filter", ResourceVersion: 10, Applied: true,
			State: "backoff", Restarts: 3, Reason: "exited with code 1"}}}}}, t0, Gates{MaxRestarts: intp(2)}, [4]int{0, 1, 0, 0}, SignalRestarts, "gate maxFailed 0"},
		{"component restarts within maxRestarts", map[string]store.Gateway{"g0": {Status: proto.Status{Conditions: []proto.Condition{{Kind: "ruleset", Name: "filter", ResourceVersion: 10, Applied: true,
			State: "running", Restarts: 2}}}}}, t0, Gates{MaxRestarts: intp(2)}, [4]int{1, 0, 0, 0}, "", ""},
		{"rule errors past maxRuleErrors", map[string]store.Gateway{"g0": {Status: proto.Status{Conditions: []proto.Condition{{Kind: "ruleset", Name: "filter", ResourceVersion: 10, Applied: true,
			Errors: 6}}}}}, t0, Gates{MaxRuleErrors: i64p(5)}, [4]int{0, 1, 0, 0}, SignalRuleErrors, "gate maxFailed 0"},
		{"rule errors within maxRuleErrors", map[string]store.Gateway{"g0": {Status: proto.Status{Conditions: []proto.Condition{{Kind: "ruleset", Name: "filter", ResourceVersion: 10, Applied: true,
			Errors: 5}}}}}, t0, Gates{MaxRuleErrors: i64p(5)}, [4]int{1, 0, 0, 0}, "", ""},
		{"rule errors without the gate", map[string]store.Gateway{"g0": {Status: proto.Status{Conditions: []proto.Condition{{Kind: "ruleset", Name: "filter", ResourceVersion: 10, Applied: true,
			Errors: 500}}}}}, t0, Gates{}, [4]int{1, 0, 0, 0}, "", ""},
		{"rule errors of the old revision do not count", map[string]store.Gateway{"g0": {Status: proto.Status{Conditions: []proto.Condition{{Kind: "ruleset", Name: "filter", ResourceVersion: 9, Applied: true,
			Errors: 500}}}}}, t0, Gates{MaxRuleErrors: i64p(0)}, [4]int{0, 0, 0, 1}, "", ""},
		{"queue grew past maxQueueGrowth", map[string]store.Gateway{"g0": {Status: proto.Status{Conditions: []proto.Condition{{Kind: "ruleset", Name: "filter", ResourceVersion: 10, Applied: true,
			Queue: 1500, QueueStart: 400}}}}}, t0, Gates{MaxQueueGrowth: i64p(1000)}, [4]int{0, 1, 0, 0}, SignalQueueGrowth, "gate maxFailed 0"},
		{"queue within maxQueueGrowth", map[string]store.Gateway{"g0": {Status: proto.Status{Conditions: []proto.Condition{{Kind: "ruleset", Name: "filter", ResourceVersion: 10, Applied: true,
			Queue: 1400, QueueStart: 400}}}}}, t0, Gates{MaxQueueGrowth: i64p(1000)}, [4]int{1, 0, 0, 0}, "", ""},
		{"a queue that was long before is not growth", map[string]store.Gateway{"g0": {Status: proto.Status{Conditions: []proto.Condition{{Kind: "ruleset", Name: "filter", ResourceVersion: 10, Applied: true,
			Queue: 90000, QueueStart: 90000}}}}}, t0, Gates{MaxQueueGrowth: i64p(0)}, [4]int{1, 0, 0, 0}, "", ""},
		{"component running", map[string]store.Gateway{"g0": {Status: proto.Status{Conditions: []proto.Condition{{Kind: "ruleset", Name: "filter", ResourceVersion: 10, Applied: true,
			State: "running"}}}}}, t0, Gates{}, [4]int{1, 0, 0, 0}, "", ""},
		{"stuck past the deadline", map[string]store.Gateway{"g0": {LastSeen: t0.Add(time.Second), Status: cond(9, true, "")}, "g1": {Status: ok}}, t0.Add(6 * time.Minute),
			Gates{MaxFailedPercent: fp(50)}, [4]int{1, 0, 1, 0}, SignalStuck, ""},
		{"percent gate", map[string]store.Gateway{"g0": {LastSeen: t0.Add(time.Second)}, "g1": {Status: ok}, "g2": {Status: ok}}, t0.Add(6 * time.Minute),
			Gates{MaxFailedPercent: fp(30)}, [4]int{2, 0, 1, 0}, SignalStuck, "33.3% (gate maxFailedPercent 30)"},
		{"silent", map[string]store.Gateway{"g0": {LastSeen: t0.Add(-time.Hour)}}, t0.Add(6 * time.Minute), Gates{MaxFailed: intp(1), MaxBricked: intp(0)},
			[4]int{0, 0, 1, 0}, SignalSilent, "bricked"},
		{"before the deadline: pending", map[string]store.Gateway{"g0": {LastSeen: t0.Add(-time.Hour)}}, t0.Add(4 * time.Minute), Gates{}, [4]int{0, 0, 0, 1}, "", ""},
		{"unregistered", map[string]store.Gateway{}, t0, Gates{MaxFailed: intp(0)}, [4]int{0, 1, 0, 0}, SignalSilent, "gate maxFailed 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &rolloutDoc{Rollout: Rollout{Name: "r", FromRevision: 5, ToRevision: 10, State: RolloutRunning, Deadline: "5m", Gates: tt.gates,
				Waves: []WaveStatus{{Name: "w", State: WaveRunning}}}, Slot: "ruleset/filter", Plan: []wavePlan{{Started: t0}}}
			gws := map[string]*store.Gateway{}
			for id, g := range tt.gws {
				g.ID = id
				gws[id] = &g
				d.Plan[0].Members = append(d.Plan[0].Members, id)
			}
			if tt.name == "unregistered" {
				d.Plan[0].Members = []string{"gone"}
			}
			as := d.assess(gws, tt.now)
			w := d.Waves[0]
			if got := [4]int{w.Applied, w.Failed, w.Stuck, as[0].pending}; got != tt.want {
				t.Fatalf("applied, failed, stuck, pending = %v, want %v", got, tt.want)
			}
			if tt.signal != "" && (len(as[0].failing) == 0 || as[0].failing[0].Signal != tt.signal) {
				t.Fatalf("failing %+v, want signal %s", as[0].failing, tt.signal)
			}
			got := d.breach(0, as[0])
			if tt.breach == "" && got != "" || tt.breach != "" && !strings.Contains(got, tt.breach) {
				t.Fatalf("breach %q, want %q", got, tt.breach)
			}
		})
	}
}

func TestPlanWaves(t *testing.T) {
	var targets []string
	labels := map[string]map[string]string{}
	for _, id := range []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"} {
		targets = append(targets, id)
		labels[id] = map[string]string{}
	}
	labels["h"]["ring"] = "canary"
	one, p := 1, func(v float64) *float64 { return &v }
	st, pl := planWaves([]WaveSpec{{Name: "canary", Selector: "ring=canary"}, {Name: "one", Count: &one}, {Name: "q", Percent: p(25)}, {Name: "half", Percent: p(50)}}, targets, labels)
	got := []string{}
	for i := range st {
		got = append(got, st[i].Name+":"+strings.Join(pl[i].Members, ","))
	}
	want := "canary:h one:a q:b half:c,d rest:e,f,g,i,j" // percents are cumulative over all waves: 25% of 10 = 3 so far
	if strings.Join(got, " ") != want {
		t.Fatalf("plan %v, want %s", got, want)
	}
}

// FuzzRolloutRequest: any body decodes and validates without panicking, and
// a valid one plans waves that cover every target exactly once.
func FuzzRolloutRequest(f *testing.F) {
	f.Add([]byte(`{"name":"r","object":{"kind":"ruleset","name":"x"},"spec":{"sql":"v"},"selector":"a=b","waves":[{"name":"c","selector":"ring=canary"},{"name":"p","percent":25},{"name":"n","count":3}],"soak":"1s","deadline":"5m","gates":{"maxFailedPercent":2,"maxFailed":1}}`))
	f.Add([]byte(`{"waves":[{"name":"p","percent":1e308},{"name":"q","percent":-0}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var req RolloutRequest
		if json.Unmarshal(b, &req) != nil || validateRollout(&req) != nil {
			return
		}
		targets := []string{"a", "b", "c", "d", "e", "f", "g"}
		labels := map[string]map[string]string{"a": {"ring": "canary"}, "b": {}, "c": {}, "d": {}, "e": {}, "f": {}, "g": {}}
		st, pl := planWaves(req.Waves, targets, labels)
		seen := map[string]int{}
		for i := range pl {
			if st[i].Targets != len(pl[i].Members) {
				t.Fatalf("wave %s: %d targets, %d members", st[i].Name, st[i].Targets, len(pl[i].Members))
			}
			for _, id := range pl[i].Members {
				seen[id]++
			}
		}
		for _, id := range targets {
			if seen[id] != 1 {
				t.Fatalf("%s in %d waves", id, seen[id])
			}
		}
	})
}

// An agent-version rollout: the gateway's condition carries the trial's
// state; only "committed" counts as applied, a failed trial fails it.
func TestRolloutGatesAgentVersion(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		state  string
		want   [4]int
		signal string
	}{
		{"trial", [4]int{0, 0, 0, 1}, ""},
		{"downloading", [4]int{0, 0, 0, 1}, ""},
		{"committed", [4]int{1, 0, 0, 0}, ""},
		{"rolled_back", [4]int{0, 1, 0, 0}, SignalOTATrial},
		{"failed", [4]int{0, 1, 0, 0}, SignalOTATrial},
	} {
		t.Run(tt.state, func(t *testing.T) {
			d := &rolloutDoc{Rollout: Rollout{Name: "r", FromRevision: 5, ToRevision: 10, State: RolloutRunning, Deadline: "5m",
				Waves: []WaveStatus{{Name: "w", State: WaveRunning}}}, Slot: "agentversion/agent", Plan: []wavePlan{{Started: t0, Members: []string{"g0"}}}}
			g := &store.Gateway{ID: "g0", Status: proto.Status{Conditions: []proto.Condition{{Kind: proto.KindAgentVersion, Name: "agent", ResourceVersion: 10, Applied: true,
				State: tt.state, Reason: "health gate: exited 2"}}}}
			as := d.assess(map[string]*store.Gateway{"g0": g}, t0)
			w := d.Waves[0]
			if got := [4]int{w.Applied, w.Failed, w.Stuck, as[0].pending}; got != tt.want {
				t.Fatalf("applied, failed, stuck, pending = %v, want %v", got, tt.want)
			}
			if tt.signal != "" && (len(as[0].failing) == 0 || as[0].failing[0].Signal != tt.signal || !strings.Contains(as[0].failing[0].Detail, "exited 2")) {
				t.Fatalf("failing %+v, want signal %s with the reason", as[0].failing, tt.signal)
			}
		})
	}
}
