package ota

import (
	"fmt"
	"strconv"
	"strings"
)

// CompareVersions orders semantic versions ("1.4.0", "v1.4.0-rc.1"):
// -1, 0 or +1. A version that does not parse (such as "dev") sorts before
// every release.
func CompareVersions(a, b string) int {
	pa, oka := parseSemver(a)
	pb, okb := parseSemver(b)
	switch {
	case !oka && !okb:
		return strings.Compare(a, b)
	case !oka:
		return -1
	case !okb:
		return 1
	}
	for i := 0; i < 3; i++ {
		if pa.n[i] != pb.n[i] {
			if pa.n[i] < pb.n[i] {
				return -1
			}
			return 1
		}
	}
	// A pre-release sorts before the release.
	switch {
	case pa.pre == pb.pre:
		return 0
	case pa.pre == "":
		return 1
	case pb.pre == "":
		return -1
	}
	return comparePre(pa.pre, pb.pre)
}

type semver struct {
	n   [3]int64
	pre string
}

func parseSemver(s string) (semver, bool) {
	var v semver
	s = strings.TrimPrefix(s, "v")
	if i := strings.IndexByte(s, '+'); i >= 0 {
		s = s[:i]
	}
	if i := strings.IndexByte(s, '-'); i >= 0 {
		v.pre = s[i+1:]
		s = s[:i]
		if v.pre == "" {
			return v, false
		}
	}
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return v, false
	}
	for i, p := range parts {
		n, err := strconv.ParseInt(p, 10, 64)
		if err != nil || n < 0 {
			return v, false
		}
		v.n[i] = n
	}
	return v, true
}

func comparePre(a, b string) int {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) && i < len(bs); i++ {
		na, ea := strconv.ParseInt(as[i], 10, 64)
		nb, eb := strconv.ParseInt(bs[i], 10, 64)
		switch {
		case ea == nil && eb == nil:
			if na != nb {
				if na < nb {
					return -1
				}
				return 1
			}
		case ea == nil:
			return -1
		case eb == nil:
			return 1
		default:
			if c := strings.Compare(as[i], bs[i]); c != 0 {
				return c
			}
		}
	}
	switch {
	case len(as) < len(bs):
		return -1
	case len(as) > len(bs):
		return 1
	}
	return 0
}

// canonicalVersion reports whether s is a semantic version in its one
// canonical spelling: MAJOR.MINOR.PATCH with an optional pre-release, no
// "v" prefix, no build metadata ("+..."), no leading zeros in numeric
// identifiers. Releases and targets use only canonical versions, so that
// one version has one name (1.2.0, v1.2.0 and 1.2.0+x would otherwise be
// three targets of the same version).
func canonicalVersion(s string) bool {
	core, pre, hasPre := strings.Cut(s, "-")
	parts := strings.Split(core, ".")
	if len(parts) != 3 {
		return false
	}
	for _, p := range parts {
		if !numericIdent(p) {
			return false
		}
	}
	if !hasPre {
		return true
	}
	for _, id := range strings.Split(pre, ".") {
		if id == "" {
			return false
		}
		allDigits := true
		for _, r := range id {
			switch {
			case r >= '0' && r <= '9':
			case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r == '-':
				allDigits = false
			default:
				return false
			}
		}
		if allDigits && !numericIdent(id) {
			return false
		}
	}
	return true
}

// numericIdent: digits only, no leading zero (except "0" itself).
func numericIdent(s string) bool {
	if s == "" || len(s) > 18 || (len(s) > 1 && s[0] == '0') {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// CanonicalVersion returns nil when s is a canonical semantic version
// (see canonicalVersion) and an error naming the problem otherwise.
func CanonicalVersion(s string) error {
	if canonicalVersion(s) {
		return nil
	}
	if c := strings.TrimPrefix(s, "v"); c != s && canonicalVersion(c) {
		return fmt.Errorf("version %q: write it without the v prefix (%s)", s, c)
	}
	if c, _, ok := strings.Cut(s, "+"); ok && canonicalVersion(c) {
		return fmt.Errorf("version %q: build metadata (+...) is not allowed; it would publish %s a second time", s, c)
	}
	return fmt.Errorf("version %q is not a semantic version MAJOR.MINOR.PATCH[-PRERELEASE] without leading zeros", s)
}
