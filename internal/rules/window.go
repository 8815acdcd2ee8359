package rules

import (
	"context"
	"math"
	"sort"
	"strings"

	"github.com/outpost-edge/outpost/internal/rules/parser"
)

// maxGroups bounds the open groups (over all open windows) of one rule.
const maxGroups = 100_000

// group is one GROUP BY key inside a window.
type group struct {
	Key    string     `json:"key"`
	Aggs   []aggState `json:"aggs,omitempty"`
	Buf    []bufEntry `json:"buf,omitempty"`   // sliding and count windows: inputs of each event
	Start  int64      `json:"start,omitempty"` // session: first event; count: events seen
	Last   int64      `json:"last,omitempty"`  // session: last event time
	Count  int64      `json:"count,omitempty"` // count windows: events since the window opened
	Device string     `json:"device,omitempty"`
	Client string     `json:"client,omitempty"`
	Topic  string     `json:"topic,omitempty"`
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

// windowState is a rule's open windows. It is guarded by ruleState.mu.
type windowState struct {
	Panes     []*pane  `json:"panes,omitempty"`  // tumbling, hopping: sorted by start
	Groups    []*group `json:"groups,omitempty"` // session, sliding, count: one entry per key
	Watermark int64    `json:"watermark"`
	MaxEvent  int64    `json:"max_event"`
	index     map[string]*group
	nGroups   int
	arrival   int64 // event time: wall clock (ns) of the newest message, for the idle timeout
}

func (w *windowState) rebuildIndexes() {
	w.index = map[string]*group{}
	w.nGroups = len(w.Groups)
	for _, g := range w.Groups {
		w.index[g.Key] = g
	}
	for _, p := range w.Panes {
		p.index = map[string]*group{}
		for _, g := range p.Groups {
			p.index[g.Key] = g
		}
		w.nGroups += len(p.Groups)
	}
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

func (r *Rule) newGroup(c *evalCtx, key string) *group {
	g := &group{Key: strings.Clone(key)}
	if r.win.kind != "sliding" && r.win.kind != "count" {
		g.Aggs = make([]aggState, len(r.aggs))
	}
	return g
}

func (g *group) touch(c *evalCtx) {
	m := c.msg
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
// windows. The caller holds the rule state lock. Results of windows that
// close because of this message are emitted.
func (r *Rule) windowAdd(ctx context.Context, e *Engine, c *evalCtx) error {
	w := r.state.win
	s := r.win
	t := c.evTime
	if s.eventTime {
		w.arrival = c.clock(e).UnixNano()
		if t > w.MaxEvent {
			w.MaxEvent = t
			if wm := t - s.lateness; wm > w.Watermark {
				defer e.advanceLocked(ctx, r, c, wm)
			}
		}
	} else if t > w.Watermark {
		// processing time: close what is due before adding
		if err := e.advanceLocked(ctx, r, c, t); err != nil {
			return err
		}
	}
	key := r.groupKey(c)
	switch s.kind {
	case "tumbling", "hopping":
		first := floorDiv(t-s.size, s.hop)*s.hop + s.hop // earliest start whose window contains t
		added := false
		for start := first; start <= t; start += s.hop {
			end := start + s.size
			if end <= w.Watermark {
				continue // already emitted
			}
			p := w.pane(start, end)
			g := p.index[key]
			if g == nil {
				if w.nGroups >= maxGroups {
					c.fail(reasonOverflow)
					continue
				}
				g = r.newGroup(c, key)
				p.index[g.Key] = g
				p.Groups = append(p.Groups, g)
				w.nGroups++
			}
			g.touch(c)
			r.feed(c, g.Aggs)
			added = true
		}
		if !added {
			c.fail(reasonLate)
		}
	case "session":
		if s.eventTime && t < w.Watermark {
			c.fail(reasonLate)
			return nil
		}
		g := w.index[key]
		if g != nil && (t-g.Last >= s.gap || (s.maxLen > 0 && t-g.Start >= s.maxLen)) {
			key = g.Key // emitting reuses c.tmp, which key points into
			if err := e.emitGroup(ctx, r, c, g, g.Aggs, winBounds{g.Start, g.Last + s.gap}); err != nil {
				c.fail(reasonAction)
			}
			w.removeGroup(g)
			g = nil
		}
		if g == nil {
			if w.nGroups >= maxGroups {
				c.fail(reasonOverflow)
				return nil
			}
			g = r.newGroup(c, key)
			g.Start = t
			w.addGroup(g)
		}
		if t > g.Last {
			g.Last = t
		}
		g.touch(c)
		r.feed(c, g.Aggs)
	case "sliding":
		if s.eventTime && t < w.Watermark {
			c.fail(reasonLate)
			return nil
		}
		g := w.index[key]
		if g == nil {
			if w.nGroups >= maxGroups {
				c.fail(reasonOverflow)
				return nil
			}
			g = r.newGroup(c, key)
			w.addGroup(g)
		}
		g.touch(c)
		g.Buf = append(g.Buf, r.bufEntry(c, t))
		evict(g, t-s.size)
		return r.emitBuffered(ctx, e, c, g, winBounds{t - s.size, t})
	case "count":
		g := w.index[key]
		if g == nil {
			if w.nGroups >= maxGroups {
				c.fail(reasonOverflow)
				return nil
			}
			g = r.newGroup(c, key)
			w.addGroup(g)
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

func (w *windowState) pane(start, end int64) *pane {
	i := sort.Search(len(w.Panes), func(i int) bool { return w.Panes[i].Start >= start })
	if i < len(w.Panes) && w.Panes[i].Start == start {
		return w.Panes[i]
	}
	p := &pane{Start: start, End: end, index: map[string]*group{}}
	w.Panes = append(w.Panes, nil)
	copy(w.Panes[i+1:], w.Panes[i:])
	w.Panes[i] = p
	return p
}

func (w *windowState) addGroup(g *group) {
	if w.index == nil {
		w.index = map[string]*group{}
	}
	w.index[g.Key] = g
	w.Groups = append(w.Groups, g)
	w.nGroups++
}

func (w *windowState) removeGroup(g *group) {
	delete(w.index, g.Key)
	for i, x := range w.Groups {
		if x == g {
			w.Groups = append(w.Groups[:i], w.Groups[i+1:]...)
			break
		}
	}
	w.nGroups--
}

// advanceLocked moves the watermark to wm and emits every window that
// closes. The caller holds the rule state lock.
func (e *Engine) advanceLocked(ctx context.Context, r *Rule, c *evalCtx, wm int64) error {
	w := r.state.win
	if wm <= w.Watermark {
		return nil
	}
	w.Watermark = wm
	var first error
	switch r.win.kind {
	case "tumbling", "hopping":
		n := 0
		for _, p := range w.Panes {
			if p.End > wm {
				break
			}
			for _, g := range p.Groups {
				if err := e.emitGroup(ctx, r, c, g, g.Aggs, winBounds{p.Start, p.End}); err != nil && first == nil {
					first = err
				}
			}
			w.nGroups -= len(p.Groups)
			n++
		}
		if n > 0 {
			w.Panes = append(w.Panes[:0], w.Panes[n:]...)
		}
	case "session":
		for i := 0; i < len(w.Groups); {
			g := w.Groups[i]
			end := g.Last + r.win.gap
			if r.win.maxLen > 0 && g.Start+r.win.maxLen < end {
				end = g.Start + r.win.maxLen
			}
			if end <= wm {
				if err := e.emitGroup(ctx, r, c, g, g.Aggs, winBounds{g.Start, end}); err != nil && first == nil {
					first = err
				}
				w.removeGroup(g)
				continue
			}
			i++
		}
	case "sliding":
		for i := 0; i < len(w.Groups); {
			g := w.Groups[i]
			evict(g, wm-r.win.size)
			if len(g.Buf) == 0 {
				w.removeGroup(g)
				continue
			}
			i++
		}
	}
	return first
}

// flushAll closes every time window regardless of the clock (rules test
// at end of input).
func (e *Engine) flushAll(ctx context.Context, r *Rule, c *evalCtx) {
	if r.win.kind == "count" || r.win.kind == "sliding" {
		return
	}
	e.advanceLocked(ctx, r, c, math.MaxInt64)
}
