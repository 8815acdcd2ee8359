package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/proto"
	"github.com/outpost-edge/outpost/internal/fleet/selector"
	"github.com/outpost-edge/outpost/internal/fleet/store"
)

// Rollout states.
const (
	RolloutRunning    = "running"
	RolloutPaused     = "paused"
	RolloutHalted     = "halted"
	RolloutAborted    = "aborted"
	RolloutRolledBack = "rolledback"
	RolloutDone       = "done"
)

// Wave states.
const (
	WavePending = "pending"
	WaveRunning = "running"
	WaveSoaking = "soaking"
	WaveDone    = "done"
	WaveHalted  = "halted"
)

// Failure signals (Failing.Signal).
const (
	SignalApplyError  = "apply_error"  // the gateway reported an error applying the new revision
	SignalHealth      = "health"       // the gateway reports health "broken"
	SignalOTATrial    = "ota_trial"    // fact ota_trial is "failed" or "rolled_back"
	SignalStuck       = "stuck"        // no report of the new revision within the wave's deadline
	SignalSilent      = "silent"       // nothing heard from the gateway since its wave started, past the deadline
	SignalRestarts    = "restarts"     // the rolled-out component restarted more than gates.maxRestarts times
	SignalRuleErrors  = "rule_errors"  // the rolled-out rule set's rules failed more than gates.maxRuleErrors times
	SignalQueueGrowth = "queue_growth" // the gateway's uplink backlog grew more than gates.maxQueueGrowth since it applied
)

// ObjectRef names the object a rollout changes: its kind and id (the id
// is the object's name in the objects API, /api/v1/objects/{kind}/{id}).
type ObjectRef struct {
	Kind string `json:"kind"`
	Name string `json:"name"`
}

// Failing is one gateway counted against a gate, and why.
type Failing struct {
	Gateway string `json:"gateway"`
	Signal  string `json:"signal"`
	Detail  string `json:"detail,omitempty"`
	Wave    string `json:"wave,omitempty"`
}

// WaveStatus is one wave's progress.
type WaveStatus struct {
	Name    string `json:"name"`
	State   string `json:"state"`
	Targets int    `json:"targets"`
	Applied int    `json:"applied"`
	Failed  int    `json:"failed"`
	Stuck   int    `json:"stuck"`
	// Started and SoakUntil are set once the wave is released / soaking.
	Started   *time.Time `json:"started,omitempty"`
	SoakUntil *time.Time `json:"soakUntil,omitempty"`
}

// Gates are a rollout's health thresholds, checked per wave. A threshold
// is the most failures tolerated: the gate breaks when a wave has more. With
// no threshold set, one failure breaks it (maxFailed 0).
type Gates struct {
	MaxFailedPercent *float64 `json:"maxFailedPercent,omitempty"`
	MaxFailed        *int     `json:"maxFailed,omitempty"`
	// MaxBricked counts gateways that report health "broken" or went silent.
	MaxBricked *int `json:"maxBricked,omitempty"`
	// MaxRestarts: a gateway whose component (the rolled-out object)
	// reports more restarts than this fails (signal "restarts"), before
	// the supervisor gives up and calls it broken.
	MaxRestarts *int `json:"maxRestarts,omitempty"`
	// MaxRuleErrors: a gateway whose rolled-out object reports more
	// run-time errors since it applied it fails (signal "rule_errors"; a
	// rule set's rules: evaluation and action errors).
	MaxRuleErrors *int64 `json:"maxRuleErrors,omitempty"`
	// MaxQueueGrowth: a gateway whose uplink backlog (records, all lanes)
	// grew by more than this since it applied the rolled-out object fails
	// (signal "queue_growth": what it now sends to the cloud does not get
	// through).
	MaxQueueGrowth *int64 `json:"maxQueueGrowth,omitempty"`
}

// Rollout is the API view of a rollout (GET /api/v1/rollouts/{name}).
type Rollout struct {
	Name            string       `json:"name"`
	Object          ObjectRef    `json:"object"`
	FromRevision    int64        `json:"fromRevision"`
	ToRevision      int64        `json:"toRevision"`
	Selector        string       `json:"selector"`
	State           string       `json:"state"`
	Reason          string       `json:"reason"`
	Failing         []Failing    `json:"failing"`
	Waves           []WaveStatus `json:"waves"`
	ResourceVersion int64        `json:"resourceVersion"`
	Created         time.Time    `json:"created"`
	Updated         time.Time    `json:"updated"`
	// Settings, as created.
	Soak         string `json:"soak"`
	Deadline     string `json:"deadline"`
	Gates        Gates  `json:"gates"`
	AutoRollback bool   `json:"autoRollback"`
}

