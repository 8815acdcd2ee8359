package rules

import (
	"fmt"
	"strings"

	"github.com/outpost-edge/outpost/internal/rules/parser"
	"github.com/outpost-edge/outpost/internal/topic"
)

// Loop detection. A REPUBLISH action whose topic a rule's FROM can match
// feeds the rule's own output back to a rule. At load time the engine
// refuses a rule whose REPUBLISH can match its own FROM, and (Store) a rule
// that closes a cycle through other rules' REPUBLISH and FROM. A topic
// template level with ${...} counts as any value (+), so the check is
// conservative for templates. Loops it cannot see (a client that forwards
// the republished messages back, templates producing several levels) are
// stopped at run time by HopsProperty.

// topicPattern turns a topic template into a filter: every level holding a
// ${...} becomes +.
func topicPattern(tpl string) string {
	var b strings.Builder
	for {
		i := strings.Index(tpl, "${")
		if i < 0 {
			b.WriteString(tpl)
			break
		}
		b.WriteString(tpl[:i])
		j := strings.IndexByte(tpl[i:], '}')
		if j < 0 {
			b.WriteString(tpl[i:])
			break
		}
		b.WriteByte(0)
		tpl = tpl[i+j+1:]
	}
	levels := strings.Split(b.String(), "/")
	for i, l := range levels {
		if strings.IndexByte(l, 0) >= 0 {
			levels[i] = "+"
		}
	}
	return strings.Join(levels, "/")
}

// loopEdge is one way a rule's REPUBLISH reaches a rule's FROM.
type loopEdge struct {
	to     *Rule
	topic  string // the REPUBLISH template
	filter string // the FROM filter it can match
}

// republishEdges returns the rules among all whose FROM can match a
// REPUBLISH topic of r.
func republishEdges(r *Rule, all []*Rule) []loopEdge {
	var out []loopEdge
	for _, ac := range r.actions {
		if !ac.hops {
			continue
		}
		pat := topicPattern(ac.target)
		for _, o := range all {
			for _, f := range o.Filters {
				if topic.Intersects(pat, f) {
					out = append(out, loopEdge{to: o, topic: ac.target, filter: f})
					break
				}
			}
		}
	}
	return out
}

// findCycles returns the rules of fresh that lie on a cycle of REPUBLISH →
// FROM edges among others and fresh, each with an error naming the cycle.
// Self-loops are compile errors already and are skipped.
func findCycles(file string, fresh, others []*Rule) ([]*Rule, parser.ErrorList) {
	var nodes []*Rule
	for _, r := range append(append([]*Rule(nil), others...), fresh...) {
		for _, ac := range r.actions {
			if ac.hops {
				nodes = append(nodes, r)
				break
			}
		}
	}
	var el parser.ErrorList
	var bad []*Rule
	for _, start := range fresh {
		path := findPath(start, nodes)
		if path == nil {
			continue
		}
		bad = append(bad, start)
		var b strings.Builder
		fmt.Fprintf(&b, "REPUBLISH closes a loop: rule %s", start.Name)
		for _, e := range path {
			fmt.Fprintf(&b, " REPUBLISH '%s' → rule %s (FROM '%s')", e.topic, e.to.Name, e.filter)
		}
		b.WriteString(" (change a REPUBLISH topic or a FROM filter)")
		pos := start.ast.P
		for _, ac := range start.actions {
			if ac.hops && ac.target == path[0].topic {
				pos = ac.pos
				break
			}
		}
		el = append(el, &parser.Error{File: file, Pos: pos, Rule: start.Name, Msg: b.String()})
	}
	return bad, el
}

// findPath returns a shortest cycle of edges from start back to start
// through other rules (breadth first), or nil.
func findPath(start *Rule, nodes []*Rule) []loopEdge {
	type step struct {
		prev *step
		edge loopEdge
	}
	seen := map[*Rule]bool{start: true}
	queue := []*step{nil}
	at := func(s *step) *Rule {
		if s == nil {
			return start
		}
		return s.edge.to
	}
	for len(queue) > 0 {
		s := queue[0]
		queue = queue[1:]
		for _, e := range republishEdges(at(s), nodes) {
			if e.to == start {
				if s == nil {
					continue // a self-loop: reported by the compiler
				}
				path := []loopEdge{e}
				for p := s; p != nil; p = p.prev {
					path = append([]loopEdge{p.edge}, path...)
				}
				return path
			}
			if !seen[e.to] {
				seen[e.to] = true
				queue = append(queue, &step{prev: s, edge: e})
			}
		}
	}
	return nil
}
