// Package yamlstrict is Outpost's one strict YAML decoder: it walks a
// yaml.Node tree into a Go value, refusing unknown keys, duplicate keys,
// merge keys and wrong types, and reports every problem (not the first) as a
// Problem with file:line:column and the YAML path. It also records the
// position of every path so that later semantic errors can be located
// (Decoder.Locate). internal/config (outpost.yaml, overlays, function
// manifests through config.Parse) decodes with it; recipes use its syntax
// error line and Closest hints (their per-key handlers stay, see
// docs/duplicates.md).
package yamlstrict

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
)

// Decoder walks a yaml.Node tree into a Go value with strict, located errors.
// Unlike yaml.v3's KnownFields decoding it reports every problem (not the
// first), with line and column, and it records the position of every path so
// that semantic validation errors can be located too.
type Decoder struct {
	file     string
	files    map[*yaml.Node]string // nodes from other documents (overlays)
	problems Problems
	pos      map[string]Pos // path -> position of the value
}

// NewDecoder returns a decoder for nodes of file; files names the document
// of nodes that came from elsewhere (overlays), may be nil.
func NewDecoder(file string, files map[*yaml.Node]string) *Decoder {
	return &Decoder{file: file, files: files, pos: map[string]Pos{}}
}

// Decode decodes n into v (addressable) at path ("" for the root) and
// returns every problem found so far, in the order found.
func (d *Decoder) Decode(n *yaml.Node, v reflect.Value, path string) Problems {
	d.decode(n, v, path)
	return d.problems
}

var unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()
var textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()

func (d *Decoder) at(n *yaml.Node) Pos {
	if f, ok := d.files[n]; ok {
		return Pos{File: f, Line: n.Line, Column: n.Column}
	}
	return Pos{File: d.file, Line: n.Line, Column: n.Column}
}

func (d *Decoder) fail(n *yaml.Node, path string, err error) {
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

func (d *Decoder) decode(n *yaml.Node, v reflect.Value, path string) {
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
			d.fail(n, path, CleanErr(err))
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
		Keys(n, func(key string) bool {
			_, ok := fields[key]
			return ok && key != "<<"
		}, func(k, val *yaml.Node) {
			d.pos[join(path, k.Value)+"#key"] = d.at(k)
			d.decode(val, v.FieldByIndex(fields[k.Value]), join(path, k.Value))
		}, func(k *yaml.Node, p KeyProblem) {
			switch {
			case p == KeyDuplicate:
				d.fail(k, join(path, k.Value), errors.New("duplicate key"))
			case k.Value == "<<":
				d.fail(k, path, errors.New("merge keys (<<) are not supported"))
			default:
				d.fail(k, path, fmt.Errorf("%w %q%s", ErrUnknownKey, k.Value, suggest(k.Value, fields)))
			}
		})
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
				d.fail(k, path, CleanErr(err))
				continue
			}
			ev := reflect.New(v.Type().Elem()).Elem()
			d.decode(val, ev, join(path, k.Value))
			v.SetMapIndex(kv, ev)
		}
	case reflect.Interface:
		var x any
		if err := n.Decode(&x); err != nil {
			d.fail(n, path, CleanErr(err))
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

// CleanErr strips yaml.v3's "yaml: ", "unmarshal errors:" and "line N: "
// prefixes from err, for messages that carry their own position.
func CleanErr(err error) error {
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

// Locate finds the position for a path, falling back to its closest parent.
func (d *Decoder) Locate(path string) Pos {
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

// ErrLine is the line number yaml.v3 puts in a syntax error's text
// ("yaml: line 3: ..."), 0 if there is none.
func ErrLine(err error) int {
	s := err.Error()
	if i := strings.Index(s, "line "); i >= 0 {
		n := 0
		for _, c := range s[i+5:] {
			if c < '0' || c > '9' {
				break
			}
			n = n*10 + int(c-'0')
		}
		return n
	}
	return 0
}

// KeyProblem is what is wrong with one key of a mapping, for Keys.
type KeyProblem int

// The key problems Keys reports, in the order it checks them.
const (
	KeyNotString KeyProblem = iota + 1 // the key is a mapping, list or alias
	KeyUnknown                         // known returned false
	KeyDuplicate                       // the key appeared before in this mapping
)

// Keys walks mapping n in order: for each key it checks, in this order, that
// it is a string, known (known nil accepts every key) and not a repeat, calls bad with the first problem found, else calls visit.
// Both strict walkers use it: Decoder's struct case and hand-written
// per-key decoders (recipes). n must be a mapping node.
func Keys(n *yaml.Node, known func(key string) bool, visit func(k, v *yaml.Node), bad func(k *yaml.Node, p KeyProblem)) {
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch {
		case k.Kind != yaml.ScalarNode:
			bad(k, KeyNotString)
		case known != nil && !known(k.Value):
			bad(k, KeyUnknown)
		case seen[k.Value]:
			bad(k, KeyDuplicate)
		default:
			seen[k.Value] = true
			visit(k, v)
		}
	}
}