// WaveSpec is one wave of a rollout request: exactly one of Selector
// (every remaining target matching it), Percent (cumulative: the waves so
// far reach this share of the targets) or Count (this many more).
type WaveSpec struct {
	Name     string   `json:"name"`
	Selector string   `json:"selector,omitempty"`
	Percent  *float64 `json:"percent,omitempty"`
	Count    *int     `json:"count,omitempty"`
}

// RolloutRequest is the body of POST /api/v1/rollouts.
type RolloutRequest struct {
	Name     string          `json:"name"`
	Object   ObjectRef       `json:"object"`
	Spec     json.RawMessage `json:"spec,omitempty"`
	Revision int64           `json:"revision,omitempty"`
	Selector string          `json:"selector"`
	Waves    []WaveSpec      `json:"waves"`
	Soak     string          `json:"soak"`
	Deadline string          `json:"deadline"`
	Gates    Gates           `json:"gates"`
	// AutoRollback rolls every released gateway back to fromRevision when a
	// gate breaks (else the rollout only halts).
	AutoRollback bool `json:"autoRollback"`
	// Create, for an object that does not exist yet, creates it together
	// with the rollout (fromRevision 0): gateways outside the released
	// waves resolve its slot as if it did not exist (nothing, or the
	// object it would override), and a rollback takes it away from those
	// that got it. Refused for an existing object (a rollout changes its
	// spec only).
	Create *RolloutCreate `json:"create,omitempty"`
}

// RolloutCreate is the rest of a new object a rollout creates (its spec is
// the rollout's spec).
type RolloutCreate struct {
	// Name is the slot the object fills on a gateway (default: its id).
	// The name of an existing object's slot layers the new object over
	// it where its target wins.
	Name   string            `json:"name,omitempty"`
	Target proto.Target      `json:"target"`
	Labels map[string]string `json:"labels,omitempty"`
}

// ActionRequest is the body of POST /api/v1/rollouts/{name}/{action}.
type ActionRequest struct {
	ResourceVersion int64 `json:"resourceVersion"`
}

// Default wave deadline when the request has none.
const defaultDeadline = 10 * time.Minute

// maxWaves bounds a rollout's waves.
const maxWaves = 100

// rolloutDoc is what the store keeps (store.Rollout.Doc): the API view plus
// the plan (who is in which wave, when it started).
type rolloutDoc struct {
	Rollout
	ObjectID string     `json:"objectId"`
	Slot     string     `json:"slot"` // the object's slot "kind/name"
	Plan     []wavePlan `json:"plan"`
	// Reverted are gateways the watchdog sent back to fromRevision.
	Reverted map[string]string `json:"reverted,omitempty"` // gateway -> signal
}

type wavePlan struct {
	Members   []string  `json:"members"`
	Started   time.Time `json:"started,omitzero"`
	SoakUntil time.Time `json:"soakUntil,omitzero"`
}

func (d *rolloutDoc) soak() time.Duration {
	v, _ := time.ParseDuration(d.Soak)
	return v
}

func (d *rolloutDoc) deadline() time.Duration {
	v, err := time.ParseDuration(d.Deadline)
	if err != nil || v <= 0 {
		return defaultDeadline
	}
	return v
}

// terminal reports a state no action leaves.
func terminal(state string) bool {
	return state == RolloutDone || state == RolloutAborted || state == RolloutRolledBack
}

// released is the set of gateways that run toRevision: the members of every
// wave that was started, except those the watchdog sent back; nobody after
// a rollback.
func (d *rolloutDoc) released() map[string]bool {
	out := map[string]bool{}
	if d.State == RolloutRolledBack {
		return out
	}
	for i, w := range d.Waves {
		if w.State == WavePending {
			continue
		}
		for _, id := range d.Plan[i].Members {
			if _, back := d.Reverted[id]; !back {
				out[id] = true
			}
		}
	}
	return out
}

func decodeRollout(r store.Rollout) (*rolloutDoc, error) {
	var d rolloutDoc
	if err := json.Unmarshal(r.Doc, &d); err != nil {
		return nil, fmt.Errorf("server: rollout %s: %w", r.Name, err)
	}
	d.ResourceVersion = r.ResourceVersion
	if len(d.Plan) != len(d.Waves) {
		return nil, fmt.Errorf("server: rollout %s: %d waves, %d plans", r.Name, len(d.Waves), len(d.Plan))
	}
	return &d, nil
}

