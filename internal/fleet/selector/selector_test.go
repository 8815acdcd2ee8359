package selector

import (
	"errors"
	"testing"
)

func TestMatches(t *testing.T) {
	labels := map[string]string{"site": "plant2", "line": "3", "env": "prod", "gpu": ""}
	tests := []struct {
		sel  string
		want bool
	}{
		{"", true},
		{"site=plant2", true},
		{"site==plant2", true},
		{"site=plant1", false},
		{"site!=plant1", true},
		{"missing!=x", true},
		{"env in (prod, staging)", true},
		{"env in (staging)", false},
		{"env notin (test)", true},
		{"missing notin (test)", true},
		{"env notin (prod)", false},
		{"gpu", true},
		{"!gpu", false},
		{"!legacy", true},
		{"legacy", false},
		{"site=plant2,line=3", true},
		{" site = plant2 , line != 3 ", false},
		{"example.com/role=edge", false},
	}
	for _, tt := range tests {
		s, err := Parse(tt.sel)
		if err != nil {
			t.Fatalf("Parse(%q): %v", tt.sel, err)
		}
		if got := s.Matches(labels); got != tt.want {
			t.Errorf("%q matches = %v, want %v", tt.sel, got, tt.want)
		}
		again, err := Parse(s.String())
		if err != nil || again.String() != s.String() {
			t.Errorf("round trip %q -> %q -> %v %v", tt.sel, s.String(), again, err)
		}
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct{ sel, want string }{
		{"=x", "column 1: expected a label key"},
		{"a=b,", "column 5: expected a label key, found end"},
		{"a in b", "column 6: expected '(' after in"},
		{"a in (b", "missing ')'"},
		{"a ~ b", "column 3: expected an operator"},
		{"a=b c", "column 5: expected ',' or end"},
		{"-a=b", "must start and end with a letter or digit"},
		{"a=b/c", "column 3: value \"b/c\": '/' is not allowed"},
		{"a in (b;c)", "expected ',' or ')'"},
		{"a is b", `found "is"`},
	}
	for _, tt := range tests {
		_, err := Parse(tt.sel)
		if err == nil || !errors.Is(err, ErrSyntax) {
			t.Errorf("Parse(%q) = %v, want a syntax error", tt.sel, err)
			continue
		}
		if !contains2(err.Error(), tt.want) {
			t.Errorf("Parse(%q) = %q, want it to contain %q", tt.sel, err, tt.want)
		}
	}
}

func contains2(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

func TestParseLabels(t *testing.T) {
	m, err := ParseLabels("site=plant2, line=3")
	if err != nil || m["site"] != "plant2" || m["line"] != "3" || len(m) != 2 {
		t.Fatalf("ParseLabels = %v, %v", m, err)
	}
	for _, bad := range []string{"site", "=x", "a=b c", "a=(x)"} {
		if _, err := ParseLabels(bad); err == nil {
			t.Errorf("ParseLabels(%q) accepted", bad)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"", "a=b", "a!=b,c in (d,e),!f,g", "x notin (y)", "a==b", "k/a=b", "a in (,)", "!!a"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sel, err := Parse(s)
		if err != nil {
			if !errors.Is(err, ErrSyntax) {
				t.Fatalf("error without ErrSyntax: %v", err)
			}
			return
		}
		// Canonical form parses to the same canonical form.
		again, err := Parse(sel.String())
		if err != nil {
			t.Fatalf("canonical form %q of %q does not parse: %v", sel.String(), s, err)
		}
		if again.String() != sel.String() {
			t.Fatalf("canonical form unstable: %q -> %q", sel.String(), again.String())
		}
		sel.Matches(map[string]string{"a": "b"})
	})
}
