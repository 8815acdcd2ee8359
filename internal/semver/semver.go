// Package semver is Outpost's one Semantic Versioning 2.0.0 implementation:
// strict parsing, precedence, and version constraints. Recipes (component
// versions and requirements) and OTA (release versions) use it.
package semver

import (
	"fmt"
	"strconv"
	"strings"
)

// Version is a Semantic Versioning 2.0.0 version: MAJOR.MINOR.PATCH with an
// optional pre-release (-rc.1) and build metadata (+git.abc). Build metadata
// is kept for display and ignored in comparisons, as the specification says.
type Version struct {
	Major, Minor, Patch uint64
	Pre                 []string // dot-separated pre-release identifiers
	Build               string
}

// Parse parses a strict SemVer 2.0.0 string (no "v" prefix, no
// leading zeros, all three numbers present).
func Parse(s string) (Version, error) {
	var v Version
	if s == "" {
		return v, fmt.Errorf("empty version")
	}
	rest := s
	if i := strings.IndexByte(rest, '+'); i >= 0 {
		v.Build = rest[i+1:]
		rest = rest[:i]
		if err := checkIdents(v.Build, false); err != nil {
			return Version{}, fmt.Errorf("version %q: build metadata: %w", s, err)
		}
	}
	if i := strings.IndexByte(rest, '-'); i >= 0 {
		pre := rest[i+1:]
		rest = rest[:i]
		if err := checkIdents(pre, true); err != nil {
			return Version{}, fmt.Errorf("version %q: pre-release: %w", s, err)
		}
		v.Pre = strings.Split(pre, ".")
	}
	parts := strings.Split(rest, ".")
	if len(parts) != 3 {
		return Version{}, fmt.Errorf("version %q is not semver MAJOR.MINOR.PATCH (example: 1.4.2)", s)
	}
	nums := [3]*uint64{&v.Major, &v.Minor, &v.Patch}
	for i, p := range parts {
		n, err := parseNum(p)
		if err != nil {
			return Version{}, fmt.Errorf("version %q: %w", s, err)
		}
		*nums[i] = n
	}
	return v, nil
}

func parseNum(p string) (uint64, error) {
	if p == "" {
		return 0, fmt.Errorf("empty number")
	}
	if len(p) > 1 && p[0] == '0' {
		return 0, fmt.Errorf("number %q has a leading zero", p)
	}
	for i := 0; i < len(p); i++ {
		if p[i] < '0' || p[i] > '9' {
			return 0, fmt.Errorf("%q is not a number", p)
		}
	}
	n, err := strconv.ParseUint(p, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("number %q is out of range", p)
	}
	return n, nil
}

// checkIdents validates dot-separated identifiers [0-9A-Za-z-]+; numeric
// pre-release identifiers must not have leading zeros.
func checkIdents(s string, pre bool) error {
	if s == "" {
		return fmt.Errorf("empty")
	}
	for _, id := range strings.Split(s, ".") {
		if id == "" {
			return fmt.Errorf("empty identifier")
		}
		numeric := true
		for i := 0; i < len(id); i++ {
			c := id[i]
			switch {
			case c >= '0' && c <= '9':
			case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '-':
				numeric = false
			default:
				return fmt.Errorf("invalid character %q in %q", c, id)
			}
		}
		if pre && numeric && len(id) > 1 && id[0] == '0' {
			return fmt.Errorf("numeric identifier %q has a leading zero", id)
		}
	}
	return nil
}

func (v Version) String() string {
	s := fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch)
	if len(v.Pre) > 0 {
		s += "-" + strings.Join(v.Pre, ".")
	}
	if v.Build != "" {
		s += "+" + v.Build
	}
	return s
}

// Compare returns -1, 0 or +1 by SemVer precedence (build metadata ignored).
func (v Version) Compare(o Version) int {
	for _, d := range [3][2]uint64{{v.Major, o.Major}, {v.Minor, o.Minor}, {v.Patch, o.Patch}} {
		if d[0] != d[1] {
			if d[0] < d[1] {
				return -1
			}
			return 1
		}
	}
	switch {
	case len(v.Pre) == 0 && len(o.Pre) == 0:
		return 0
	case len(v.Pre) == 0:
		return 1 // a release ranks above its pre-releases
	case len(o.Pre) == 0:
		return -1
	}
	for i := 0; i < len(v.Pre) && i < len(o.Pre); i++ {
		if c := compareIdent(v.Pre[i], o.Pre[i]); c != 0 {
			return c
		}
	}
	switch {
	case len(v.Pre) < len(o.Pre):
		return -1
	case len(v.Pre) > len(o.Pre):
		return 1
	}
	return 0
}

