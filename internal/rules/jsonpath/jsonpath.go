// Package jsonpath extracts single fields from JSON documents without
// decoding them: a gjson-style forward scanner that returns a view into the
// input bytes.
//
// # Usage
//
//	p, err := jsonpath.Compile("a.b[0].c")
//	r := p.Get(payload)          // no allocation
//	if f, ok := r.Float(); ok { ... }
//
// A path is a dot-separated list of object keys with optional array indexes
// (`a.b[2]`, `[0].x`); a key that contains dots or brackets is written quoted:
// `"a.b".c`.
//
// # Guarantees
//
//   - Get never allocates and never panics, whatever the input (fuzzed).
//   - Result.Raw aliases the input; it is valid as long as the input is.
//   - For a valid JSON document Get returns exactly what encoding/json would
//     find at that path (fuzzed against encoding/json). When an object has a
//     key twice, the first one wins.
//
// # Caveats
//
// The scanner does not validate the parts of the document it skips: on
// malformed input it returns Missing or a best-effort value, never an error.
// Nesting depth is unbounded for skipping (no recursion is involved).
package jsonpath

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
	"unsafe"
)

// Type is the JSON type of a Result.
type Type uint8

const (
	Missing Type = iota // path not present (or input malformed at that point)
	Null
	False
	True
	Number
	String
	Object
	Array
)

func (t Type) String() string {
	switch t {
	case Missing:
		return "missing"
	case Null:
		return "null"
	case False, True:
		return "bool"
	case Number:
		return "number"
	case String:
		return "string"
	case Object:
		return "object"
	case Array:
		return "array"
	}
	return "unknown"
}

// Result is a value found in a document. Raw is the value's exact bytes in
// the input (strings include their quotes).
type Result struct {
	Type Type
	Raw  []byte
}

// step is one path element: an object key, or an array index when key is
// unset (idx >= 0).
type step struct {
	key   string
	idx   int
	isIdx bool
}

// Path is a compiled field path. The zero Path selects the whole document.
type Path struct {
	steps []step
	src   string
}

// ErrSyntax is returned (wrapped) by Compile for a malformed path.
var ErrSyntax = errors.New("jsonpath: bad path")

// MaxSteps bounds the number of elements in a path.
const MaxSteps = 64

// Compile parses a path such as `a.b[0].c` or `"odd.key"[1]`.
func Compile(s string) (Path, error) {
	p := Path{src: s}
	i := 0
	expectKey := true
	for i < len(s) {
		if len(p.steps) >= MaxSteps {
			return Path{}, fmt.Errorf("%w %q: more than %d elements", ErrSyntax, s, MaxSteps)
		}
		switch c := s[i]; {
		case c == '[':
			j := i + 1
			for j < len(s) && s[j] >= '0' && s[j] <= '9' {
				j++
			}
			if j == i+1 || j >= len(s) || s[j] != ']' {
				return Path{}, fmt.Errorf("%w %q: at %d: expected [index]", ErrSyntax, s, i)
			}
			n, err := strconv.Atoi(s[i+1 : j])
			if err != nil || n > math.MaxInt32 {
				return Path{}, fmt.Errorf("%w %q: at %d: index out of range", ErrSyntax, s, i)
			}
			p.steps = append(p.steps, step{idx: n, isIdx: true})
			i = j + 1
			expectKey = false
		case c == '.':
			if expectKey {
				return Path{}, fmt.Errorf("%w %q: at %d: empty key", ErrSyntax, s, i)
			}
			i++
			expectKey = true
			if i == len(s) {
				return Path{}, fmt.Errorf("%w %q: trailing dot", ErrSyntax, s)
			}
		case c == '"':
			if !expectKey {
				return Path{}, fmt.Errorf("%w %q: at %d: expected . or [", ErrSyntax, s, i)
			}
			j := i + 1
			for j < len(s) && s[j] != '"' {
				j++
			}
			if j >= len(s) {
				return Path{}, fmt.Errorf("%w %q: unterminated quoted key", ErrSyntax, s)
			}
			p.steps = append(p.steps, step{key: s[i+1 : j]})
			i = j + 1
			expectKey = false
		default:
			if !expectKey {
				return Path{}, fmt.Errorf("%w %q: at %d: expected . or [", ErrSyntax, s, i)
			}
			j := i
			for j < len(s) && s[j] != '.' && s[j] != '[' && s[j] != '"' {
				j++
			}
			p.steps = append(p.steps, step{key: s[i:j]})
			i = j
			expectKey = false
		}
	}
	return p, nil
}

