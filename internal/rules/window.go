package rules

import (
	"context"
	"encoding/json"
	"math"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/outpost-edge/outpost/internal/rules/parser"
)

// maxGroups bounds the open groups (over all open windows) of one rule.
const maxGroups = 100_000

// group is one GROUP BY key inside a window.
type group struct {
	Key    string     `json:"key"`
	Seq    int64      `json:"seq,omitempty"` // creation order within the rule: the emission order
	Aggs   []aggState `json:"aggs,omitempty"`
	Buf    []bufEntry `json:"buf,omitempty"`   // sliding and count windows: inputs of each event
	Start  int64      `json:"start,omitempty"` // session: first event; count: events seen
	Last   int64      `json:"last,omitempty"`  // session: last event time
	Count  int64      `json:"count,omitempty"` // count windows: events since the window opened
	Device string     `json:"device,omitempty"`
	Client string     `json:"client,omitempty"`
	Topic  string     `json:"topic,omitempty"`
	Hops   int        `json:"hops,omitempty"` // most republish hops of its messages
}

type bufEntry struct {
	T int64   `json:"t"`
	V []Value `json:"v"`
}

// pane is one time window (tumbling, hopping) with its groups in arrival
// order.
type pane struct {
	Start  int64    `json:"start"`
	End    int64    `json:"end"`
	Groups []*group `json:"groups"`
	index  map[string]*group
}

// stateShards is the number of lock stripes of a rule's window state (by
// GROUP BY key) and of its per-device state (by device).
const stateShards = 16

// winShard holds the groups whose key hashes to it, under its own lock.
type winShard struct {
	mu     sync.Mutex
	panes  []*pane  // tumbling, hopping: sorted by start
	groups []*group // session, sliding, count: one entry per key
	index  map[string]*group
	_      [64]byte // keep shards on separate cache lines
}

// windowState is a rule's open windows, sharded by GROUP BY key so that
// messages of different groups do not contend. Closing windows (the
// watermark passing the earliest window end, tracked in nextClose) locks
// every shard in order and emits in window then group creation order.
type windowState struct {
	shards    [stateShards]winShard
	wm        atomic.Int64 // logical watermark (late checks), >= closed
	maxEvent  atomic.Int64 // newest event time seen (event time)
	arrival   atomic.Int64 // wall clock (ns) of the newest message (event time, idle timeout)
	nGroups   atomic.Int64
	seq       atomic.Int64
	nextClose atomic.Int64 // at most the earliest end of an open time window; MaxInt64: none
	closed    int64        // windows ending at or before it are emitted; written with every shard locked
}

func newWindowState() *windowState {
	w := &windowState{}
	w.nextClose.Store(math.MaxInt64)
	for i := range w.shards {
		w.shards[i].index = map[string]*group{}
	}
	return w
}

func (w *windowState) shard(key string) *winShard {
	return &w.shards[hashString(key)%stateShards]
}

func (w *windowState) lockAll() {
	for i := range w.shards {
		w.shards[i].mu.Lock()
	}
}

func (w *windowState) unlockAll() {
	for i := range w.shards {
		w.shards[i].mu.Unlock()
	}
}

func atomicMax(a *atomic.Int64, v int64) {
	for {
		o := a.Load()
		if v <= o || a.CompareAndSwap(o, v) {
			return
		}
	}
}

func atomicMin(a *atomic.Int64, v int64) {
	for {
		o := a.Load()
		if v >= o || a.CompareAndSwap(o, v) {
			return
		}
	}
}

// windowJSON is the snapshot form of a windowState (unsharded, so that
// snapshots do not depend on the shard count).
type windowJSON struct {
	Panes     []*pane  `json:"panes,omitempty"`  // tumbling, hopping: sorted by start
	Groups    []*group `json:"groups,omitempty"` // session, sliding, count
	Watermark int64    `json:"watermark"`
	MaxEvent  int64    `json:"max_event"`
}

func bySeq(gs []*group) {
	sort.SliceStable(gs, func(i, j int) bool { return gs[i].Seq < gs[j].Seq })
}

