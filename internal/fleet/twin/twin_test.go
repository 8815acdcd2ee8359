package twin

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestParseUpdate(t *testing.T) {
	tests := []struct {
		name, in string
		err      string // "" = ok
	}{
		{"reported", `{"state":{"reported":{"temp":21.5}}}`, ""},
		{"with versions and token", `{"state":{"reported":{"a":{"b":null}}},"reportedVersion":3,"desiredVersion":0,"clientToken":"t1"}`, ""},
		{"desired null is ignored", `{"state":{"reported":{},"desired":null}}`, ""},
		{"empty", ``, "empty payload"},
		{"not JSON", `hello`, "malformed JSON at byte 1"},
		{"truncated", `{"state":{"reported":{"a":1}`, "ends inside a value"},
		{"array", `[]`, "want twin.Update"},
		{"trailing", `{"state":{"reported":{}}} x`, "trailing data"},
		{"unknown field", `{"state":{"reported":{}},"version":1}`, `unknown field "version"`},
		{"no reported", `{"state":{}}`, "state.reported: must be a JSON object"},
		{"reported scalar", `{"state":{"reported":5}}`, "state.reported: must be a JSON object"},
		{"device writes desired", `{"state":{"reported":{},"desired":{"a":1}}}`, "state.desired: devices may not"},
		{"negative version", `{"state":{"reported":{}},"reportedVersion":-1}`, "reportedVersion: must be >= 0"},
		{"version wrong type", `{"state":{"reported":{}},"desiredVersion":"1"}`, "field desiredVersion"},
		{"long token", `{"state":{"reported":{}},"clientToken":"` + strings.Repeat("x", 65) + `"}`, "clientToken: longer than 64"},
		{"too deep", `{"state":{"reported":{"a":` + strings.Repeat("[", 9) + strings.Repeat("]", 9) + `}}}`, "nesting deeper than 8"},
		{"too large", `{"state":{"reported":{"a":"` + strings.Repeat("x", MaxPayload) + `"}}}`, "larger than 8192"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseUpdate([]byte(tt.in))
			if tt.err == "" {
				if err != nil {
					t.Fatalf("ParseUpdate(%s) = %v", tt.in, err)
				}
				return
			}
			if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("ParseUpdate(%s) = %v, want an ErrInvalid with %q", tt.in, err, tt.err)
			}
		})
	}
}

func TestMergeAndDelta(t *testing.T) {
	tests := []struct {
		doc, patch, want, keys string
	}{
		{``, `{"a":1}`, `{"a":1}`, "a"},
		{`{"a":1,"b":2}`, `{"a":null}`, `{"b":2}`, "a"},
		{`{"a":{"x":1,"y":2}}`, `{"a":{"y":null,"z":3}}`, `{"a":{"x":1,"z":3}}`, "a"},
		{`{"a":5}`, `{"a":{"n":null,"m":1}}`, `{"a":{"m":1}}`, "a"},
		{`{"a":[1,2]}`, `{"a":[3],"b":"s"}`, `{"a":[3],"b":"s"}`, "a,b"},
	}
	for _, tt := range tests {
		got, keys, err := Merge(json.RawMessage(tt.doc), json.RawMessage(tt.patch))
		if err != nil || string(got) != tt.want || strings.Join(keys, ",") != tt.keys {
			t.Errorf("Merge(%s, %s) = %s %v %v, want %s %s", tt.doc, tt.patch, got, keys, err, tt.want, tt.keys)
		}
	}
	deltas := []struct{ desired, reported, want string }{
		{`{"a":1}`, `{"a":1}`, ``},
		{`{"a":1,"b":2}`, `{"a":1}`, `{"b":2}`},
		{`{"a":{"x":1,"y":2}}`, `{"a":{"x":1,"y":3},"c":1}`, `{"a":{"y":2}}`},
		{`{"a":1}`, `{"a":1.0}`, `{"a":1}`}, // numbers compare as text
		{`{}`, `{"a":1}`, ``},
	}
	for _, tt := range deltas {
		if got := string(Delta(json.RawMessage(tt.desired), json.RawMessage(tt.reported))); got != tt.want {
			t.Errorf("Delta(%s, %s) = %s, want %s", tt.desired, tt.reported, got, tt.want)
		}
	}
}

// FuzzParseUpdate: whatever a device publishes, the parser returns an
// error or an update whose reported patch merges into any twin.
func FuzzParseUpdate(f *testing.F) {
	for _, s := range []string{
		`{"state":{"reported":{"temp":21.5}}}`,
		`{"state":{"reported":{"a":{"b":null}}},"reportedVersion":3,"desiredVersion":0,"clientToken":"t1"}`,
		`{"state":{"reported":{"a":[1,{"b":"\"{"}]}}}`,
		`{"state":{"desired":{"a":1}}}`, `[`, `{"state":{"reported":{}}} {}`, `"\u0000"`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		u, err := ParseUpdate(b)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		doc, _, err := Merge(json.RawMessage(`{"x":{"y":1}}`), u.State.Reported)
		if err != nil || !json.Valid(doc) {
			t.Fatalf("accepted update %q does not merge: %v", b, err)
		}
		_ = Delta(doc, u.State.Reported)
	})
}

func FuzzParseDesiredPatch(f *testing.F) {
	for _, s := range []string{`{"desired":{"a":1},"version":2}`, `{"desired":{"a":null}}`, `{"desired":[]}`, `{}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParseDesiredPatch(b)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if _, _, err := Merge(nil, p.Desired); err != nil {
			t.Fatalf("accepted patch %q does not merge: %v", b, err)
		}
	})
}
