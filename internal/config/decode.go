package config

import (
	"encoding"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"sync"

	"gopkg.in/yaml.v3"
)

// Pos is a location in a config source.
type Pos struct {
	File   string
	Line   int
	Column int
}

func (p Pos) String() string {
	if p.Line == 0 {
		return p.File
	}
	return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Column)
}

// Problem is one error in a config, with where it is.
type Problem struct {
	Pos  Pos
	Path string // YAML path, e.g. broker.users[0].acl[1].topic
	Err  error
}

func (p Problem) Error() string {
	if p.Path == "" {
		return fmt.Sprintf("%s: %v", p.Pos, p.Err)
	}
	return fmt.Sprintf("%s: %s: %v", p.Pos, p.Path, p.Err)
}

func (p Problem) Unwrap() error { return p.Err }

// Problems is every error found in a config, in file order.
type Problems []Problem

func (ps Problems) Error() string {
	var b strings.Builder
	for i, p := range ps {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(p.Error())
	}
	return b.String()
}

// Sentinel errors wrapped by problems.
var (
	ErrUnknownKey = errors.New("unknown key")
	ErrWrongType  = errors.New("wrong type")
	ErrInvalid    = errors.New("invalid config")
)

// decoder walks a yaml.Node tree into a Go value with strict, located errors.
// Unlike yaml.v3's KnownFields decoding it reports every problem (not the
// first), with line and column, and it records the position of every path so
// that semantic validation errors can be located too.
type decoder struct {
	file     string
	files    map[*yaml.Node]string // nodes from other documents (overlays)
	problems Problems
	pos      map[string]Pos // path -> position of the value
}

var unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()
var textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()

func (d *decoder) at(n *yaml.Node) Pos {
	if f, ok := d.files[n]; ok {
		return Pos{File: f, Line: n.Line, Column: n.Column}
	}
	return Pos{File: d.file, Line: n.Line, Column: n.Column}
}

func (d *decoder) fail(n *yaml.Node, path string, err error) {
	d.problems = append(d.problems, Problem{Pos: d.at(n), Path: path, Err: err})
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// KindName describes what a YAML node is, for "expected X, got Y" errors:
// "a mapping", "a list", "null", the quoted scalar, "an alias".
func KindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return "null"
		}
		return fmt.Sprintf("%q", n.Value)
	case yaml.AliasNode:
		return "an alias"
	}
	return "a document"
}

func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return
		}
		n = n.Content[0]
	}
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	d.pos[path] = d.at(n)
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return // keep the zero value / default
	}
	// Custom unmarshalers decide themselves.
	if v.CanAddr() && (v.Addr().Type().Implements(unmarshalerType) || v.Addr().Type().Implements(textUnmarshalerType)) {
		if err := n.Decode(v.Addr().Interface()); err != nil {
			d.fail(n, path, cleanYAMLErr(err))
		}
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.decode(n, v.Elem(), path)
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			d.fail(n, path, fmt.Errorf("%w: expected a mapping, got %s", ErrWrongType, KindName(n)))
			return
		}
		fields := structFields(v.Type())
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			if k.Value == "<<" {
				d.fail(k, path, errors.New("merge keys (<<) are not supported"))
				continue
			}
			idx, ok := fields[k.Value]
			if !ok {
				d.fail(k, path, fmt.Errorf("%w %q%s", ErrUnknownKey, k.Value, suggest(k.Value, fields)))
				continue
			}
			if seen[k.Value] {
				d.fail(k, join(path, k.Value), errors.New("duplicate key"))
				continue
			}
			seen[k.Value] = true
			d.pos[join(path, k.Value)+"#key"] = d.at(k)
			d.decode(val, v.FieldByIndex(idx), join(path, k.Value))
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			if v.Type().Elem().Kind() == reflect.String && n.Kind == yaml.ScalarNode {
				v.Set(reflect.ValueOf([]string{n.Value}).Convert(v.Type()))
				return
			}
			d.fail(n, path, fmt.Errorf("%w: expected a list, got %s", ErrWrongType, KindName(n)))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, c := range n.Content {
			d.decode(c, s.Index(i), fmt.Sprintf("%s[%d]", path, i))
		}
		v.Set(s)
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			d.fail(n, path, fmt.Errorf("%w: expected a mapping, got %s", ErrWrongType, KindName(n)))
			return
		}
		if v.IsNil() {
			v.Set(reflect.MakeMap(v.Type()))
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			kv := reflect.New(v.Type().Key()).Elem()
			if err := k.Decode(kv.Addr().Interface()); err != nil {
				d.fail(k, path, cleanYAMLErr(err))
				continue
			}
			ev := reflect.New(v.Type().Elem()).Elem()
			d.decode(val, ev, join(path, k.Value))
			v.SetMapIndex(kv, ev)
		}
	case reflect.Interface:
		var x any
		if err := n.Decode(&x); err != nil {
			d.fail(n, path, cleanYAMLErr(err))
			return
		}
		if x != nil {
			v.Set(reflect.ValueOf(x))
		}
	default:
		if n.Kind != yaml.ScalarNode {
			d.fail(n, path, fmt.Errorf("%w: expected %s, got %s", ErrWrongType, typeName(v.Type()), KindName(n)))
			return
		}
		if err := n.Decode(v.Addr().Interface()); err != nil {
			d.fail(n, path, fmt.Errorf("%w: expected %s, got %s", ErrWrongType, typeName(v.Type()), KindName(n)))
		}
	}
}

func typeName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "an integer"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a non-negative integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	}
	return t.String()
}

var yamlLineRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^(yaml: )?(unmarshal errors:\n\s*)?(line \d+: )?`) })

func cleanYAMLErr(err error) error {
	msg := yamlLineRE().ReplaceAllString(err.Error(), "")
	return errors.New(msg)
}

// structFields maps yaml keys to field index paths, following inline fields.
func structFields(t reflect.Type) map[string][]int {
	out := map[string][]int{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("yaml")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" {
			continue
		}
		if strings.Contains(opts, "inline") {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			for k, idx := range structFields(ft) {
				out[k] = append([]int{i}, idx...)
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out[name] = []int{i}
	}
	return out
}

// suggest returns ` (did you mean "x"?)` for a key close to a known one.
func suggest(key string, fields map[string][]int) string {
	names := make([]string, 0, len(fields))
	for k := range fields {
		names = append(names, k)
	}
	if best := Closest(key, names); best != "" {
		return fmt.Sprintf(" (did you mean %q?)", best)
	}
	return ""
}

// Closest returns the candidate nearest to word by edit distance, if it is
// within 2 edits ("" otherwise); ties go to the alphabetically first. Used for
// "did you mean" hints on unknown keys, functions and names.
func Closest(word string, candidates []string) string {
	sorted := append([]string(nil), candidates...)
	sort.Strings(sorted)
	best, bestD := "", 3
	for _, c := range sorted {
		if d := levenshtein(word, c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

func levenshtein(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 99
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// locate finds the position for a path, falling back to its closest parent.
func (d *decoder) locate(path string) Pos {
	for p := path; ; {
		if pos, ok := d.pos[p]; ok {
			return pos
		}
		i := strings.LastIndexAny(p, ".[")
		if i <= 0 {
			break
		}
		p = p[:i]
	}
	return Pos{File: d.file}
}
