package dashboard

import (
	"net/url"
	"strings"
	"testing"
)

func TestFormField(t *testing.T) {
	for _, c := range []struct{ msg, want string }{
		{"waves[1].percent: 150: want more than 0, at most 100", "waves"},
		{"waves: at least one wave is required", "waves"},
		{"selector: 1:4: unexpected '!'", "selector"},
		{"gates.maxFailed: -1: want 0 or more", "maxFailed"},
		{"gates.maxFailedPercent: 101: ...", "maxFailedPercent"},
		{"object.kind: \"x\": want one of ...", "kind"},
		{"object: ruleset/nope does not exist", "object"},
		{"spec: set spec or revision, not both", "spec"},
		{"name: \"a b\": must be ...", "name"},
		{"soak: \"x\": not a duration", "soak"},
		{"something else: broke", ""},
		{"no colon", ""},
	} {
		if got := formField(c.msg); got != c.want {
			t.Errorf("formField(%q) = %q, want %q", c.msg, got, c.want)
		}
	}
}

func TestRolloutRequestErrors(t *testing.T) {
	for _, c := range []struct {
		form        url.Values
		field, want string
	}{
		{url.Values{"waves": {"canary"}}, "waves", "waves: line 1"},
		{url.Values{"waves": {"a count=1\n\nb size=3"}}, "waves", "waves: line 3"},
		{url.Values{"waves": {"a percent=ten"}}, "waves", "percent \"ten\""},
		{url.Values{"spec": {"{bad"}}, "spec", "spec: not valid JSON"},
		{url.Values{"revision": {"x"}}, "revision", "revision: \"x\""},
		{url.Values{"maxFailed": {"1.5"}}, "maxFailed", "maxFailed: \"1.5\""},
		{url.Values{"maxFailedPercent": {"lots"}}, "maxFailedPercent", "maxFailedPercent: \"lots\""},
	} {
		_, err := rolloutRequest(c.form)
		if err == nil || err.Field != c.field || !strings.Contains(err.Msg, c.want) {
			t.Errorf("%v: got %+v, want field %s and %q", c.form, err, c.field, c.want)
		}
	}
	b, err := rolloutRequest(url.Values{"name": {"r"}, "kind": {"ruleset"}, "object": {"f"}, "spec": {`{"sql":"x"}`},
		"waves": {"canary selector=ring=canary\n# comment\nhalf percent=50\none count=1"}, "maxFailed": {"0"}, "autoRollback": {"1"}})
	if err != nil {
		t.Fatal(err)
	}
	want := `"waves":[{"name":"canary","selector":"ring=canary"},{"name":"half","percent":50},{"count":1,"name":"one"}]`
	if !strings.Contains(string(b), want) || !strings.Contains(string(b), `"gates":{"maxFailed":0}`) || !strings.Contains(string(b), `"autoRollback":true`) {
		t.Fatalf("body %s", b)
	}
}

func FuzzParseWaves(f *testing.F) {
	f.Add("canary selector=ring=canary\nhalf percent=50\none count=1")
	f.Add("x percent=\n=")
	f.Fuzz(func(t *testing.T, s string) {
		ws, err := parseWaves(s)
		if err == nil {
			for _, w := range ws {
				if len(w) != 2 {
					t.Fatalf("wave %v: want a name and one of selector, percent, count", w)
				}
			}
		} else if !strings.HasPrefix(err.Error(), "waves: line ") {
			t.Fatalf("error %q names no line", err)
		}
	})
}
