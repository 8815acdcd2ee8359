package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/outpost-edge/outpost/internal/yamlstrict"
)

// Defaulter is implemented by config structs that fill in default values
// after decoding.
type Defaulter interface{ SetDefaults() }

// Validator is implemented by config structs that check themselves as a
// whole. Validate returns errors.Join of every problem, each of the form
// "path: what is wrong" (see Section and Field) so it can be located.
type Validator interface{ Validate() error }

// EnvPrefix starts every environment override: OUTPOST_<PATH> where PATH is
// the YAML path in upper case with "__" between levels and list indexes as
// numbers, e.g. OUTPOST_UPLINK__PASSWORD or
// OUTPOST_BROKER__USERS__0__PASSWORD_HASH. Overrides are applied before
// decoding, so they are validated like the file.
const EnvPrefix = "OUTPOST_"

// Options tune Load.
type Options struct {
	// Environ supplies environment overrides (KEY=VALUE); nil means os.Environ.
	Environ []string
	// NoEnv disables environment overrides.
	NoEnv bool
}

// Load reads the YAML file at path into dst (a pointer to a struct),
// strictly, then applies defaults and validation. On failure it returns
// Problems, every error found, in file order; dst is then unusable.
func Load(path string, dst any, opts Options) error {
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("config: %s: file not found", path)
		}
		return fmt.Errorf("config: %w", err)
	}
	return Parse(path, b, dst, opts)
}

// Parse is Load for bytes already read; name is used in error positions.
func Parse(name string, data []byte, dst any, opts Options) error {
	root, err := parseNode(name, data)
	if err != nil {
		return err
	}
	return decodeRoot(name, root, nil, dst, opts)
}

// parseNode parses one YAML document (an empty one is an empty mapping).
func parseNode(name string, data []byte) (*yaml.Node, error) {
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil && err.Error() != "EOF" {
		line := yamlstrict.ErrLine(err)
		if line == 0 {
			// yaml.v3 gives no line for errors at the end of the input
			// ("found unexpected end of stream"): that is the last line.
			line = bytes.Count(data, []byte("\n")) + 1
		}
		return nil, Problems{{Pos: Pos{File: name, Line: line, Column: 1}, Err: fmt.Errorf("invalid YAML: %v", yamlstrict.CleanErr(err))}}
	}
	if root.Kind == 0 { // empty file
		root = yaml.Node{Kind: yaml.DocumentNode, Content: []*yaml.Node{{Kind: yaml.MappingNode, Tag: "!!map"}}}
	}
	// One document per file: a stray "---" must not silently drop the
	// rest of the file.
	var next yaml.Node
	if err := dec.Decode(&next); err == nil {
		if len(next.Content) == 0 || next.Content[0].Tag == "!!null" {
			return &root, nil // a trailing "---" with nothing after it
		}
		line := next.Content[0].Line
		if line > 1 {
			line-- // the "---" that starts it
		}
		return nil, Problems{{Pos: Pos{File: name, Line: line, Column: 1}, Err: errors.New("a second YAML document (\"---\"): a config file holds one document; remove the separator")}}
	} else if err != io.EOF {
		return nil, Problems{{Pos: Pos{File: name, Line: max(yamlstrict.ErrLine(err), 1), Column: 1}, Err: fmt.Errorf("invalid YAML: %v", yamlstrict.CleanErr(err))}}
	}
	return &root, nil
}

// decodeRoot decodes, defaults and validates root into dst; files names the
// document of nodes that did not come from name (overlays).
func decodeRoot(name string, root *yaml.Node, files map[*yaml.Node]string, dst any, opts Options) error {
	if !opts.NoEnv {
		env := opts.Environ
		if env == nil {
			env = os.Environ()
		}
		if err := applyEnv(root, env); err != nil {
			return Problems{{Pos: Pos{File: "environment"}, Err: err}}
		}
	}
	d := yamlstrict.NewDecoder(name, files)
	rv := reflect.ValueOf(dst)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return fmt.Errorf("config: Parse needs a non-nil pointer, got %T", dst)
	}
	if ps := d.Decode(root, rv.Elem(), ""); len(ps) > 0 {
		sortProblems(ps)
		return ps
	}
	if df, ok := dst.(Defaulter); ok {
		df.SetDefaults()
	}
	if v, ok := dst.(Validator); ok {
		if err := v.Validate(); err != nil {
			ps := locateAll(d, err)
			sortProblems(ps)
			return ps
		}
	}
	return nil
}

func sortProblems(ps Problems) {
	sort.SliceStable(ps, func(i, j int) bool {
		if ps[i].Pos.Line != ps[j].Pos.Line {
			return ps[i].Pos.Line < ps[j].Pos.Line
		}
		return ps[i].Pos.Column < ps[j].Pos.Column
	})
}