// MustCompile is Compile that panics on error (for literals in code).
func MustCompile(s string) Path {
	p, err := Compile(s)
	if err != nil {
		panic(err)
	}
	return p
}

// String returns the source text of the path.
func (p Path) String() string { return p.src }

// Len returns the number of elements.
func (p Path) Len() int { return len(p.steps) }

// Get returns the value at p in data.
func (p Path) Get(data []byte) Result {
	i := skipWS(data, 0)
	for _, st := range p.steps {
		if i >= len(data) {
			return Result{}
		}
		if st.isIdx {
			if data[i] != '[' {
				return Result{}
			}
			i = findIndex(data, i+1, st.idx)
		} else {
			if data[i] != '{' {
				return Result{}
			}
			i = findKey(data, i+1, st.key)
		}
		if i < 0 {
			return Result{}
		}
	}
	return valueAt(data, i)
}

// Get is a convenience for Compile+Get; it allocates for the compiled path.
func Get(data []byte, path string) Result {
	p, err := Compile(path)
	if err != nil {
		return Result{}
	}
	return p.Get(data)
}

func skipWS(d []byte, i int) int {
	for i < len(d) {
		switch d[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// findKey scans the object whose '{' is just before i and returns the offset
// of the value for key, or -1.
func findKey(d []byte, i int, key string) int {
	for {
		i = skipWS(d, i)
		if i >= len(d) || d[i] != '"' {
			return -1 // '}' or malformed
		}
		ks := i + 1
		ke, esc := scanString(d, i)
		if ke < 0 {
			return -1
		}
		i = skipWS(d, ke+1)
		if i >= len(d) || d[i] != ':' {
			return -1
		}
		i = skipWS(d, i+1)
		var match bool
		if !esc {
			match = string(d[ks:ke]) == key
		} else {
			match = unescapedEqual(d[ks:ke], key)
		}
		if match {
			return i
		}
		i = skipValue(d, i)
		if i < 0 {
			return -1
		}
		i = skipWS(d, i)
		if i >= len(d) || d[i] != ',' {
			return -1
		}
		i++
	}
}

// findIndex scans the array whose '[' is just before i and returns the
// offset of element n, or -1.
func findIndex(d []byte, i int, n int) int {
	i = skipWS(d, i)
	if i < len(d) && d[i] == ']' {
		return -1
	}
	for k := 0; ; k++ {
		i = skipWS(d, i)
		if i >= len(d) {
			return -1
		}
		if k == n {
			return i
		}
		i = skipValue(d, i)
		if i < 0 {
			return -1
		}
		i = skipWS(d, i)
		if i >= len(d) || d[i] != ',' {
			return -1
		}
		i++
	}
}

// scanString returns the index of the closing quote of the string starting
// at d[i] == '"', and whether it contains escapes; -1 if unterminated.
func scanString(d []byte, i int) (int, bool) {
	esc := false
	for j := i + 1; j < len(d); j++ {
		c := d[j]
		if c == '"' {
			return j, esc
		}
		if c == '\\' {
			esc = true
			j++
		}
	}
	return -1, esc
}

// skipValue returns the offset just past the value starting at d[i], or -1.
func skipValue(d []byte, i int) int {
	if i >= len(d) {
		return -1
	}
	switch d[i] {
	case '"':
		e, _ := scanString(d, i)
		if e < 0 {
			return -1
		}
		return e + 1
	case '{', '[':
		depth := 0
		for j := i; j < len(d); j++ {
			switch d[j] {
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1
				}
			case '"':
				e, _ := scanString(d, j)
				if e < 0 {
					return -1
				}
				j = e
			}
		}
		return -1
	default:
		j := i
		for j < len(d) {
			switch d[j] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				if j == i {
					return -1
				}
				return j
			}
			j++
		}
		if j == i {
			return -1
		}
		return j
	}
}

func valueAt(d []byte, i int) Result {
	if i >= len(d) {
		return Result{}
	}
	e := skipValue(d, i)
	if e < 0 {
		return Result{}
	}
	raw := d[i:e:e]
	switch d[i] {
	case '"':
		return Result{Type: String, Raw: raw}
	case '{':
		return Result{Type: Object, Raw: raw}
	case '[':
		return Result{Type: Array, Raw: raw}
	case 't':
		if string(raw) == "true" {
			return Result{Type: True, Raw: raw}
		}
	case 'f':
		if string(raw) == "false" {
			return Result{Type: False, Raw: raw}
		}
	case 'n':
		if string(raw) == "null" {
			return Result{Type: Null, Raw: raw}
		}
	default:
		if d[i] == '-' || (d[i] >= '0' && d[i] <= '9') {
			return Result{Type: Number, Raw: raw}
		}
	}
	return Result{}
}

// Exists reports whether the path was found.
func (r Result) Exists() bool { return r.Type != Missing }

// Float returns the value of a Number result.
func (r Result) Float() (float64, bool) {
	if r.Type != Number {
		return 0, false
	}
	f, err := strconv.ParseFloat(unsafe.String(unsafe.SliceData(r.Raw), len(r.Raw)), 64)
	if err != nil {
		if ne, ok := err.(*strconv.NumError); ok && ne.Err == strconv.ErrRange {
			return f, true
		}
		return 0, false
	}
	return f, true
}

// StringView returns the contents of a String result. When the string has
// no escapes the result aliases the input (no allocation); the caller must
// not keep it beyond the input's lifetime without strings.Clone.
func (r Result) StringView() (string, bool) {
	if r.Type != String || len(r.Raw) < 2 {
		return "", false
	}
	inner := r.Raw[1 : len(r.Raw)-1]
	for _, c := range inner {
		if c == '\\' {
			s, ok := Unescape(inner)
			return s, ok
		}
	}
	return unsafe.String(unsafe.SliceData(inner), len(inner)), true
}

// Unescape decodes the body of a JSON string (without quotes).
func Unescape(b []byte) (string, bool) {
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c != '\\' {
			out = append(out, c)
			continue
		}
		i++
		if i >= len(b) {
			return "", false
		}
		switch b[i] {
		case '"', '\\', '/':
			out = append(out, b[i])
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r, n := hex4(b, i+1)
			if n < 0 {
				return "", false
			}
			i += 4
			if utf16.IsSurrogate(r) {
				if i+2 < len(b) && b[i+1] == '\\' && b[i+2] == 'u' {
					r2, n2 := hex4(b, i+3)
					if n2 >= 0 {
						if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
							i += 6
							out = utf8.AppendRune(out, dec)
							continue
						}
					}
				}
				r = utf8.RuneError
			}
			out = utf8.AppendRune(out, r)
		default:
			return "", false
		}
	}
	return string(out), true
}

