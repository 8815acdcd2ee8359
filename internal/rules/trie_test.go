package rules

import (
	"fmt"
	"testing"
)

func TestTrieMatchesLikeMatchFilter(t *testing.T) {
	filters := []string{"#", "a/#", "a/+", "a/b", "+/b", "a/+/c", "+/+", "a/b/#", "$SYS/#", "+/#", "a//b", "/+"}
	topics := []string{"a", "a/b", "a/b/c", "b/b", "a/x/c", "$SYS/x", "a//b", "/x", "x/y/z", "a/b/c/d"}
	var tr trie
	for _, f := range filters {
		tr.add(f, &entry{r: &Rule{Name: f}})
	}
	for _, top := range topics {
		got := map[string]bool{}
		for _, r := range tr.match(top, nil) {
			if got[r.r.Name] {
				t.Errorf("%s: %s twice", top, r.r.Name)
			}
			got[r.r.Name] = true
		}
		for _, f := range filters {
			if want := matchFilter(f, top); want != got[f] {
				t.Errorf("topic %q filter %q: trie %v, matchFilter %v", top, f, got[f], want)
			}
		}
	}
	// spot checks of matchFilter against the MQTT spec examples
	for _, c := range []struct {
		f, t string
		want bool
	}{{"sport/tennis/player1/#", "sport/tennis/player1", true}, {"sport/#", "sport", true},
		{"sport/+", "sport", false}, {"+/+", "/finance", true}, {"/+", "/finance", true}, {"+", "/finance", false},
		{"#", "$SYS/x", false}} {
		if got := matchFilter(c.f, c.t); got != c.want {
			t.Errorf("matchFilter(%q, %q) = %v", c.f, c.t, got)
		}
	}
}

func BenchmarkTrie1000(b *testing.B) {
	var tr trie
	for i := 0; i < 1000; i++ {
		tr.add(fmt.Sprintf("site/%d/+/telemetry", i), &entry{r: &Rule{}})
	}
	out := make([]*entry, 0, 8)
	b.ReportAllocs()
	for b.Loop() {
		out = tr.match("site/517/dev-3/telemetry", out[:0])
	}
}
