package config

import (
	"errors"
	"strings"
	"testing"
)

type ovSection struct {
	Max   int      `yaml:"max"`
	Name  string   `yaml:"name"`
	Items []string `yaml:"items"`
}

func (s ovSection) Validate() error {
	if s.Max > 10 {
		return Field("max", "%d: at most 10", s.Max)
	}
	return nil
}

type ovConfig struct {
	A ovSection `yaml:"a"`
	B ovSection `yaml:"b"`
}

func (c ovConfig) Validate() error {
	return errors.Join(Section("a", c.A.Validate()), Section("b", c.B.Validate()))
}

func TestParseOverlays(t *testing.T) {
	base := "a:\n  max: 1\n  name: base\n  items: [x, y]\nb:\n  max: 2\n"
	for _, tc := range []struct {
		name     string
		overlays []string
		want     ovConfig
		err      string // substring of the error; "" = none
	}{
		{name: "none", want: ovConfig{A: ovSection{Max: 1, Name: "base", Items: []string{"x", "y"}}, B: ovSection{Max: 2}}},
		{name: "merge a key", overlays: []string{"a:\n  max: 5\n"},
			want: ovConfig{A: ovSection{Max: 5, Name: "base", Items: []string{"x", "y"}}, B: ovSection{Max: 2}}},
		{name: "lists replace", overlays: []string{"a:\n  items: [z]\n"},
			want: ovConfig{A: ovSection{Max: 1, Name: "base", Items: []string{"z"}}, B: ovSection{Max: 2}}},
		{name: "later wins", overlays: []string{"b:\n  max: 3\n", "b:\n  max: 4\n  name: two\n"},
			want: ovConfig{A: ovSection{Max: 1, Name: "base", Items: []string{"x", "y"}}, B: ovSection{Max: 4, Name: "two"}}},
		{name: "validation error names the overlay and field", overlays: []string{"# c\nb:\n  max: 11\n"},
			err: "frag0:3:8: b.max: 11: at most 10"},
		{name: "unknown key", overlays: []string{"a:\n  mx: 3\n"}, err: "frag0:2:3"},
		{name: "not a mapping", overlays: []string{"- a\n"}, err: "frag0:1:1"},
		{name: "bad yaml", overlays: []string{"a: [\n"}, err: "frag0:1:1: invalid YAML"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ovs []Overlay
			for i, o := range tc.overlays {
				ovs = append(ovs, Overlay{Name: "frag" + string(rune('0'+i)), Data: []byte(o)})
			}
			var got ovConfig
			err := ParseOverlays("base.yaml", []byte(base), ovs, &got, Options{NoEnv: true})
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.A.Max != tc.want.A.Max || got.A.Name != tc.want.A.Name || strings.Join(got.A.Items, ",") != strings.Join(tc.want.A.Items, ",") ||
				got.B.Max != tc.want.B.Max || got.B.Name != tc.want.B.Name {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func FuzzParseOverlays(f *testing.F) {
	f.Add("a:\n  max: 5\n")
	f.Add("b: {items: [1, 2]}\n")
	f.Add("a: &x {max: 1}\nb: *x\n")
	f.Fuzz(func(t *testing.T, frag string) {
		var c ovConfig
		ParseOverlays("base.yaml", []byte("a:\n  max: 1\n"), []Overlay{{Name: "f", Data: []byte(frag)}}, &c, Options{NoEnv: true})
	})
}