func hex4(b []byte, i int) (rune, int) {
	if i+4 > len(b) {
		return 0, -1
	}
	var r rune
	for _, c := range b[i : i+4] {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, -1
		}
	}
	return r, 4
}

func unescapedEqual(raw []byte, key string) bool {
	s, ok := Unescape(raw)
	return ok && s == key
}

// ForEach calls fn for every element of an Array result (index, value) or
// every member of an Object result (key view, value); it stops when fn
// returns false. Keys with escapes are unescaped (allocating).
func (r Result) ForEach(fn func(key string, idx int, v Result) bool) {
	d := r.Raw
	if len(d) == 0 {
		return
	}
	switch r.Type {
	case Array:
		i := skipWS(d, 1)
		if i < len(d) && d[i] == ']' {
			return
		}
		for k := 0; ; k++ {
			i = skipWS(d, i)
			v := valueAt(d, i)
			if v.Type == Missing {
				return
			}
			if !fn("", k, v) {
				return
			}
			i = skipWS(d, i+len(v.Raw))
			if i >= len(d) || d[i] != ',' {
				return
			}
			i++
		}
	case Object:
		i := 1
		for {
			i = skipWS(d, i)
			if i >= len(d) || d[i] != '"' {
				return
			}
			ke, esc := scanString(d, i)
			if ke < 0 {
				return
			}
			kb := d[i+1 : ke]
			var key string
			if esc {
				key, _ = Unescape(kb)
			} else {
				key = unsafe.String(unsafe.SliceData(kb), len(kb))
			}
			i = skipWS(d, ke+1)
			if i >= len(d) || d[i] != ':' {
				return
			}
			i = skipWS(d, i+1)
			v := valueAt(d, i)
			if v.Type == Missing {
				return
			}
			if !fn(key, -1, v) {
				return
			}
			i = skipWS(d, i+len(v.Raw))
			if i >= len(d) || d[i] != ',' {
				return
			}
			i++
		}
	}
}

