package broker

import (
	"errors"
	"fmt"

	"github.com/outpost-edge/outpost/internal/config"
)

// Client-id binding. An ACL rule with %c trusts the client id a client
// chooses; binding client ids to users (client_id_pattern) makes %c as
// trustworthy as the username: a user may connect only with client ids its
// pattern matches, and validation refuses patterns that let two users use
// the same client id.
//
// Pattern syntax: %u stands for the username (taken literally), * for any
// run of characters (possibly empty); every other character is literal.

// clientIDPattern is a pattern compiled for one user: a sequence of
// literal bytes and stars.
type clientIDPattern struct {
	src   string // as configured, for messages
	elems []patElem
}

type patElem struct {
	star bool
	c    byte
}

// maxClientIDPattern bounds a pattern's length.
const maxClientIDPattern = 256

func validClientIDPattern(p string) error {
	if p == "" {
		return errors.New("empty client id pattern")
	}
	if len(p) > maxClientIDPattern {
		return fmt.Errorf("client id pattern longer than %d bytes", maxClientIDPattern)
	}
	for i := 0; i < len(p); i++ {
		if p[i] == '%' {
			if i+1 >= len(p) || p[i+1] != 'u' {
				return fmt.Errorf("client id pattern %q: %% must be followed by u (%%u = username)", p)
			}
			i++
		}
	}
	return nil
}

// compileClientIDPattern substitutes user for %u; p must be valid.
func compileClientIDPattern(p, user string) *clientIDPattern {
	cp := &clientIDPattern{src: p}
	for i := 0; i < len(p); i++ {
		switch {
		case p[i] == '%' && i+1 < len(p) && p[i+1] == 'u':
			for j := 0; j < len(user); j++ {
				cp.elems = append(cp.elems, patElem{c: user[j]})
			}
			i++
		case p[i] == '*':
			if n := len(cp.elems); n > 0 && cp.elems[n-1].star {
				continue // ** is *
			}
			cp.elems = append(cp.elems, patElem{star: true})
		default:
			cp.elems = append(cp.elems, patElem{c: p[i]})
		}
	}
	return cp
}

// match reports whether id matches the pattern (glob matching with
// backtracking to the last star: linear in practice, O(len(p)*len(id)) worst).
func (cp *clientIDPattern) match(id string) bool {
	e := cp.elems
	pi, si := 0, 0
	starP, starS := -1, 0
	for si < len(id) {
		switch {
		case pi < len(e) && e[pi].star:
			starP, starS = pi, si
			pi++
		case pi < len(e) && e[pi].c == id[si]:
			pi++
			si++
		case starP >= 0:
			starS++
			pi, si = starP+1, starS
		default:
			return false
		}
	}
	for pi < len(e) && e[pi].star {
		pi++
	}
	return pi == len(e)
}

// overlap returns a client id both patterns match, if there is one: a
// search over pairs of positions (the product of the two patterns'
// automata), remembering the first way each pair was reached.
func (cp *clientIDPattern) overlap(other *clientIDPattern) (string, bool) {
	a, b := cp.elems, other.elems
	type state struct{ i, j int }
	type from struct {
		prev state
		c    byte
		eps  bool
	}
	seen := map[state]from{}
	start := state{}
	seen[start] = from{prev: state{-1, -1}}
	queue := []state{start}
	push := func(s state, f from) {
		if _, ok := seen[s]; !ok {
			seen[s] = f
			queue = append(queue, s)
		}
	}
	for len(queue) > 0 {
		s := queue[0]
		queue = queue[1:]
		if s.i == len(a) && s.j == len(b) {
			var out []byte
			for cur := s; cur != start; {
				f := seen[cur]
				if !f.eps {
					out = append(out, f.c)
				}
				cur = f.prev
			}
			for l, r := 0, len(out)-1; l < r; l, r = l+1, r-1 {
				out[l], out[r] = out[r], out[l]
			}
			return string(out), true
		}
		// A star may match nothing.
		if s.i < len(a) && a[s.i].star {
			push(state{s.i + 1, s.j}, from{prev: s, eps: true})
		}
		if s.j < len(b) && b[s.j].star {
			push(state{s.i, s.j + 1}, from{prev: s, eps: true})
		}
		if s.i >= len(a) || s.j >= len(b) {
			continue
		}
		ea, eb := a[s.i], b[s.j]
		switch {
		case ea.star && eb.star:
			push(state{s.i, s.j}, from{prev: s, c: 'x'}) // no progress: already seen
		case ea.star:
			push(state{s.i, s.j + 1}, from{prev: s, c: eb.c})
		case eb.star:
			push(state{s.i + 1, s.j}, from{prev: s, c: ea.c})
		case ea.c == eb.c:
			push(state{s.i + 1, s.j + 1}, from{prev: s, c: ea.c})
		}
	}
	return "", false
}

// checkClientIDOverlap refuses bindings that let two users connect with the
// same client id (with "%u-*", users "dev" and "dev-1" could both use
// "dev-1-a"): such a binding would not stop one impersonating the other.
func (c *Config) checkClientIDOverlap() []error {
	type bound struct {
		idx  int
		user string
		p    *clientIDPattern
	}
	var bs []bound
	for i, u := range c.Users {
		p := u.ClientIDPattern
		if p == "" {
			p = c.ClientIDPattern
		}
		if p == "" || u.Username == "" || validClientIDPattern(p) != nil {
			continue
		}
		bs = append(bs, bound{i, u.Username, compileClientIDPattern(p, u.Username)})
	}
	var errs []error
	for j := range bs {
		for i := range j {
			if bs[i].user == bs[j].user {
				continue
			}
			if id, ok := bs[i].p.overlap(bs[j].p); ok {
				path := fmt.Sprintf("users[%d].client_id_pattern", bs[j].idx)
				if c.Users[bs[j].idx].ClientIDPattern == "" {
					path = "client_id_pattern"
				}
				errs = append(errs, config.Field(path, "users %q and %q may both use client id %q, so neither is bound "+
					"to its user (pick a separator that usernames do not contain, or use %%u alone)",
					bs[i].user, bs[j].user, id))
			}
		}
		if len(errs) >= 10 {
			break
		}
	}
	return errs
}

// String is the pattern as configured.
func (cp *clientIDPattern) String() string { return cp.src }