// validateRollout checks a request; the error names the field.
func validateRollout(req *RolloutRequest) error {
	if !validID(req.Name) {
		return fmt.Errorf("name: %q: must be 1-128 letters, digits, _ . -", req.Name)
	}
	if !proto.KnownKind(req.Object.Kind) {
		return fmt.Errorf("object.kind: %q: want one of %s", req.Object.Kind, strings.Join(proto.Kinds, ", "))
	}
	if !validID(req.Object.Name) {
		return fmt.Errorf("object.name: %q: must be 1-128 letters, digits, _ . -", req.Object.Name)
	}
	switch {
	case len(req.Spec) > 0 && req.Revision != 0:
		return errors.New("spec: set spec or revision, not both")
	case len(req.Spec) == 0 && req.Revision == 0:
		return errors.New("spec: the new spec (or revision: an earlier revision of the object) is required")
	case req.Revision < 0:
		return fmt.Errorf("revision: %d: want a positive resourceVersion of the object", req.Revision)
	}
	if _, err := selector.Parse(req.Selector); err != nil {
		return fmt.Errorf("selector: %w", err)
	}
	if len(req.Waves) == 0 {
		return errors.New("waves: at least one wave is required")
	}
	if len(req.Waves) > maxWaves {
		return fmt.Errorf("waves: %d waves, at most %d", len(req.Waves), maxWaves)
	}
	seen := map[string]bool{}
	lastPct := 0.0
	for i, w := range req.Waves {
		f := fmt.Sprintf("waves[%d]", i)
		if !validID(w.Name) {
			return fmt.Errorf("%s.name: %q: must be 1-128 letters, digits, _ . -", f, w.Name)
		}
		if seen[w.Name] || w.Name == restWave {
			return fmt.Errorf("%s.name: %q is used twice (or reserved)", f, w.Name)
		}
		seen[w.Name] = true
		n := 0
		if w.Selector != "" {
			n++
			if _, err := selector.Parse(w.Selector); err != nil {
				return fmt.Errorf("%s.selector: %w", f, err)
			}
		}
		if w.Percent != nil {
			n++
			p := *w.Percent
			if math.IsNaN(p) || p <= 0 || p > 100 {
				return fmt.Errorf("%s.percent: %v: want more than 0, at most 100", f, p)
			}
			if p < lastPct {
				return fmt.Errorf("%s.percent: %v: percentages are cumulative and cannot go down (an earlier wave has %v)", f, p, lastPct)
			}
			lastPct = p
		}
		if w.Count != nil {
			n++
			if *w.Count < 1 {
				return fmt.Errorf("%s.count: %d: want at least 1", f, *w.Count)
			}
		}
		if n != 1 {
			return fmt.Errorf("%s: set exactly one of selector, percent, count", f)
		}
	}
	if req.Soak != "" {
		if d, err := time.ParseDuration(req.Soak); err != nil || d < 0 || d > 7*24*time.Hour {
			return fmt.Errorf("soak: %q: want a duration between 0s and 168h", req.Soak)
		}
	}
	if req.Deadline != "" {
		if d, err := time.ParseDuration(req.Deadline); err != nil || d <= 0 || d > 7*24*time.Hour {
			return fmt.Errorf("deadline: %q: want a duration between 1ms and 168h", req.Deadline)
		}
	}
	if g := req.Gates.MaxFailedPercent; g != nil && (math.IsNaN(*g) || *g < 0 || *g > 100) {
		return fmt.Errorf("gates.maxFailedPercent: %v: want 0-100", *g)
	}
	if g := req.Gates.MaxFailed; g != nil && *g < 0 {
		return fmt.Errorf("gates.maxFailed: %d: want 0 or more", *g)
	}
	if g := req.Gates.MaxBricked; g != nil && *g < 0 {
		return fmt.Errorf("gates.maxBricked: %d: want 0 or more", *g)
	}
	if g := req.Gates.MaxRestarts; g != nil && *g < 0 {
		return fmt.Errorf("gates.maxRestarts: %d: want 0 or more", *g)
	}
	if g := req.Gates.MaxRuleErrors; g != nil && *g < 0 {
		return fmt.Errorf("gates.maxRuleErrors: %d: want 0 or more", *g)
	}
	if g := req.Gates.MaxQueueGrowth; g != nil && *g < 0 {
		return fmt.Errorf("gates.maxQueueGrowth: %d: want 0 or more", *g)
	}
	return nil
}

