// Package selector parses and evaluates Kubernetes-style label selectors:
//
//	site=plant2,line!=3,env in (prod,staging),tier notin (test),gpu,!legacy
//
// Requirements are ANDed. Operators: = and == (equal), != (not equal or
// label absent), in, notin (label absent or not in the set), a bare key
// (exists) and !key (does not exist). Keys and values are 1-63 (keys: up to
// 253 with a DNS-prefix/) letters, digits and - _ . /; a value may be empty.
// The empty selector matches everything. Parse errors name the column.
package selector

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// ErrSyntax is wrapped by every parse error.
var ErrSyntax = errors.New("selector: syntax error")

// Op is a requirement's operator.
type Op string

const (
	Equals    Op = "="
	NotEquals Op = "!="
	In        Op = "in"
	NotIn     Op = "notin"
	Exists    Op = "exists"
	NotExists Op = "!"
)

// Requirement is one comma-separated term.
type Requirement struct {
	Key    string
	Op     Op
	Values []string // sorted, for In/NotIn; one value for Equals/NotEquals
}

// Selector is a parsed selector (ANDed requirements).
type Selector []Requirement

// Everything is the selector that matches every label set.
var Everything = Selector{}

// Matches reports whether labels satisfy every requirement.
func (s Selector) Matches(labels map[string]string) bool {
	for _, r := range s {
		v, ok := labels[r.Key]
		switch r.Op {
		case Equals:
			if !ok || v != r.Values[0] {
				return false
			}
		case NotEquals:
			if ok && v == r.Values[0] {
				return false
			}
		case In:
			if !ok || !contains(r.Values, v) {
				return false
			}
		case NotIn:
			if ok && contains(r.Values, v) {
				return false
			}
		case Exists:
			if !ok {
				return false
			}
		case NotExists:
			if ok {
				return false
			}
		}
	}
	return true
}

func contains(s []string, v string) bool {
	i := sort.SearchStrings(s, v)
	return i < len(s) && s[i] == v
}

// String renders the selector in canonical form; Parse(s.String()) equals s.
func (s Selector) String() string {
	parts := make([]string, len(s))
	for i, r := range s {
		switch r.Op {
		case Equals, NotEquals:
			parts[i] = r.Key + string(r.Op) + r.Values[0]
		case In, NotIn:
			parts[i] = r.Key + " " + string(r.Op) + " (" + strings.Join(r.Values, ",") + ")"
		case Exists:
			parts[i] = r.Key
		case NotExists:
			parts[i] = "!" + r.Key
		}
	}
	return strings.Join(parts, ",")
}

// MaxLen bounds a selector's length.
const MaxLen = 4096

// Parse parses a selector. Whitespace around tokens is ignored.
func Parse(s string) (Selector, error) {
	if len(s) > MaxLen {
		return nil, fmt.Errorf("%w: longer than %d bytes", ErrSyntax, MaxLen)
	}
	p := &parser{s: s}
	sel := Selector{}
	p.space()
	if p.eof() {
		return sel, nil
	}
	for {
		r, err := p.requirement()
		if err != nil {
			return nil, err
		}
		sel = append(sel, r)
		p.space()
		if p.eof() {
			break
		}
		if p.s[p.i] != ',' {
			return nil, p.errf("expected ',' or end, found %q", p.s[p.i])
		}
		p.i++
	}
	sort.SliceStable(sel, func(i, j int) bool { return sel[i].Key < sel[j].Key })
	return sel, nil
}

// MustParse is Parse for constants; it panics on error.
func MustParse(s string) Selector {
	sel, err := Parse(s)
	if err != nil {
		panic(err)
	}
	return sel
}

type parser struct {
	s string
	i int
}

func (p *parser) eof() bool { return p.i >= len(p.s) }

func (p *parser) space() {
	for p.i < len(p.s) && (p.s[p.i] == ' ' || p.s[p.i] == '\t') {
		p.i++
	}
}

func (p *parser) errf(format string, args ...any) error {
	return fmt.Errorf("%w at column %d: %s", ErrSyntax, p.i+1, fmt.Sprintf(format, args...))
}

func isWordByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == '/'
}

func (p *parser) word() string {
	start := p.i
	for p.i < len(p.s) && isWordByte(p.s[p.i]) {
		p.i++
	}
	return p.s[start:p.i]
}

func (p *parser) key() (string, error) {
	p.space()
	at := p.i
	k := p.word()
	if k == "" {
		if p.eof() {
			return "", p.errf("expected a label key, found end")
		}
		return "", p.errf("expected a label key, found %q", p.s[p.i])
	}
	if err := validKey(k); err != nil {
		p.i = at
		return "", p.errf("key %q: %v", k, err)
	}
	return k, nil
}

