package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/proto"
	"github.com/outpost-edge/outpost/internal/fleet/store"
)

// rolloutLock is the singleton lock key of the rollout orchestrator.
const rolloutLock int64 = 0x6f7574706f7372 // "outposr"

// RolloutList is the answer of GET /api/v1/rollouts.
type RolloutList struct {
	Items []Rollout `json:"items"`
}

func (s *Server) wakeRollouts() {
	select {
	case s.rolloutWake <- struct{}{}:
	default:
	}
}

// gatewayMap reads every gateway (their last reports) from the store.
func (s *Server) gatewayMap(ctx context.Context) (map[string]*store.Gateway, error) {
	gws, err := s.st.ListGateways(ctx)
	if err != nil {
		return nil, err
	}
	m := make(map[string]*store.Gateway, len(gws))
	for i := range gws {
		m[gws[i].ID] = &gws[i]
	}
	return m, nil
}

// view is the API view; live counts (and the failing gateways) for a
// rollout still in progress.
func (s *Server) view(d *rolloutDoc, gws map[string]*store.Gateway) Rollout {
	if !terminal(d.State) && d.State != RolloutHalted && gws != nil {
		as := d.assess(gws, s.opt.Now())
		if len(d.Failing) == 0 {
			for _, a := range as {
				d.Failing = append(d.Failing, a.failing...)
			}
		}
	}
	for i := range d.Waves {
		d.Waves[i].Started, d.Waves[i].SoakUntil = nil, nil
		if t := d.Plan[i].Started; !t.IsZero() {
			d.Waves[i].Started = &t
		}
		if t := d.Plan[i].SoakUntil; !t.IsZero() {
			d.Waves[i].SoakUntil = &t
		}
	}
	r := d.Rollout
	if r.Failing == nil {
		r.Failing = []Failing{}
	}
	if len(r.Failing) > maxFailing {
		r.Failing = r.Failing[:maxFailing]
	}
	return r
}

// maxFailing bounds the failing list kept and shown.
const maxFailing = 100