// restWave names the wave added for targets no requested wave took.
const restWave = "rest"

// planWaves assigns the targets (sorted ids) to waves. Targets no wave
// took go to an extra last wave "rest", so a rollout that ends has reached
// every target.
func planWaves(waves []WaveSpec, targets []string, labels map[string]map[string]string) ([]WaveStatus, []wavePlan) {
	sort.Strings(targets)
	taken := map[string]bool{}
	var st []WaveStatus
	var pl []wavePlan
	total := len(targets)
	done := 0
	for _, w := range waves {
		var m []string
		switch {
		case w.Selector != "":
			sel, _ := selector.Parse(w.Selector)
			for _, id := range targets {
				if !taken[id] && sel.Matches(labels[id]) {
					m = append(m, id)
				}
			}
		case w.Percent != nil:
			want := int(math.Ceil(*w.Percent*float64(total)/100 - 1e-9))
			for _, id := range targets {
				if done+len(m) >= want {
					break
				}
				if !taken[id] {
					m = append(m, id)
				}
			}
		case w.Count != nil:
			for _, id := range targets {
				if len(m) >= *w.Count {
					break
				}
				if !taken[id] {
					m = append(m, id)
				}
			}
		}
		for _, id := range m {
			taken[id] = true
		}
		done += len(m)
		st = append(st, WaveStatus{Name: w.Name, State: WavePending, Targets: len(m)})
		pl = append(pl, wavePlan{Members: nonNil(m)})
	}
	var rest []string
	for _, id := range targets {
		if !taken[id] {
			rest = append(rest, id)
		}
	}
	if len(rest) > 0 {
		st = append(st, WaveStatus{Name: restWave, State: WavePending, Targets: len(rest)})
		pl = append(pl, wavePlan{Members: rest})
	}
	return st, pl
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// memberState is one wave member's assessment.
type memberState int

const (
	memberPending memberState = iota
	memberApplied
	memberFailed
	memberStuck
)

// assessMember says where gateway g (nil = not registered any more) stands
// on the rollout's new revision.
func (d *rolloutDoc) assessMember(id string, g *store.Gateway, slotKind, slotName string, started, now time.Time) (memberState, Failing, bool) {
	f := Failing{Gateway: id}
	if sig, back := d.Reverted[id]; back {
		f.Signal, f.Detail = sig, "sent back to "+backTo(d.FromRevision)
		return memberStuck, f, sig == SignalSilent
	}
	if g == nil {
		f.Signal, f.Detail = SignalSilent, "gateway no longer registered"
		return memberFailed, f, true
	}
	applied := false
	for _, c := range g.Status.Conditions {
		if c.Kind != slotKind || c.Name != slotName || c.ResourceVersion < d.ToRevision {
			continue
		}
		if !c.Applied || c.Error != "" {
			f.Signal, f.Detail = SignalApplyError, c.Error
			if f.Detail == "" {
				f.Detail = "not applied"
			}
			return memberFailed, f, false
		}
		// The live state of what the revision runs (fleet agents report it
		// for components and the agent version): a component that crash-
		// loops or failed to install, an agent build that failed its
		// trial, fail the gateway; an agent version still on its way is
		// not applied yet.
		switch {
		case c.State == "broken" || c.State == "install_failed":
			f.Signal, f.Detail = SignalHealth, withReason(c.Kind+" "+c.State, c.Reason)
			return memberFailed, f, c.State == "broken"
		case c.Kind == proto.KindAgentVersion && (c.State == "rolled_back" || c.State == "failed"):
			f.Signal, f.Detail = SignalOTATrial, withReason("OTA trial "+c.State, c.Reason)
			return memberFailed, f, false
		case c.Kind == proto.KindAgentVersion && c.State != "" && c.State != "committed":
			continue
		case d.Gates.MaxRestarts != nil && c.Restarts > *d.Gates.MaxRestarts:
			f.Signal, f.Detail = SignalRestarts, withReason(fmt.Sprintf("%s restarted %d times (gate maxRestarts %d)", c.Kind, c.Restarts, *d.Gates.MaxRestarts), c.Reason)
			return memberFailed, f, false
		case d.Gates.MaxRuleErrors != nil && c.Errors > *d.Gates.MaxRuleErrors:
			f.Signal, f.Detail = SignalRuleErrors, fmt.Sprintf("%s %s: %d run-time errors since applied (gate maxRuleErrors %d)", c.Kind, c.Name, c.Errors, *d.Gates.MaxRuleErrors)
			return memberFailed, f, false
		case d.Gates.MaxQueueGrowth != nil && c.Queue-c.QueueStart > *d.Gates.MaxQueueGrowth:
			f.Signal, f.Detail = SignalQueueGrowth, fmt.Sprintf("uplink backlog %d records, %d when applied (gate maxQueueGrowth %d)", c.Queue, c.QueueStart, *d.Gates.MaxQueueGrowth)
			return memberFailed, f, false
		}
		applied = true
	}
	if g.Status.Health == "broken" {
		f.Signal, f.Detail = SignalHealth, "health broken"
		return memberFailed, f, true
	}
	if t := g.Facts["ota_trial"]; t == "failed" || t == "rolled_back" {
		f.Signal, f.Detail = SignalOTATrial, "OTA trial "+t
		return memberFailed, f, false
	}
	if applied {
		return memberApplied, f, false
	}
	if !started.IsZero() && now.Sub(started) > d.deadline() {
		if g.LastSeen.Before(started) {
			f.Signal, f.Detail = SignalSilent, "not heard from since the wave started"
			return memberStuck, f, true
		}
		f.Signal, f.Detail = SignalStuck, "revision "+fmt.Sprint(d.ToRevision)+" not reported within "+d.deadline().String()
		return memberStuck, f, false
	}
	return memberPending, f, false
}

// waveAssessment is the result of assessing one started wave.
type waveAssessment struct {
	pending  int
	bricked  int
	failing  []Failing
	newStuck map[string]string // gateway -> signal: past the deadline, not yet sent back
}

// assess recounts every started wave from the gateways' reports (it
// updates d.Waves' counts) and returns per wave what the gates need.
func (d *rolloutDoc) assess(gws map[string]*store.Gateway, now time.Time) []waveAssessment {
	kind, name, _ := cutSlot(d.Slot)
	out := make([]waveAssessment, len(d.Waves))
	for i := range d.Waves {
		w := &d.Waves[i]
		w.Targets = len(d.Plan[i].Members)
		if w.State == WavePending {
			w.Applied, w.Failed, w.Stuck = 0, 0, 0
			continue
		}
		w.Applied, w.Failed, w.Stuck = 0, 0, 0
		a := &out[i]
		for _, id := range d.Plan[i].Members {
			st, f, bricked := d.assessMember(id, gws[id], kind, name, d.Plan[i].Started, now)
			f.Wave = w.Name
			switch st {
			case memberPending:
				a.pending++
			case memberApplied:
				w.Applied++
			case memberFailed:
				w.Failed++
				a.failing = append(a.failing, f)
			case memberStuck:
				w.Stuck++
				a.failing = append(a.failing, f)
				if _, back := d.Reverted[id]; !back {
					if a.newStuck == nil {
						a.newStuck = map[string]string{}
					}
					a.newStuck[id] = f.Signal
				}
			}
			if bricked {
				a.bricked++
			}
		}
	}
	return out
}

// breach says which gate wave i breaks ("" = none).
func (d *rolloutDoc) breach(i int, a waveAssessment) string {
	w := d.Waves[i]
	bad := w.Failed + w.Stuck
	g := d.Gates
	if g.MaxFailed == nil && g.MaxFailedPercent == nil && g.MaxBricked == nil {
		zero := 0
		g.MaxFailed = &zero
	}
	switch {
	case g.MaxFailed != nil && bad > *g.MaxFailed:
		return fmt.Sprintf("wave %s: %d of %d gateways failed (gate maxFailed %d)", w.Name, bad, w.Targets, *g.MaxFailed)
	case g.MaxFailedPercent != nil && w.Targets > 0 && float64(bad)*100 > *g.MaxFailedPercent*float64(w.Targets):
		return fmt.Sprintf("wave %s: %d of %d gateways failed, %.1f%% (gate maxFailedPercent %v)", w.Name, bad, w.Targets,
			float64(bad)*100/float64(w.Targets), *g.MaxFailedPercent)
	case g.MaxBricked != nil && a.bricked > *g.MaxBricked:
		return fmt.Sprintf("wave %s: %d gateways bricked (broken or silent) (gate maxBricked %d)", w.Name, a.bricked, *g.MaxBricked)
	}
	return ""
}

func withReason(what, reason string) string {
	if reason == "" {
		return what
	}
	return what + ": " + reason
}
