package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"sync"

	"github.com/outpost-edge/outpost/internal/fleet/proto"
	"github.com/outpost-edge/outpost/internal/fleet/selector"
	"github.com/outpost-edge/outpost/internal/fleet/store"
	"github.com/outpost-edge/outpost/internal/fleet/twin"
)

// cache is the server's in-memory view of the store (the server-side
// informer): every object, every gateway's labels and revocation, and the
// recent change log. One goroutine follows the store's change log; watch
// streams read from here, so a change costs one store query, not one per
// connected gateway.
type cache struct {
	st store.Store
	store.Notifier
	// onRollout, when set, is called after catching up on a rollout's
	// change (made on this replica or, through the store's notifications,
	// on another), so the orchestrator steps at once instead of at its
	// next poll.
	onRollout func()
	catchMu   sync.Mutex // one catchUp at a time

	mu       sync.RWMutex
	rv       int64
	objects  map[string]*cobj          // kind/id
	slots    map[string]map[string]int // kind/name -> set of kind/id
	gateways map[string]cgw
	ring     []store.Event // recent events, oldest first
	ringMax  int
	// rollouts by name, and the pin of each object (kind/id) that has one:
	// the latest rollout of the object holds the gateways outside its
	// released waves at fromRevision.
	rollouts map[string]*pin
	pins     map[string]*pin
}

// pin is what one rollout does to resolution.
type pin struct {
	objKey   string // kind/id of the rolled-out object
	toRV     int64  // orders a object's rollouts: the latest wins
	active   bool   // not done
	ended    bool   // aborted or rolled back: holds only while the object is still at toRV
	sel      selector.Selector
	released map[string]bool
	from     *cobj // the object at fromRevision
	// absent: the rollout created the object (fromRevision 0): the
	// gateways it holds do not have the object at all, and resolve the
	// slot as if it did not exist (a fleet default, or nothing).
	absent bool
}

// holds reports whether the pin keeps gateway id at fromRevision when the
// object is at revision objRV. An aborted or rolled-back rollout holds the
// gateways off its toRevision only until the object changes again (an
// operator's direct change then reaches everyone, as without a rollout).
func (p *pin) holds(id string, labels map[string]string, objRV int64) bool {
	return p != nil && p.active && (p.from != nil || p.absent) && p.sel != nil && (!p.ended || objRV == p.toRV) && p.sel.Matches(labels) && !p.released[id]
}

type cobj struct {
	proto.Object
	sel selector.Selector
}

type cgw struct {
	labels  map[string]string
	serial  string
	revoked bool
}

func newCache(st store.Store) *cache {
	return &cache{st: st, ringMax: 50000}
}

func slotKey(kind, name string) string { return kind + "/" + name }

