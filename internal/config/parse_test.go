package config

import (
	"errors"
	"testing"
)

// Invalid YAML always has a line, also when yaml.v3's error has none
// (an unterminated quote is found at the end of the stream).
func TestParseInvalidYAMLHasLine(t *testing.T) {
	for _, c := range []struct {
		in   string
		line int
	}{
		{"\"", 1},
		{"a: 1\nb: \"x\n", 2},
		{"a: [1\n", 1},
		{"a: 1\n\"", 2},
	} {
		var v struct {
			A any `yaml:"a"`
			B any `yaml:"b"`
		}
		err := Parse("f.yaml", []byte(c.in), &v, Options{NoEnv: true})
		var ps Problems
		if !errors.As(err, &ps) || len(ps) != 1 || ps[0].Pos.Line != c.line {
			t.Errorf("%q: %v, want one problem at line %d", c.in, err, c.line)
		}
	}
}