// MarshalJSON writes the merged shards (it locks them).
func (w *windowState) MarshalJSON() ([]byte, error) {
	w.lockAll()
	defer w.unlockAll()
	j := windowJSON{Watermark: w.wm.Load(), MaxEvent: w.maxEvent.Load()}
	byStart := map[int64]*pane{}
	for i := range w.shards {
		sh := &w.shards[i]
		for _, p := range sh.panes {
			mp := byStart[p.Start]
			if mp == nil {
				mp = &pane{Start: p.Start, End: p.End}
				byStart[p.Start] = mp
				j.Panes = append(j.Panes, mp)
			}
			mp.Groups = append(mp.Groups, p.Groups...)
		}
		j.Groups = append(j.Groups, sh.groups...)
	}
	sort.Slice(j.Panes, func(a, b int) bool { return j.Panes[a].Start < j.Panes[b].Start })
	for _, p := range j.Panes {
		bySeq(p.Groups)
	}
	bySeq(j.Groups)
	return json.Marshal(&j)
}

// fits reports whether restored state has the shape rule r evaluates
// (a damaged snapshot is dropped rather than indexed out of range).
func (w *windowState) fits(r *Rule) bool {
	ok := func(g *group) bool {
		if r.win.kind == "sliding" || r.win.kind == "count" {
			for _, b := range g.Buf {
				if len(b.V) != len(r.aggs) {
					return false
				}
			}
			return len(g.Aggs) == 0
		}
		return len(g.Aggs) == len(r.aggs) && len(g.Buf) == 0
	}
	for i := range w.shards {
		sh := &w.shards[i]
		if r.win.kind == "tumbling" || r.win.kind == "hopping" {
			if len(sh.groups) > 0 {
				return false
			}
		} else if len(sh.panes) > 0 {
			return false
		}
		for _, p := range sh.panes {
			for _, g := range p.Groups {
				if !ok(g) {
					return false
				}
			}
		}
		for _, g := range sh.groups {
			if !ok(g) {
				return false
			}
		}
	}
	return true
}

// UnmarshalJSON distributes a snapshot over the shards.
func (w *windowState) UnmarshalJSON(b []byte) error {
	var j windowJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	w.nextClose.Store(math.MaxInt64)
	for i := range w.shards {
		w.shards[i] = winShard{index: map[string]*group{}}
	}
	w.wm.Store(j.Watermark)
	w.closed = j.Watermark
	w.maxEvent.Store(j.MaxEvent)
	var seq int64
	number := func(g *group) {
		if g.Seq == 0 { // snapshots before sharding: file order
			g.Seq = seq + 1
		}
		seq = max(seq, g.Seq)
	}
	for _, p := range j.Panes {
		for _, g := range p.Groups {
			if g == nil {
				continue
			}
			number(g)
			sp := w.shard(g.Key).pane(p.Start, p.End)
			sp.index[g.Key] = g
			sp.Groups = append(sp.Groups, g)
			w.nGroups.Add(1)
		}
	}
	for _, g := range j.Groups {
		if g == nil {
			continue
		}
		number(g)
		w.shard(g.Key).addGroup(g)
		w.nGroups.Add(1)
	}
	w.seq.Store(seq)
	if w.nGroups.Load() > 0 {
		w.nextClose.Store(math.MinInt64) // recomputed by the first close
	}
	return nil
}

// windowSpec is the compiled window of a rule.
type windowSpec struct {
	kind                   string
	size, hop, gap, maxLen int64 // ns
	count, every           int
	eventTime              bool
	lateness               int64
}

