package ota

import (
	"fmt"
	"strings"

	"github.com/outpost-edge/outpost/internal/semver"
)

// CompareVersions orders semantic versions ("1.4.0", "v1.4.0-rc.1"):
// -1, 0 or +1 (internal/semver precedence; build metadata ignored). A
// version that does not parse (such as "dev") sorts before every release.
func CompareVersions(a, b string) int {
	pa, erra := semver.ParseLoose(a)
	pb, errb := semver.ParseLoose(b)
	switch {
	case erra != nil && errb != nil:
		return strings.Compare(a, b)
	case erra != nil:
		return -1
	case errb != nil:
		return 1
	}
	return pa.Compare(pb)
}

// canonicalVersion reports whether s is a semantic version in its one
// canonical spelling: MAJOR.MINOR.PATCH with an optional pre-release, no
// "v" prefix, no build metadata ("+..."), no leading zeros in numeric
// identifiers. Releases and targets use only canonical versions, so that
// one version has one name (1.2.0, v1.2.0 and 1.2.0+x would otherwise be
// three targets of the same version).
func canonicalVersion(s string) bool {
	v, err := semver.Parse(s)
	return err == nil && v.Build == ""
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