// locateAll flattens a validation error tree into located problems.
func locateAll(d *yamlstrict.Decoder, err error) Problems {
	var out Problems
	for _, e := range flatten(err) {
		var fe *FieldError
		path, msg := "", e.Error()
		if errors.As(e, &fe) {
			path, msg = fe.Path, fe.Err.Error()
		} else if i := strings.Index(msg, ": "); i > 0 && !strings.ContainsAny(msg[:i], " \t\"'") {
			path, msg = msg[:i], msg[i+2:]
		}
		out = append(out, Problem{Pos: d.Locate(path), Path: path, Err: invalid(msg)})
	}
	return out
}

func flatten(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}

// FieldError is a validation error at a YAML path.
type FieldError struct {
	Path string
	Err  error
}

func (e *FieldError) Error() string { return e.Path + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

// Field returns a validation error for the value at path.
func Field(path string, format string, args ...any) error {
	return &FieldError{Path: path, Err: fmt.Errorf(format, args...)}
}

// Section prefixes every error in err (a tree made by errors.Join) with the
// section name, so "users[0].topic: bad" becomes "broker.users[0].topic: bad".
// Errors without a path become "section: msg".
func Section(name string, err error) error {
	if err == nil {
		return nil
	}
	var out []error
	for _, e := range flatten(err) {
		var fe *FieldError
		switch {
		case errors.As(e, &fe):
			out = append(out, &FieldError{Path: joinPath(name, fe.Path), Err: fe.Err})
		default:
			msg := e.Error()
			if i := strings.Index(msg, ": "); i > 0 && !strings.ContainsAny(msg[:i], " \t\"'") {
				out = append(out, &FieldError{Path: joinPath(name, msg[:i]), Err: errors.New(msg[i+2:])})
			} else {
				out = append(out, &FieldError{Path: name, Err: e})
			}
		}
	}
	return errors.Join(out...)
}

func joinPath(section, p string) string {
	if p == "" {
		return section
	}
	if strings.HasPrefix(p, "[") {
		return section + p
	}
	return section + "." + p
}

// applyEnv applies OUTPOST_A__B__0__C=value overrides to the YAML tree,
// creating mappings as needed. Keys are matched case-insensitively.
func applyEnv(root *yaml.Node, env []string) error {
	doc := root
	if doc.Kind == yaml.DocumentNode {
		if len(doc.Content) == 0 {
			doc.Content = []*yaml.Node{{Kind: yaml.MappingNode, Tag: "!!map"}}
		}
		doc = doc.Content[0]
	}
	sort.Strings(env)
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(k, EnvPrefix) || !strings.Contains(k, "__") && !isTopLevelEnv(k) {
			continue
		}
		parts := strings.Split(strings.ToLower(strings.TrimPrefix(k, EnvPrefix)), "__")
		if err := setPath(doc, parts, v, k); err != nil {
			return err
		}
	}
	return nil
}

// isTopLevelEnv reports whether OUTPOST_X (no "__") is an override of a
// top-level scalar; only node_id is accepted so that unrelated OUTPOST_*
// variables (OUTPOST_MQTT_URL given to components) are never misread.
func isTopLevelEnv(k string) bool { return k == EnvPrefix+"NODE_ID" }

func setPath(n *yaml.Node, parts []string, value, envName string) error {
	for i, p := range parts {
		last := i == len(parts)-1
		switch n.Kind {
		case yaml.MappingNode:
			var next *yaml.Node
			for j := 0; j+1 < len(n.Content); j += 2 {
				if strings.EqualFold(n.Content[j].Value, p) {
					next = n.Content[j+1]
					break
				}
			}
			if next == nil {
				next = &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
				if last {
					next = &yaml.Node{Kind: yaml.ScalarNode}
				}
				n.Content = append(n.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: p}, next)
			}
			if last {
				*next = envScalar(value)
				return nil
			}
			n = next
		case yaml.SequenceNode:
			idx, err := strconv.Atoi(p)
			if err != nil || idx < 0 || idx >= len(n.Content) {
				return fmt.Errorf("%s: %q is not an index of the list at that level (0..%d)", envName, p, len(n.Content)-1)
			}
			if last {
				*n.Content[idx] = envScalar(value)
				return nil
			}
			n = n.Content[idx]
		default:
			return fmt.Errorf("%s: cannot descend into a scalar at %q", envName, p)
		}
	}
	return nil
}

// envScalar makes a plain scalar (so numbers and booleans resolve like in the
// file) except for values YAML would read as null, which stay strings.
func envScalar(v string) yaml.Node {
	switch v {
	case "", "~", "null", "Null", "NULL":
		return yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: v}
	}
	return yaml.Node{Kind: yaml.ScalarNode, Value: v}
}

// invalid is a validation message that matches errors.Is(err, ErrInvalid)
// without repeating "invalid config" in every line.
type invalid string

func (e invalid) Error() string        { return string(e) }
func (e invalid) Is(target error) bool { return target == ErrInvalid }