func compareIdent(a, b string) int {
	an, aerr := strconv.ParseUint(a, 10, 64)
	bn, berr := strconv.ParseUint(b, 10, 64)
	switch {
	case aerr == nil && berr == nil:
		switch {
		case an < bn:
			return -1
		case an > bn:
			return 1
		}
		return 0
	case aerr == nil:
		return -1 // numeric identifiers rank below alphanumeric ones
	case berr == nil:
		return 1
	}
	return strings.Compare(a, b)
}

// Constraint is a version requirement: comparators that must all hold,
// separated by spaces or commas, e.g. ">=1.2.0 <2.0.0". Operators: = (or
// none), !=, >, >=, <, <=, ^ (same major; same minor for 0.x), ~ (same
// minor). Missing minor or patch numbers count as 0 ("^1.2" = "^1.2.0").
type Constraint struct {
	text  string
	terms []term
}

type term struct {
	op string
	v  Version
}

// ParseConstraint parses a constraint (see Constraint). An empty string is
// an error; an absent constraint is the zero Constraint, which any version
// satisfies.
func ParseConstraint(s string) (Constraint, error) {
	c := Constraint{text: strings.TrimSpace(s)}
	fields := strings.FieldsFunc(s, func(r rune) bool { return r == ' ' || r == ',' || r == '\t' })
	if len(fields) == 0 {
		return Constraint{}, fmt.Errorf("empty version constraint")
	}
	for _, f := range fields {
		op := ""
		for _, o := range []string{">=", "<=", "!=", ">", "<", "=", "^", "~"} {
			if strings.HasPrefix(f, o) {
				op = o
				break
			}
		}
		vs := strings.TrimPrefix(f, op)
		if op == "" || op == "=" {
			op = "="
		}
		v, err := parsePartial(vs)
		if err != nil {
			return Constraint{}, fmt.Errorf("constraint %q: %w", s, err)
		}
		c.terms = append(c.terms, term{op: op, v: v})
	}
	return c, nil
}

// parsePartial accepts "1", "1.2", "1.2.3" and full versions with
// pre-release and build parts.
func parsePartial(s string) (Version, error) {
	core := s
	if i := strings.IndexAny(core, "-+"); i >= 0 {
		core = core[:i]
	}
	switch strings.Count(core, ".") {
	case 0:
		s = core + ".0.0" + s[len(core):]
	case 1:
		s = core + ".0" + s[len(core):]
	}
	return Parse(s)
}

// IsZero reports whether c is the absent constraint.
func (c Constraint) IsZero() bool { return len(c.terms) == 0 }

func (c Constraint) String() string { return c.text }

// Allows reports whether v satisfies every comparator of c.
func (c Constraint) Allows(v Version) bool {
	for _, t := range c.terms {
		cmp := v.Compare(t.v)
		ok := false
		switch t.op {
		case "=":
			ok = cmp == 0
		case "!=":
			ok = cmp != 0
		case ">":
			ok = cmp > 0
		case ">=":
			ok = cmp >= 0
		case "<":
			ok = cmp < 0
		case "<=":
			ok = cmp <= 0
		case "^":
			upper := Version{Major: t.v.Major + 1}
			if t.v.Major == 0 {
				upper = Version{Minor: t.v.Minor + 1}
			}
			ok = cmp >= 0 && v.Compare(upper) < 0
		case "~":
			ok = cmp >= 0 && v.Compare(Version{Major: t.v.Major, Minor: t.v.Minor + 1}) < 0
		}
		if !ok {
			return false
		}
	}
	return true
}

// ParseLoose parses a version as people and tags write it: an optional "v"
// prefix ("v1.4.0") is allowed, otherwise as Parse.
func ParseLoose(s string) (Version, error) {
	return Parse(strings.TrimPrefix(s, "v"))
}