func (s *Server) handleRolloutList(w http.ResponseWriter, r *http.Request) {
	ros, err := s.st.ListRollouts(r.Context())
	if err != nil {
		s.internal(w, "rollouts", err)
		return
	}
	docs := make([]*rolloutDoc, 0, len(ros))
	live := false // only a rollout in progress shows live counts (view)
	for _, ro := range ros {
		d, err := decodeRollout(ro)
		if err != nil {
			s.internal(w, "rollouts", err)
			return
		}
		docs = append(docs, d)
		live = live || !terminal(d.State) && d.State != RolloutHalted
	}
	// Every gateway's report is read only when a rollout needs live counts:
	// at 10,000 gateways that read is most of the answer's time
	// (bench/dashboardload: 280 ms on a loaded machine, with no rollout at all).
	var gws map[string]*store.Gateway
	if live {
		gws, err = s.gatewayMap(r.Context())
		if err != nil {
			s.internal(w, "rollouts", err)
			return
		}
	}
	out := RolloutList{Items: []Rollout{}}
	for _, d := range docs {
		out.Items = append(out.Items, s.view(d, gws))
	}
	sort.Slice(out.Items, func(i, j int) bool { return out.Items[i].Created.After(out.Items[j].Created) })
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleRolloutGet(w http.ResponseWriter, r *http.Request) {
	ro, err := s.st.GetRollout(r.Context(), r.PathValue("name"))
	if err != nil {
		s.storeErr(w, "rollout", err)
		return
	}
	d, err := decodeRollout(ro)
	if err != nil {
		s.internal(w, "rollout", err)
		return
	}
	gws, err := s.gatewayMap(r.Context())
	if err != nil {
		s.internal(w, "rollout", err)
		return
	}
	writeJSON(w, http.StatusOK, s.view(d, gws))
}

func (s *Server) handleRolloutCreate(w http.ResponseWriter, r *http.Request) {
	var req RolloutRequest
	if !s.decode(w, r, &req) {
		return
	}
	if err := validateRollout(&req); err != nil {
		writeErr(w, http.StatusBadRequest, err.Error())
		return
	}
	ctx := r.Context()
	s.sync(ctx)
	obj, err := s.st.GetObject(ctx, req.Object.Kind, req.Object.Name)
	create := false
	switch {
	case errors.Is(err, store.ErrNotFound) && req.Create == nil:
		writeErr(w, http.StatusBadRequest, fmt.Sprintf("object: %s/%s does not exist (create it first: PUT /api/v1/objects/%s/%s, or give create: {target: ...} to roll out a new object)",
			req.Object.Kind, req.Object.Name, req.Object.Kind, req.Object.Name))
		return
	case errors.Is(err, store.ErrNotFound):
		if req.Revision != 0 {
			writeErr(w, http.StatusBadRequest, fmt.Sprintf("revision: %s/%s does not exist yet and has no revisions: give spec", req.Object.Kind, req.Object.Name))
			return
		}
		// A brand-new object: created with the rollout; gateways outside
		// the released waves do not get it at all.
		create = true
		obj = proto.Object{Kind: req.Object.Kind, ID: req.Object.Name, Name: req.Create.Name, Target: req.Create.Target, Labels: req.Create.Labels}
		if obj.Name == "" {
			obj.Name = obj.ID
		}
	case err != nil:
		s.internal(w, "rollout", err)
		return
	case req.Create != nil:
		writeErr(w, http.StatusBadRequest, fmt.Sprintf("create: %s/%s exists: a rollout changes its spec, not its name or target (omit create:)", obj.Kind, obj.ID))
		return
	}
	spec := req.Spec
	if req.Revision != 0 {
		rev, err := s.st.GetObjectRevision(ctx, obj.Kind, obj.ID, req.Revision)
		if errors.Is(err, store.ErrNotFound) {
			writeErr(w, http.StatusBadRequest, fmt.Sprintf("revision: %s/%s has no revision %d", obj.Kind, obj.ID, req.Revision))
			return
		} else if err != nil {
			s.internal(w, "rollout", err)
			return
		}
		spec = rev.Spec
	}
	next := obj
	next.Spec = spec
	if err := ValidateObject(next); err != nil {
		msg := err.Error()
		if create && (strings.HasPrefix(msg, "target") || strings.HasPrefix(msg, "name:") || strings.HasPrefix(msg, "labels:")) {
			msg = "create." + msg // the fields of the new object
		}
		writeErr(w, http.StatusBadRequest, msg)
		return
	}
	if b, err := json.Marshal(next.Spec); err == nil {
		next.Spec = b
	}
	// The gateways the rollout does not reach yet keep what they run now:
	// the object's current revision, or what an earlier (aborted, rolled
	// back) rollout of it still holds them at.
	from := obj.ResourceVersion // 0 for a new object: held gateways have none
	ros, err := s.st.ListRollouts(ctx)
	if err != nil {
		s.internal(w, "rollout", err)
		return
	}
	var latest *rolloutDoc
	for _, ro := range ros {
		if ro.Kind != obj.Kind || ro.ObjectID != obj.ID {
			continue
		}
		d, err := decodeRollout(ro)
		if err != nil {
			s.internal(w, "rollout", err)
			return
		}
		if !terminal(d.State) {
			writeErr(w, http.StatusConflict, fmt.Sprintf("object: %s/%s is being rolled out by %s (%s): abort or roll it back first", obj.Kind, obj.ID, d.Name, d.State))
			return
		}
		if latest == nil || d.ToRevision > latest.ToRevision {
			latest = d
		}
	}
	if latest != nil && latest.State != RolloutDone && latest.ToRevision == obj.ResourceVersion {
		from = latest.FromRevision // the earlier rollout still holds its targets there
	}
	var newObj *proto.Object
	if create {
		newObj = &next
	}
	targets, labels, err := s.cache.targets(obj.Kind, obj.ID, req.Selector, newObj)
	if err != nil {
		s.storeErr(w, "rollout", err)
		return
	}
	waves, plan := planWaves(req.Waves, targets, labels)
	now := s.opt.Now().UTC().Truncate(time.Millisecond)
	d := &rolloutDoc{
		Rollout: Rollout{Name: req.Name, Object: ObjectRef{Kind: obj.Kind, Name: obj.ID}, FromRevision: from, Selector: req.Selector,
			State: RolloutRunning, Failing: []Failing{}, Waves: waves, Created: now, Updated: now,
			Soak: req.Soak, Deadline: req.Deadline, Gates: req.Gates, AutoRollback: req.AutoRollback},
		ObjectID: obj.ID, Slot: slotKey(obj.Kind, obj.Name), Plan: plan,
	}
	if d.Soak == "" {
		d.Soak = "0s"
	}
	if d.Deadline == "" {
		d.Deadline = defaultDeadline.String()
	}
	put := next
	put.ResourceVersion = obj.ResourceVersion // the object must not change under us
	if create {
		put.ResourceVersion = -1 // nor appear
	}
	ro, err := s.st.PutRollout(ctx, store.Rollout{Name: d.Name, Kind: obj.Kind, ObjectID: obj.ID, Slot: d.Slot}, -1, &put,
		func(objRV int64) (json.RawMessage, error) {
			d.ToRevision = objRV
			return json.Marshal(d)
		})
	if err != nil {
		s.storeErr(w, "rollout", err)
		return
	}
	d.ResourceVersion = ro.ResourceVersion
	s.sync(ctx)
	s.wakeRollouts()
	s.log.Info("fleet: rollout created", "rollout", d.Name, "object", d.Slot, "from", d.FromRevision, "to", d.ToRevision, "targets", len(targets))
	writeJSON(w, http.StatusCreated, s.view(d, nil))
}

// Rollout actions (POST /api/v1/rollouts/{name}/{action}).
const (
	ActionPause    = "pause"
	ActionResume   = "resume"
	ActionAbort    = "abort"
	ActionRollback = "rollback"
)

func (s *Server) handleRolloutAction(w http.ResponseWriter, r *http.Request) {
	action := r.PathValue("action")
	switch action {
	case ActionPause, ActionResume, ActionAbort, ActionRollback:
	default:
		writeErr(w, http.StatusNotFound, fmt.Sprintf("action: %q: want pause, resume, abort or rollback", action))
		return
	}
	var req ActionRequest
	if !s.decode(w, r, &req) {
		return
	}
	if req.ResourceVersion <= 0 {
		writeErr(w, http.StatusBadRequest, "resourceVersion: required: the rollout's resourceVersion you act on (from GET)")
		return
	}
	ctx := r.Context()
	ro, err := s.st.GetRollout(ctx, r.PathValue("name"))
	if err != nil {
		s.storeErr(w, "rollout", err)
		return
	}
	d, err := decodeRollout(ro)
	if err != nil {
		s.internal(w, "rollout", err)
		return
	}
	if d.ResourceVersion != req.ResourceVersion {
		writeErr(w, http.StatusConflict, fmt.Sprintf("resourceVersion: rollout %s is at resourceVersion %d, not %d: read it again", d.Name, d.ResourceVersion, req.ResourceVersion))
		return
	}
	now := s.opt.Now().UTC()
	bad := func() {
		writeErr(w, http.StatusConflict, fmt.Sprintf("rollout %s is %s: cannot %s", d.Name, d.State, action))
	}
	switch action {
	case ActionPause:
		if d.State != RolloutRunning {
			bad()
			return
		}
		d.State, d.Reason = RolloutPaused, "paused by an operator"
	case ActionResume:
		if d.State != RolloutPaused && d.State != RolloutHalted {
			bad()
			return
		}
		for i := range d.Waves {
			if d.Waves[i].State == WaveHalted {
				// The halted wave runs again; its gates are checked again.
				d.Waves[i].State = WaveRunning
				d.Plan[i].Started = now
			}
		}
		d.State, d.Reason, d.Failing = RolloutRunning, "resumed by an operator", []Failing{}
	case ActionAbort:
		if terminal(d.State) {
			bad()
			return
		}
		d.State, d.Reason = RolloutAborted, "aborted by an operator: released gateways keep the new revision, the others the old"
	case ActionRollback:
		if d.State == RolloutRolledBack {
			bad()
			return
		}
		d.State, d.Reason = RolloutRolledBack, "rolled back by an operator: every target back at "+backTo(d.FromRevision)
	}
	if err := s.writeRollout(ctx, d, now); err != nil {
		s.storeErr(w, "rollout", err)
		return
	}
	s.sync(ctx)
	s.wakeRollouts()
	s.log.Info("fleet: rollout "+action, "rollout", d.Name, "state", d.State)
	gws, err := s.gatewayMap(ctx)
	if err != nil {
		gws = nil
	}
	writeJSON(w, http.StatusOK, s.view(d, gws))
}

// writeRollout stores d if it is still at d.ResourceVersion
// (store.ErrConflict otherwise) and moves d to its new resourceVersion.
func (s *Server) writeRollout(ctx context.Context, d *rolloutDoc, now time.Time) error {
	d.Updated = now.UTC().Truncate(time.Millisecond)
	if len(d.Failing) > maxFailing {
		d.Failing = d.Failing[:maxFailing]
	}
	ro, err := s.st.PutRollout(ctx, store.Rollout{Name: d.Name, Kind: d.Object.Kind, ObjectID: d.ObjectID, Slot: d.Slot}, d.ResourceVersion, nil,
		func(int64) (json.RawMessage, error) { return json.Marshal(d) })
	if err != nil {
		return err
	}
	d.ResourceVersion = ro.ResourceVersion
	return nil
}

// orchestrate runs the rollouts while this replica holds the singleton
// lock (PostgreSQL advisory lock; in-process on SQLite), until ctx ends.
// Every step reads the rollouts and the gateways' reports from the store,
// so a replica taking over resumes exactly where the last one stopped;
// every change is a compare-and-set on the rollout's resourceVersion, so
// even two orchestrators at once cannot release a wave twice.
func (s *Server) orchestrate(ctx context.Context) {
	var release func()
	defer func() {
		if release != nil {
			release()
		}
	}()
	tick := time.NewTicker(s.opt.RolloutTick)
	defer tick.Stop()
	var lastTry, lastStep time.Time
	active := false
	for {
		now := time.Now()
		if release == nil && now.Sub(lastTry) >= time.Second {
			lastTry = now
			rel, ok, err := s.st.TryLock(ctx, rolloutLock)
			if err != nil && ctx.Err() == nil {
				s.log.Warn("fleet: rollout lock", "err", err)
			}
			if ok {
				release = rel
				s.log.Info("fleet: this replica runs the rollouts")
			}
		}
		// While a rollout is in progress, step on reports and ticks, at
		// most once per tick (a step reads every gateway's report, so a
		// burst of reports costs one read per tick, not one each);
		// otherwise when woken (a report here, a rollout changed on any replica)
		// or every RolloutPoll.
		if release != nil && (active && now.Sub(lastStep) >= s.opt.RolloutTick || now.Sub(lastStep) >= s.opt.RolloutPoll) {
			lastStep = now
			var err error
			active, err = s.stepRollouts(ctx)
			if err != nil && ctx.Err() == nil {
				s.log.Warn("fleet: rollouts", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-s.rolloutWake:
			active = true
		}
	}
}

// stepRollouts advances every rollout in progress once; active reports
// whether any is still in progress.
func (s *Server) stepRollouts(ctx context.Context) (active bool, err error) {
	ros, err := s.st.ListRollouts(ctx)
	if err != nil {
		return false, err
	}
	var gws map[string]*store.Gateway
	for _, ro := range ros {
		d, err := decodeRollout(ro)
		if err != nil {
			return active, err
		}
		if d.State != RolloutRunning && d.State != RolloutPaused {
			continue
		}
		active = true
		if gws == nil {
			if gws, err = s.gatewayMap(ctx); err != nil {
				return active, err
			}
		}
		now := s.opt.Now().UTC()
		changed := false
		for range 4*len(d.Waves) + 8 {
			if !s.advance(d, gws, now) {
				break
			}
			changed = true
			if d.State != RolloutRunning && d.State != RolloutPaused {
				break
			}
		}
		if !changed {
			continue
		}
		if err := s.writeRollout(ctx, d, now); errors.Is(err, store.ErrConflict) {
			continue // an operator acted first: read it again next step
		} else if err != nil {
			return active, err
		}
		if d.State == RolloutHalted || d.State == RolloutRolledBack {
			s.halts.Inc()
			s.log.Warn("fleet: rollout halted", "rollout", d.Name, "state", d.State, "reason", d.Reason)
		}
	}
	if active {
		s.sync(ctx)
	}
	return active, nil
}

// advance makes one transition of d (in memory) and reports whether it
// made one: a gate breach halts; the watchdog sends gateways past the
// deadline back; a wave whose members all reported soaks, then completes;
// the next wave is released; the last one done ends the rollout.
func (s *Server) advance(d *rolloutDoc, gws map[string]*store.Gateway, now time.Time) bool {
	as := d.assess(gws, now)
	stuck := false
	for _, a := range as {
		for id, sig := range a.newStuck {
			if d.Reverted == nil {
				d.Reverted = map[string]string{}
			}
			d.Reverted[id] = sig // the watchdog: back to the last good revision
			stuck = true
		}
	}
	// The stuck count against the gates, in the same write.
	for i, w := range d.Waves {
		if w.State == WavePending {
			continue
		}
		if reason := d.breach(i, as[i]); reason != "" {
			d.Waves[i].State = WaveHalted
			d.Failing = as[i].failing
			if d.AutoRollback {
				d.State = RolloutRolledBack
				d.Reason = reason + "; rolled back: every target back at " + backTo(d.FromRevision)
			} else {
				d.State = RolloutHalted
				d.Reason = reason + "; halted: no further gateway gets the new revision"
			}
			return true
		}
	}
	if stuck {
		return true
	}
	if d.State != RolloutRunning {
		return false
	}
	cur := -1
	for i, w := range d.Waves {
		if w.State != WaveDone {
			cur = i
			break
		}
	}
	if cur < 0 {
		d.State, d.Reason = RolloutDone, "every wave done"
		return true
	}
	w, p := &d.Waves[cur], &d.Plan[cur]
	switch w.State {
	case WavePending:
		w.State, p.Started = WaveRunning, now
		return true
	case WaveRunning:
		if as[cur].pending == 0 {
			if soak := d.soak(); soak > 0 {
				w.State, p.SoakUntil = WaveSoaking, now.Add(soak)
			} else {
				w.State = WaveDone
			}
			return true
		}
	case WaveSoaking:
		if !now.Before(p.SoakUntil) {
			w.State = WaveDone
			return true
		}
	}
	return false
}

// backTo says where a rollout's held and rolled-back gateways are.
func backTo(from int64) string {
	if from == 0 {
		return "no object (the rollout created it)"
	}
	return fmt.Sprintf("revision %d", from)
}