// Set is a group of paths extracted together in one pass over a document
// (GetAll). Build it once per rule.
type Set struct {
	paths []Path
	// byFirst maps a first key to the indexes of the paths that start with it.
	first []string
	idx   [][]int
	other []int // paths not starting with a key (root or index)
}

// NewSet groups paths for GetAll.
func NewSet(paths []Path) *Set {
	s := &Set{paths: paths}
	pos := map[string]int{}
	for i, p := range paths {
		if len(p.steps) == 0 || p.steps[0].isIdx {
			s.other = append(s.other, i)
			continue
		}
		k := p.steps[0].key
		j, ok := pos[k]
		if !ok {
			j = len(s.first)
			pos[k] = j
			s.first = append(s.first, k)
			s.idx = append(s.idx, nil)
		}
		s.idx[j] = append(s.idx[j], i)
	}
	return s
}

// Len returns the number of paths.
func (s *Set) Len() int { return len(s.paths) }

// GetAll fills out[i] with paths[i].Get(data) scanning the top-level object
// once. len(out) must be at least s.Len(). It does not allocate.
func (s *Set) GetAll(data []byte, out []Result) {
	out = out[:len(s.paths)]
	for i := range out {
		out[i] = Result{}
	}
	for _, i := range s.other {
		out[i] = s.paths[i].Get(data)
	}
	if len(s.first) == 0 {
		return
	}
	i := skipWS(data, 0)
	if i >= len(data) || data[i] != '{' {
		return
	}
	i++
	remaining := len(s.first)
	var seen uint64 // first 64 groups: dedupe repeated keys (first wins)
	for remaining > 0 {
		i = skipWS(data, i)
		if i >= len(data) || data[i] != '"' {
			return
		}
		ks := i + 1
		ke, esc := scanString(data, i)
		if ke < 0 {
			return
		}
		i = skipWS(data, ke+1)
		if i >= len(data) || data[i] != ':' {
			return
		}
		i = skipWS(data, i+1)
		var key string
		if esc {
			key, _ = Unescape(data[ks:ke])
		} else {
			key = unsafe.String(unsafe.SliceData(data[ks:]), ke-ks)
		}
		end := skipValue(data, i)
		if end < 0 {
			return
		}
		for g, fk := range s.first {
			if fk != key {
				continue
			}
			if g < 64 {
				if seen&(1<<g) != 0 {
					break
				}
				seen |= 1 << g
			} else if out[s.idx[g][0]].Type != Missing {
				break
			}
			remaining--
			sub := data[i:end:end]
			for _, pi := range s.idx[g] {
				p := s.paths[pi]
				if len(p.steps) == 1 {
					out[pi] = valueAt(sub, 0)
				} else {
					out[pi] = Path{steps: p.steps[1:]}.Get(sub)
				}
			}
			break
		}
		i = skipWS(data, end)
		if i >= len(data) || data[i] != ',' {
			return
		}
		i++
	}
}
