package config

import (
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"
)

// TestIsNameMatchesRegexp checks IsName against the regexps it replaced.
func TestIsNameMatchesRegexp(t *testing.T) {
	cases := []struct {
		re    *regexp.Regexp
		max   int
		punct string
	}{
		{regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`), 128, "_.-"},
		{regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$`), 64, "_.:-"},
		{regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`), 64, "._-"},
	}
	fixed := []string{"", "a", "A", "0", "-", ".", "_a", "a-b", "a.b_c:d", "a b", "a\n", "é", "a/b",
		strings.Repeat("a", 63), strings.Repeat("a", 64), strings.Repeat("a", 65),
		strings.Repeat("b", 128), strings.Repeat("b", 129)}
	alphabet := "aZ09-_.:/ é\x00"
	r := rand.New(rand.NewPCG(1, 2))
	for _, c := range cases {
		in := append([]string(nil), fixed...)
		for range 5000 {
			b := make([]byte, r.IntN(c.max+3))
			for i := range b {
				b[i] = alphabet[r.IntN(len(alphabet))]
			}
			in = append(in, string(b))
		}
		for _, s := range in {
			if got, want := IsName(s, c.max, c.punct), c.re.MatchString(s); got != want {
				t.Fatalf("IsName(%q, %d, %q) = %v, regexp %s says %v", s, c.max, c.punct, got, c.re, want)
			}
		}
	}
}