func newWindowSpec(w *parser.Window, eventTime bool, lateness int64) *windowSpec {
	s := &windowSpec{kind: w.Kind, size: int64(w.Size), hop: int64(w.Hop), count: w.Count, every: w.Every,
		eventTime: eventTime, lateness: lateness}
	if w.Kind == "session" {
		s.gap, s.maxLen, s.hop = int64(w.Hop), int64(w.MaxSize), 0
	}
	return s
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

// groupKey appends the encoded GROUP BY values to c.tmp and returns it as a
// string view (copied only when a new group is created).
func (r *Rule) groupKey(c *evalCtx) string {
	c.tmp = c.tmp[:0]
	for i, g := range r.groupBy {
		if i > 0 {
			c.tmp = append(c.tmp, 0)
		}
		c.tmp = appendJSON(c.tmp, g(c))
	}
	return bytesView(c.tmp)
}

// openGroup makes the group for key in a new window of w and counts it, or
// fails the message with reasonOverflow and returns nil when the rule
// already holds maxGroups open groups. The caller files it in its pane or
// shard.
func (r *Rule) openGroup(c *evalCtx, w *windowState, key string) *group {
	if w.nGroups.Load() >= maxGroups {
		c.fail(reasonOverflow)
		return nil
	}
	g := r.newGroup(c, key)
	g.Seq = w.seq.Add(1)
	w.nGroups.Add(1)
	return g
}

func (r *Rule) newGroup(c *evalCtx, key string) *group {
	g := &group{Key: strings.Clone(key)}
	if r.win.kind != "sliding" && r.win.kind != "count" {
		g.Aggs = make([]aggState, len(r.aggs))
	}
	return g
}

func (g *group) touch(c *evalCtx) {
	m := c.msg
	g.Hops = max(g.Hops, c.hops)
	if g.Device != m.DeviceID {
		g.Device = strings.Clone(m.DeviceID)
	}
	if g.Client != m.ClientID {
		g.Client = strings.Clone(m.ClientID)
	}
	if g.Topic != m.Topic {
		g.Topic = strings.Clone(m.Topic)
	}
}

func (r *Rule) feed(c *evalCtx, aggs []aggState) {
	for i := range r.aggs {
		a := &r.aggs[i]
		v := vTrue
		if a.arg != nil {
			v = a.arg(c)
		}
		aggs[i].add(c, a.kind, v)
	}
}

func (r *Rule) bufEntry(c *evalCtx, t int64) bufEntry {
	e := bufEntry{T: t, V: make([]Value, len(r.aggs))}
	for i := range r.aggs {
		a := &r.aggs[i]
		v := vTrue
		if a.arg != nil {
			v = a.arg(c)
		}
		e.V[i] = v.clone()
	}
	return e
}

// windowAdd adds the current message (which passed WHERE) to the rule's
// windows, locking the shard of its group. Windows that close because of
// this message are emitted (closeWindows).
func (r *Rule) windowAdd(ctx context.Context, e *Engine, c *evalCtx) error {
	w := r.state.win
	s := r.win
	t := c.evTime
	if s.eventTime {
		if now := c.clock(e).UnixNano(); now-w.arrival.Load() >= int64(time.Millisecond) {
			w.arrival.Store(now)
		}
	} else if t >= w.nextClose.Load() {
		// processing time: close what is due before adding
		if err := e.closeWindows(ctx, r, c, t); err != nil {
			return err
		}
	}
	key := r.groupKey(c)
	sh := w.shard(key)
	sh.mu.Lock()
	err := r.addLocked(ctx, e, c, w, sh, key, t)
	sh.mu.Unlock()
	if s.eventTime {
		if t > w.maxEvent.Load() {
			atomicMax(&w.maxEvent, t)
			atomicMax(&w.wm, t-s.lateness)
		}
		// also when another message raised the watermark while this one
		// opened a window that is already due
		if wm := w.wm.Load(); wm >= w.nextClose.Load() {
			if cerr := e.closeWindows(ctx, r, c, wm); err == nil {
				err = cerr
			}
		}
	}
	return err
}

// addLocked adds the message to its group in shard sh (locked).
func (r *Rule) addLocked(ctx context.Context, e *Engine, c *evalCtx, w *windowState, sh *winShard, key string, t int64) error {
	s := r.win
	late := w.wm.Load()
	if !s.eventTime {
		late = w.closed
		if t < late {
			// processing time: a concurrent close passed t; the clock now
			// is at least there (else the message is late, as after Flush)
			t = max(t, e.now().UnixNano())
		}
	}
	switch s.kind {
	case "tumbling", "hopping":
		first := floorDiv(t-s.size, s.hop)*s.hop + s.hop // earliest start whose window contains t
		added := false
		for start := first; start <= t; start += s.hop {
			if start > math.MaxInt64-s.size || start > math.MaxInt64-s.hop {
				break // a time at the end of int64 (a bogus timestamp)
			}
			end := start + s.size
			if end <= late {
				continue // already emitted
			}
			p := sh.pane(start, end)
			g := p.index[key]
			if g == nil {
				if g = r.openGroup(c, w, key); g == nil {
					continue
				}
				p.index[g.Key] = g
				p.Groups = append(p.Groups, g)
				atomicMin(&w.nextClose, end)
			}
			g.touch(c)
			r.feed(c, g.Aggs)
			added = true
		}
		if !added {
			c.fail(reasonLate)
		}
	case "session":
		if s.eventTime && t < late {
			c.fail(reasonLate)
			return nil
		}
		g := sh.index[key]
		if g != nil && (t-g.Last >= s.gap || (s.maxLen > 0 && t-g.Start >= s.maxLen)) {
			key = g.Key // emitting reuses c.tmp, which key points into
			if err := e.emitGroup(ctx, r, c, g, g.Aggs, winBounds{g.Start, g.Last + s.gap}); err != nil {
				c.fail(reasonAction)
			}
			sh.removeGroup(g)
			w.nGroups.Add(-1)
			g = nil
		}
		if g == nil {
			if g = r.openGroup(c, w, key); g == nil {
				return nil
			}
			g.Start = t
			sh.addGroup(g)
			end := t + s.gap
			if s.maxLen > 0 {
				end = min(end, t+s.maxLen)
			}
			atomicMin(&w.nextClose, end)
		}
		if t > g.Last {
			g.Last = t
		}
		g.touch(c)
		r.feed(c, g.Aggs)
	case "sliding":
		if s.eventTime && t < late {
			c.fail(reasonLate)
			return nil
		}
		g := sh.index[key]
		if g == nil {
			if g = r.openGroup(c, w, key); g == nil {
				return nil
			}
			sh.addGroup(g)
		}
		g.touch(c)
		g.Buf = append(g.Buf, r.bufEntry(c, t))
		evict(g, t-s.size)
		return r.emitBuffered(ctx, e, c, g, winBounds{t - s.size, t})
	case "count":
		g := sh.index[key]
		if g == nil {
			if g = r.openGroup(c, w, key); g == nil {
				return nil
			}
			sh.addGroup(g)
		}
		g.touch(c)
		g.Buf = append(g.Buf, r.bufEntry(c, t))
		if len(g.Buf) > s.count {
			g.Buf = append(g.Buf[:0], g.Buf[len(g.Buf)-s.count:]...)
		}
		g.Count++
		if len(g.Buf) == s.count && g.Count >= int64(s.every) {
			g.Count = 0
			return r.emitBuffered(ctx, e, c, g, winBounds{g.Buf[0].T, t})
		}
	}
	return nil
}

// evict drops buffered events at or before t.
func evict(g *group, t int64) {
	i := 0
	for i < len(g.Buf) && g.Buf[i].T <= t {
		i++
	}
	if i > 0 {
		g.Buf = append(g.Buf[:0], g.Buf[i:]...)
	}
}

func (r *Rule) emitBuffered(ctx context.Context, e *Engine, c *evalCtx, g *group, b winBounds) error {
	aggs := make([]aggState, len(r.aggs))
	for _, be := range g.Buf {
		for i := range r.aggs {
			aggs[i].add(c, r.aggs[i].kind, be.V[i])
		}
	}
	return e.emitGroup(ctx, r, c, g, aggs, b)
}

func (sh *winShard) pane(start, end int64) *pane {
	i := sort.Search(len(sh.panes), func(i int) bool { return sh.panes[i].Start >= start })
	if i < len(sh.panes) && sh.panes[i].Start == start {
		return sh.panes[i]
	}
	p := &pane{Start: start, End: end, index: map[string]*group{}}
	sh.panes = append(sh.panes, nil)
	copy(sh.panes[i+1:], sh.panes[i:])
	sh.panes[i] = p
	return p
}

func (sh *winShard) addGroup(g *group) {
	sh.index[g.Key] = g
	sh.groups = append(sh.groups, g)
}

func (sh *winShard) removeGroup(g *group) {
	delete(sh.index, g.Key)
	for i, x := range sh.groups {
		if x == g {
			sh.groups = append(sh.groups[:i], sh.groups[i+1:]...)
			break
		}
	}
}

// closing is a window group due for output.
type closing struct {
	g          *group
	start, end int64
}

func (r *Rule) sessionEnd(g *group) int64 {
	end := g.Last + r.win.gap
	if r.win.maxLen > 0 && g.Start+r.win.maxLen < end {
		end = g.Start + r.win.maxLen
	}
	return end
}

// closeWindows moves the watermark to wm and emits every window that
// closes, in window start then group creation order, with every shard
// locked (the caller holds none). It also evicts expired sliding-window
// events and recomputes nextClose.
func (e *Engine) closeWindows(ctx context.Context, r *Rule, c *evalCtx, wm int64) error {
	w := r.state.win
	w.lockAll()
	defer w.unlockAll()
	var first error
	w.closed = max(w.closed, wm)
	atomicMax(&w.wm, wm)
	var due []closing
	for i := range w.shards {
		sh := &w.shards[i]
		switch r.win.kind {
		case "tumbling", "hopping":
			n := 0
			for _, p := range sh.panes {
				if p.End > wm {
					break
				}
				for _, g := range p.Groups {
					due = append(due, closing{g, p.Start, p.End})
				}
				n++
			}
			if n > 0 {
				sh.panes = append(sh.panes[:0], sh.panes[n:]...)
			}
		case "session":
			kept := sh.groups[:0]
			for _, g := range sh.groups {
				if end := r.sessionEnd(g); end <= wm {
					due = append(due, closing{g, g.Start, end})
					delete(sh.index, g.Key)
					continue
				}
				kept = append(kept, g)
			}
			clear(sh.groups[len(kept):])
			sh.groups = kept
		case "sliding":
			kept := sh.groups[:0]
			for _, g := range sh.groups {
				evict(g, wm-r.win.size)
				if len(g.Buf) == 0 {
					delete(sh.index, g.Key)
					w.nGroups.Add(-1)
					continue
				}
				kept = append(kept, g)
			}
			clear(sh.groups[len(kept):])
			sh.groups = kept
		}
	}
	sort.Slice(due, func(i, j int) bool {
		if due[i].start != due[j].start && r.win.kind != "session" {
			return due[i].start < due[j].start
		}
		return due[i].g.Seq < due[j].g.Seq
	})
	for _, d := range due {
		if err := e.emitGroup(ctx, r, c, d.g, d.g.Aggs, winBounds{d.start, d.end}); err != nil && first == nil {
			first = err
		}
	}
	w.nGroups.Add(-int64(len(due)))
	next := int64(math.MaxInt64)
	for i := range w.shards {
		sh := &w.shards[i]
		switch r.win.kind {
		case "tumbling", "hopping":
			if len(sh.panes) > 0 {
				next = min(next, sh.panes[0].End)
			}
		case "session":
			for _, g := range sh.groups {
				next = min(next, r.sessionEnd(g))
			}
		}
	}
	w.nextClose.Store(next)
	return first
}

// flushAll closes every time window regardless of the clock (rules test
// at end of input).
func (e *Engine) flushAll(ctx context.Context, r *Rule, c *evalCtx) {
	if r.win.kind == "count" || r.win.kind == "sliding" {
		return
	}
	e.closeWindows(ctx, r, c, math.MaxInt64)
}
