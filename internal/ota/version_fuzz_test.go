package ota

import (
	"strings"
	"testing"

	"github.com/outpost-edge/outpost/internal/semver"
)

// Versions come from signed but untrusted metadata and from the publisher's
// command line: a canonical version parses, has one spelling and orders
// equal only to itself.
func FuzzCanonicalVersion(f *testing.F) {
	for _, s := range []string{"1.2.0", "v1.2.0", "1.2.0+evil", "01.2.0", "1.2.0-rc.1", "1.2.0-01", "1.2", "1.2.0-", "0.0.0-a-b.0.x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ok := canonicalVersion(s)
		if (CanonicalVersion(s) == nil) != ok {
			t.Fatalf("%q: CanonicalVersion and canonicalVersion disagree", s)
		}
		if !ok {
			return
		}
		if _, err := semver.ParseLoose(s); err != nil {
			t.Fatalf("%q canonical but does not parse", s)
		}
		if strings.HasPrefix(s, "v") || strings.Contains(s, "+") {
			t.Fatalf("%q canonical with a prefix or build metadata", s)
		}
		if CompareVersions(s, s) != 0 || CompareVersions(s, "v"+s) != 0 {
			t.Fatalf("%q does not compare equal to itself", s)
		}
	})
}
