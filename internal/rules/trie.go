package rules

import "strings"

// trie indexes rules by their FROM topic filters so that matching a topic
// costs one walk over its levels instead of one check per rule.
type trie struct {
	root trieNode
}

type trieNode struct {
	children map[string]*trieNode
	plus     *trieNode
	hash     []*entry // rules whose filter ends with '#' here
	exact    []*entry // rules whose filter ends here
}

func (t *trie) add(filter string, r *entry) {
	n := &t.root
	for _, l := range strings.Split(filter, "/") {
		switch l {
		case "#":
			n.hash = append(n.hash, r)
			return
		case "+":
			if n.plus == nil {
				n.plus = &trieNode{}
			}
			n = n.plus
		default:
			if n.children == nil {
				n.children = map[string]*trieNode{}
			}
			c := n.children[l]
			if c == nil {
				c = &trieNode{}
				n.children[l] = c
			}
			n = c
		}
	}
	n.exact = append(n.exact, r)
}

// match appends the rules matching topic to out (a rule with several
// matching filters appears once). Topics starting with '$' are not matched
// by a leading wildcard [MQTT-4.7.2-1].
func (t *trie) match(topic string, out []*entry) []*entry {
	return t.root.match(topic, true, out)
}

func (n *trieNode) match(rest string, first bool, out []*entry) []*entry {
	dollar := first && strings.HasPrefix(rest, "$")
	if !dollar {
		out = appendUnique(out, n.hash) // '#' also matches the parent level
	}
	level, tail, more := strings.Cut(rest, "/")
	if c := n.children[level]; c != nil {
		if more {
			out = c.match(tail, false, out)
		} else {
			out = appendUnique(out, c.exact)
			out = appendUnique(out, c.hash)
		}
	}
	if n.plus != nil && !dollar {
		if more {
			out = n.plus.match(tail, false, out)
		} else {
			out = appendUnique(out, n.plus.exact)
			out = appendUnique(out, n.plus.hash)
		}
	}
	return out
}

func appendUnique(out []*entry, rs []*entry) []*entry {
outer:
	for _, r := range rs {
		for _, o := range out {
			if o == r {
				continue outer
			}
		}
		out = append(out, r)
	}
	return out
}

// matchFilter reports whether topic matches filter.
func matchFilter(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	for {
		fl, frest, fmore := strings.Cut(filter, "/")
		if fl == "#" {
			return true
		}
		tl, trest, tmore := strings.Cut(topic, "/")
		if fl != "+" && fl != tl {
			return false
		}
		if !fmore || !tmore {
			if !fmore && !tmore {
				return true
			}
			return fmore && frest == "#"
		}
		filter, topic = frest, trest
	}
}
