package topic

import "testing"

func TestMatchTopic(t *testing.T) {
	tests := []struct {
		filter, topic string
		want          bool
	}{
		{"a/b", "a/b", true}, {"a/b", "a/c", false}, {"a/+", "a/b", true}, {"a/+", "a/b/c", false},
		{"a/#", "a", true}, {"a/#", "a/b/c", true}, {"#", "a/b", true}, {"+/b", "a/b", true},
		{"#", "$SYS/x", false}, {"+/x", "$SYS/x", false}, {"$SYS/#", "$SYS/x", true},
		{"a/+/c", "a//c", true}, {"+", "", true}, {"a/b/c", "a/b", false}, {"a", "a/b", false},
	}
	for _, tt := range tests {
		if got := Match(tt.filter, tt.topic); got != tt.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tt.filter, tt.topic, got, tt.want)
		}
	}
}

func TestIntersectsAndCovers(t *testing.T) {
	tests := []struct {
		a, b            string
		inter, aCoversB bool
	}{
		{"sensors/#", "#", true, false},
		{"sensors/#", "sensors/+/temp", true, true},
		{"sensors/+/temp", "+/+/+", true, false},
		{"sensors/a", "sensors/b", false, false},
		{"a/+", "a/b/c", false, false},
		{"a/#", "a", true, true},
		{"$SYS/#", "#", false, false},
		{"#", "$SYS/#", false, false},
		{"+/x", "a/#", true, false},
		{"a/b", "a/b", true, true},
		{"+", "a", true, true},
	}
	for _, tt := range tests {
		if got := Intersects(tt.a, tt.b); got != tt.inter {
			t.Errorf("Intersects(%q, %q) = %v, want %v", tt.a, tt.b, got, tt.inter)
		}
		if got := Intersects(tt.b, tt.a); got != tt.inter {
			t.Errorf("Intersects(%q, %q) = %v, want %v (symmetry)", tt.b, tt.a, got, tt.inter)
		}
		if got := Covers(tt.a, tt.b); got != tt.aCoversB {
			t.Errorf("Covers(%q, %q) = %v, want %v", tt.a, tt.b, got, tt.aCoversB)
		}
	}
}

func TestValidFilter(t *testing.T) {
	for _, f := range []string{"a", "a/b", "#", "+", "a/+/c", "a/#", "+/+", "$SYS/#"} {
		if err := ValidFilter(f); err != nil {
			t.Errorf("ValidFilter(%q) = %v", f, err)
		}
	}
	for _, f := range []string{"", "a/#/b", "a#", "a+", "a/b+", "+a/b", "a\x00b"} {
		if err := ValidFilter(f); err == nil {
			t.Errorf("ValidFilter(%q) = nil, want error", f)
		}
	}
	if got := StripShare("$share/g/a/b"); got != "a/b" {
		t.Errorf("StripShare = %q", got)
	}
}