// load reads everything at the store's current rv.
func (c *cache) load(ctx context.Context) error {
	rv, err := c.st.CurrentRV(ctx)
	if err != nil {
		return err
	}
	objs, err := c.st.ListObjects(ctx)
	if err != nil {
		return err
	}
	gws, err := c.st.ListGateways(ctx)
	if err != nil {
		return err
	}
	ros, err := c.st.ListRollouts(ctx)
	if err != nil {
		return err
	}
	pins := map[string]*pin{}
	for _, r := range ros {
		p, err := c.readPin(ctx, r)
		if err != nil {
			return err
		}
		pins[r.Name] = p
	}
	twins, err := c.st.ListTwins(ctx, "")
	if err != nil {
		return err
	}
	for _, t := range twins {
		if t.DesiredVersion > 0 { // reported-only twins have nothing to send
			objs = append(objs, twinObject(t))
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rollouts = pins
	c.repinLocked()
	c.rv = rv
	c.objects = map[string]*cobj{}
	c.slots = map[string]map[string]int{}
	c.gateways = map[string]cgw{}
	for _, o := range objs {
		c.putLocked(o)
	}
	for _, g := range gws {
		c.gateways[g.ID] = cgw{labels: g.Labels, serial: g.CertSerial, revoked: g.Revoked}
	}
	return nil
}

func (c *cache) putLocked(o proto.Object) {
	key := o.Kind + "/" + o.ID
	if old := c.objects[key]; old != nil {
		delete(c.slots[slotKey(old.Kind, old.Name)], key)
	}
	sel, err := selector.Parse(o.Target.Selector)
	if err != nil {
		sel = nil // validated on write; an unparsable stored selector matches nothing
	}
	c.objects[key] = &cobj{Object: o, sel: sel}
	sk := slotKey(o.Kind, o.Name)
	if c.slots[sk] == nil {
		c.slots[sk] = map[string]int{}
	}
	c.slots[sk][key] = 1
}

func (c *cache) deleteLocked(kind, id string) {
	key := kind + "/" + id
	if old := c.objects[key]; old != nil {
		delete(c.slots[slotKey(old.Kind, old.Name)], key)
		delete(c.objects, key)
	}
}

// twinObject is a twin's desired side as a desired-state object: kind
// twin, slot named after the device, targeted at its one gateway. Twins
// travel on the watch stream like any object (see docs/twins.md for why).
func twinObject(t twin.Twin) proto.Object {
	spec, _ := json.Marshal(twin.SpecOf(t))
	return proto.Object{Kind: proto.KindTwin, ID: store.TwinEventID(t.Gateway, t.Device), Name: t.Device,
		Target: proto.Target{Gateway: t.Gateway}, Spec: spec, ResourceVersion: t.ResourceVersion, Updated: t.Metadata.DesiredUpdated}
}

func (c *cache) dropTwinsLocked(gateway string) {
	for key, o := range c.objects {
		if o.Kind == proto.KindTwin && o.Target.Gateway == gateway {
			delete(c.slots[slotKey(o.Kind, o.Name)], key)
			delete(c.objects, key)
		}
	}
}

// follow applies the store's new events to the cache until ctx ends.
func (c *cache) follow(ctx context.Context, changed <-chan struct{}, onErr func(error)) {
	for {
		if err := c.catchUp(ctx); err != nil && ctx.Err() == nil {
			onErr(err)
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

func (c *cache) catchUp(ctx context.Context) error {
	c.catchMu.Lock()
	defer c.catchMu.Unlock()
	for {
		c.mu.RLock()
		from := c.rv
		c.mu.RUnlock()
		evs, err := c.st.Events(ctx, from, 1000)
		if errors.Is(err, store.ErrCompacted) {
			if err := c.load(ctx); err != nil {
				return err
			}
			c.Broadcast()
			return nil
		}
		if err != nil {
			return err
		}
		if len(evs) == 0 {
			return nil
		}
		// Read the current state of what changed, then switch under the lock.
		objs := map[string]*proto.Object{}
		gws := map[string]*store.Gateway{}
		pins := map[string]*pin{}
		for _, e := range evs {
			if e.Kind == store.KindRollout {
				r, err := c.st.GetRollout(ctx, e.ID)
				if err != nil {
					return err
				}
				if pins[e.ID], err = c.readPin(ctx, r); err != nil {
					return err
				}
				continue
			}
			if e.Kind == store.KindGateway {
				g, err := c.st.GetGateway(ctx, e.ID)
				if errors.Is(err, store.ErrNotFound) {
					gws[e.ID] = nil
					continue
				} else if err != nil {
					return err
				}
				gws[e.ID] = &g
				continue
			}
			var o proto.Object
			var err error
			if e.Kind == proto.KindTwin {
				gw, _, _ := cutSlot(e.ID)
				var t twin.Twin
				if t, err = c.st.GetTwin(ctx, gw, e.Name); err == nil {
					o = twinObject(t)
				}
			} else {
				o, err = c.st.GetObject(ctx, e.Kind, e.ID)
			}
			if errors.Is(err, store.ErrNotFound) {
				objs[e.Kind+"/"+e.ID] = nil
				continue
			} else if err != nil {
				return err
			}
			objs[e.Kind+"/"+e.ID] = &o
		}
		c.mu.Lock()
		for name, p := range pins {
			c.rollouts[name] = p
		}
		if len(pins) > 0 {
			c.repinLocked()
		}
		for _, e := range evs {
			if e.Kind == store.KindRollout {
				continue
			}
			if e.Kind == store.KindGateway {
				if g := gws[e.ID]; g != nil {
					c.gateways[e.ID] = cgw{labels: g.Labels, serial: g.CertSerial, revoked: g.Revoked}
				} else {
					delete(c.gateways, e.ID)
					c.dropTwinsLocked(e.ID) // the store deleted them with the gateway
				}
				continue
			}
			if o := objs[e.Kind+"/"+e.ID]; o != nil {
				c.putLocked(*o)
			} else {
				c.deleteLocked(e.Kind, e.ID)
			}
		}
		c.ring = append(c.ring, evs...)
		if len(c.ring) > c.ringMax {
			c.ring = append([]store.Event(nil), c.ring[len(c.ring)-c.ringMax/2:]...)
		}
		c.rv = evs[len(evs)-1].RV
		c.mu.Unlock()
		c.Broadcast()
		if len(pins) > 0 && c.onRollout != nil {
			c.onRollout()
		}
	}
}

// readPin reads what rollout r does to resolution (with the object at
// its fromRevision).
func (c *cache) readPin(ctx context.Context, r store.Rollout) (*pin, error) {
	d, err := decodeRollout(r)
	if err != nil {
		return nil, err
	}
	p := &pin{objKey: r.Kind + "/" + r.ObjectID, toRV: d.ToRevision, active: d.State != RolloutDone, released: d.released(),
		ended: d.State == RolloutAborted || d.State == RolloutRolledBack}
	if !p.active {
		return p, nil
	}
	p.sel, err = selector.Parse(d.Selector)
	if err != nil {
		return nil, fmt.Errorf("server: rollout %s: selector: %w", r.Name, err)
	}
	if d.FromRevision == 0 {
		p.absent = true
		return p, nil
	}
	o, err := c.st.GetObjectRevision(ctx, r.Kind, r.ObjectID, d.FromRevision)
	if err != nil {
		return nil, fmt.Errorf("server: rollout %s: %w", r.Name, err)
	}
	p.from = &cobj{Object: o}
	return p, nil
}

// repinLocked recomputes which rollout pins each object: its latest.
func (c *cache) repinLocked() {
	c.pins = map[string]*pin{}
	for _, p := range c.rollouts {
		if cur := c.pins[p.objKey]; cur == nil || p.toRV > cur.toRV {
			c.pins[p.objKey] = p
		}
	}
}

// gateway returns a gateway's cached registry entry.
func (c *cache) gateway(id string) (cgw, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	g, ok := c.gateways[id]
	return g, ok
}

// since returns the events after rv up to the cache's rv (from memory when
// the ring holds them, else from the store; store.ErrCompacted when gone).
func (c *cache) since(ctx context.Context, rv int64) ([]store.Event, int64, error) {
	c.mu.RLock()
	cur := c.rv
	if rv >= cur {
		c.mu.RUnlock()
		return nil, cur, nil
	}
	if len(c.ring) > 0 && c.ring[0].RV <= rv+1 {
		i := sort.Search(len(c.ring), func(i int) bool { return c.ring[i].RV > rv })
		out := append([]store.Event(nil), c.ring[i:]...)
		c.mu.RUnlock()
		return out, cur, nil
	}
	c.mu.RUnlock()
	var out []store.Event
	for from := rv; from < cur; {
		evs, err := c.st.Events(ctx, from, 5000)
		if err != nil {
			return nil, 0, err
		}
		if len(evs) == 0 {
			break
		}
		for _, e := range evs {
			if e.RV <= cur {
				out = append(out, e)
			}
		}
		from = evs[len(evs)-1].RV
	}
	return out, cur, nil
}

// layer ranks how an object targets gateway id with labels: -1 = not at
// all, 0 fleet default, 1 selector group, 2 this gateway.
func (o *cobj) layer(id string, labels map[string]string) int {
	switch {
	case o.Target.Gateway != "":
		if o.Target.Gateway == id {
			return 2
		}
		return -1
	case o.Target.Selector == "":
		return 0
	case o.sel != nil && o.sel.Matches(labels):
		return 1
	}
	return -1
}

// winnerLocked resolves one slot for a gateway: highest layer, then highest
// priority, then lowest id; a winner a rollout holds back gives its
// fromRevision, or (a rollout that created it) makes way for the next.
func (c *cache) winnerLocked(sk, id string, labels map[string]string) *cobj {
	return c.winnerWithLocked(sk, id, labels, nil)
}

// winnerWithLocked is winnerLocked with extra (when not nil) as one more
// candidate for the slot: the object a new rollout is about to create.
func (c *cache) winnerWithLocked(sk, id string, labels map[string]string, extra *cobj) *cobj {
	var skip []*cobj // held back while absent: resolved without them
	skipped := func(o *cobj) bool {
		for _, x := range skip {
			if x == o {
				return true
			}
		}
		return false
	}
	for {
		var best *cobj
		bestLayer := -1
		consider := func(o *cobj) {
			l := o.layer(id, labels)
			if l < 0 || skipped(o) {
				return
			}
			if best == nil || l > bestLayer || l == bestLayer && (o.Target.Priority > best.Target.Priority ||
				o.Target.Priority == best.Target.Priority && o.ID < best.ID) {
				best, bestLayer = o, l
			}
		}
		for key := range c.slots[sk] {
			consider(c.objects[key])
		}
		if extra != nil {
			consider(extra)
		}
		if best == nil || best == extra {
			return best
		}
		p := c.pins[best.Kind+"/"+best.ID]
		if !p.holds(id, labels, best.ResourceVersion) {
			return best
		}
		if p.absent {
			skip = append(skip, best)
			continue
		}
		from := *p.from
		from.Name, from.Target = best.Name, best.Target
		return &from
	}
}

// targets returns the gateways a rollout of object kind/objID with
// selector sel reaches (those the object wins its slot for) and their
// labels.
//
// create, when not nil, is an object that does not exist yet (a rollout
// that creates it): the gateways it would win its slot for.
func (c *cache) targets(kind, objID, sel string, create *proto.Object) ([]string, map[string]map[string]string, error) {
	s, err := selector.Parse(sel)
	if err != nil {
		return nil, nil, err
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	o := c.objects[kind+"/"+objID]
	var extra *cobj
	if o == nil && create != nil {
		osel, err := selector.Parse(create.Target.Selector)
		if err != nil {
			return nil, nil, err
		}
		extra = &cobj{Object: *create, sel: osel}
		o = extra
	}
	if o == nil {
		return nil, nil, fmt.Errorf("%w: %s/%s", store.ErrNotFound, kind, objID)
	}
	sk := slotKey(o.Kind, o.Name)
	var ids []string
	labels := map[string]map[string]string{}
	for id, g := range c.gateways {
		if g.revoked || !s.Matches(g.labels) {
			continue
		}
		if w := c.winnerWithLocked(sk, id, g.labels, extra); w != nil && w.ID == o.ID {
			ids = append(ids, id)
			labels[id] = g.labels
		}
	}
	return ids, labels, nil
}

func desired(o *cobj) proto.Desired {
	return proto.Desired{Kind: o.Kind, Name: o.Name, ID: o.ID, ResourceVersion: o.ResourceVersion, Spec: o.Spec}
}

// document resolves the gateway's whole desired state.
func (c *cache) document(id string) (proto.Document, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	g, ok := c.gateways[id]
	if !ok {
		return proto.Document{}, fmt.Errorf("%w: gateway %s", store.ErrNotFound, id)
	}
	doc := proto.Document{Gateway: id, ResourceVersion: c.rv, Objects: []proto.Desired{}}
	for sk := range c.slots {
		if w := c.winnerLocked(sk, id, g.labels); w != nil {
			doc.Objects = append(doc.Objects, desired(w))
		}
	}
	sort.Slice(doc.Objects, func(i, j int) bool { return doc.Objects[i].Key() < doc.Objects[j].Key() })
	return doc, nil
}

// resolve returns, for each slot in slots (kind/name), the gateway's
// winner or nil; all = every slot known.
func (c *cache) resolve(id string, slots map[string]bool, all bool) (map[string]*proto.Desired, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	g, ok := c.gateways[id]
	if !ok || g.revoked {
		return nil, false
	}
	if all {
		slots = map[string]bool{}
		for sk := range c.slots {
			slots[sk] = true
		}
	}
	out := make(map[string]*proto.Desired, len(slots))
	for sk := range slots {
		if w := c.winnerLocked(sk, id, g.labels); w != nil {
			d := desired(w)
			out[sk] = &d
		} else {
			out[sk] = nil
		}
	}
	return out, true
}

// sentMark identifies what a watch stream sent for a slot (content and
// revision).
func sentMark(d *proto.Desired) string {
	if d == nil {
		return "deleted"
	}
	return d.Hash() + "@" + strconv.FormatInt(d.ResourceVersion, 10)
}

// marksAt returns the marks of gateway id's resolved slots if the cache is
// at rv (else nil): a watch from the cache's current rv starts from exactly
// what the gateway's List gave it.
func (c *cache) marksAt(id string, rv int64) map[string]string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	g, ok := c.gateways[id]
	if !ok || c.rv != rv {
		return nil
	}
	out := map[string]string{}
	for sk := range c.slots {
		if w := c.winnerLocked(sk, id, g.labels); w != nil {
			d := desired(w)
			out[sk] = sentMark(&d)
		}
	}
	return out
}
