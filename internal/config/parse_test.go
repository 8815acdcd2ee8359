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

// One document per file: a second one is refused at its "---" (it used to
// be ignored, dropping the rest of the file silently); a leading or a
// trailing empty "---" is fine.
func TestParseSecondDocument(t *testing.T) {
	for _, c := range []struct {
		in   string
		line int // 0: no error
	}{
		{"a: 1\n---\nb: 2\n", 2},
		{"a: 1\n\n---\nb: 2\n---\nb: 3\n", 3},
		{"---\na: 1\n", 0},
		{"a: 1\n---\n", 0},
		{"a: 1\n---\nb: [\n", 3},
	} {
		var v struct {
			A any `yaml:"a"`
			B any `yaml:"b"`
		}
		err := Parse("f.yaml", []byte(c.in), &v, Options{NoEnv: true})
		if c.line == 0 {
			if err != nil {
				t.Errorf("%q: %v", c.in, err)
			}
			continue
		}
		var ps Problems
		if !errors.As(err, &ps) || len(ps) != 1 || ps[0].Pos.Line != c.line {
			t.Errorf("%q: %v, want one problem at line %d", c.in, err, c.line)
		}
	}
}