func validKey(k string) error {
	prefix, name, hasPrefix := strings.Cut(k, "/")
	if hasPrefix {
		if prefix == "" || len(prefix) > 253 || strings.Contains(name, "/") {
			return errors.New("a key is NAME or PREFIX/NAME with one '/'")
		}
	} else {
		name = k
	}
	if name == "" || len(name) > 63 {
		return errors.New("the name part must be 1-63 characters")
	}
	if !alnum(name[0]) || !alnum(name[len(name)-1]) {
		return errors.New("must start and end with a letter or digit")
	}
	return nil
}

func validValue(v string) error {
	if v == "" {
		return nil
	}
	if len(v) > 63 {
		return errors.New("longer than 63 characters")
	}
	if strings.Contains(v, "/") {
		return errors.New("'/' is not allowed in a value")
	}
	if !alnum(v[0]) || !alnum(v[len(v)-1]) {
		return errors.New("must start and end with a letter or digit")
	}
	return nil
}

func alnum(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' }

func (p *parser) value() (string, error) {
	p.space()
	at := p.i
	v := p.word()
	if err := validValue(v); err != nil {
		p.i = at
		return "", p.errf("value %q: %v", v, err)
	}
	return v, nil
}

func (p *parser) requirement() (Requirement, error) {
	p.space()
	if !p.eof() && p.s[p.i] == '!' {
		p.i++
		k, err := p.key()
		if err != nil {
			return Requirement{}, err
		}
		return Requirement{Key: k, Op: NotExists}, nil
	}
	k, err := p.key()
	if err != nil {
		return Requirement{}, err
	}
	p.space()
	if p.eof() || p.s[p.i] == ',' {
		return Requirement{Key: k, Op: Exists}, nil
	}
	switch {
	case strings.HasPrefix(p.s[p.i:], "!="):
		p.i += 2
		v, err := p.value()
		return Requirement{Key: k, Op: NotEquals, Values: []string{v}}, err
	case strings.HasPrefix(p.s[p.i:], "=="):
		p.i += 2
		v, err := p.value()
		return Requirement{Key: k, Op: Equals, Values: []string{v}}, err
	case p.s[p.i] == '=':
		p.i++
		v, err := p.value()
		return Requirement{Key: k, Op: Equals, Values: []string{v}}, err
	}
	at := p.i
	op := p.word()
	var o Op
	switch op {
	case "in":
		o = In
	case "notin":
		o = NotIn
	default:
		p.i = at
		if op == "" {
			return Requirement{}, p.errf("expected an operator (=, ==, !=, in, notin) after %q, found %q", k, p.s[p.i])
		}
		return Requirement{}, p.errf("expected an operator (=, ==, !=, in, notin) after %q, found %q", k, op)
	}
	p.space()
	if p.eof() || p.s[p.i] != '(' {
		return Requirement{}, p.errf("expected '(' after %s", op)
	}
	p.i++
	var vals []string
	for {
		v, err := p.value()
		if err != nil {
			return Requirement{}, err
		}
		vals = append(vals, v)
		p.space()
		if p.eof() {
			return Requirement{}, p.errf("missing ')'")
		}
		if p.s[p.i] == ')' {
			p.i++
			break
		}
		if p.s[p.i] != ',' {
			return Requirement{}, p.errf("expected ',' or ')' in the value list, found %q", p.s[p.i])
		}
		p.i++
	}
	sort.Strings(vals)
	vals = compact(vals)
	return Requirement{Key: k, Op: o, Values: vals}, nil
}

func compact(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

// ParseLabels parses "k=v,k2=v2" (the --labels flag form) into a map,
// validating keys and values like selectors do.
func ParseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	for i, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return nil, fmt.Errorf("%w: label %d %q: want key=value", ErrSyntax, i+1, part)
		}
		if err := ValidateLabel(k, v); err != nil {
			return nil, fmt.Errorf("label %d: %w", i+1, err)
		}
		out[k] = v
	}
	return out, nil
}

// ValidateLabel checks one label key and value.
func ValidateLabel(k, v string) error {
	if err := validKey(k); err != nil {
		return fmt.Errorf("%w: key %q: %v", ErrSyntax, k, err)
	}
	for i := 0; i < len(v); i++ {
		if !isWordByte(v[i]) {
			return fmt.Errorf("%w: value %q of %s: character %q not allowed", ErrSyntax, v, k, v[i])
		}
	}
	if err := validValue(v); err != nil {
		return fmt.Errorf("%w: value %q of %s: %v", ErrSyntax, v, k, err)
	}
	return nil
}
