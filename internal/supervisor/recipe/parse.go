package recipe

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/outpost-edge/outpost/internal/config"
	"github.com/outpost-edge/outpost/internal/netpol"
	"github.com/outpost-edge/outpost/internal/yamlstrict"
)

// MaxFileSize is the largest recipe file Parse accepts.
const MaxFileSize = 1 << 20

// ValidName reports whether s is a valid component name: 1-64 characters
// of letters, digits, '.', '_' and '-', starting with a letter or digit.
// Names are used in MQTT topics, file names and cgroup names.
func ValidName(s string) bool { return config.IsName(s, 64, "._-") && s != "." && s != ".." }

// Parse decodes and validates one recipe. Decoding is strict: unknown keys,
// duplicate keys, wrong types, anchors/aliases and multiple documents are
// errors. Every problem found is reported, joined, each an *Error with
// file:line:column. Parse touches no files: see (*Recipe).CheckArtifacts.
func Parse(file string, data []byte) (*Recipe, error) {
	if len(data) > MaxFileSize {
		return nil, &Error{File: file, Err: fmt.Errorf("%w: file is larger than %d bytes", ErrInvalid, MaxFileSize)}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &Error{File: file, Line: 1, Err: fmt.Errorf("%w: empty recipe", ErrInvalid)}
		}
		return nil, syntaxError(file, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, &Error{File: file, Line: extra.Line, Column: extra.Column, Err: fmt.Errorf("%w: a recipe file holds one YAML document", ErrInvalid)}
	} else if !errors.Is(err, io.EOF) {
		return nil, syntaxError(file, err)
	}
	sum := sha256.Sum256(data)
	r := &Recipe{File: file, Hash: hex.EncodeToString(sum[:]), pos: map[string]Pos{}}
	d := &decoder{r: r}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	d.recipe(root)
	if len(d.errs) == 0 {
		d.validate()
	}
	if len(d.errs) > 0 {
		return nil, errors.Join(d.errs...)
	}
	return r, nil
}

func syntaxError(file string, err error) *Error {
	e := &Error{File: file, Err: fmt.Errorf("%w: %s", ErrSyntax, strings.TrimPrefix(err.Error(), "yaml: "))}
	e.Line = yamlstrict.ErrLine(err)
	return e
}

type decoder struct {
	r    *Recipe
	errs []error
}

func (d *decoder) errAt(n *yaml.Node, path string, sentinel error, format string, args ...any) {
	d.errs = append(d.errs, &Error{File: d.r.File, Line: n.Line, Column: n.Column, Field: path,
		Err: fmt.Errorf("%w: %s", sentinel, fmt.Sprintf(format, args...))})
}

func (d *decoder) mark(n *yaml.Node, path string) {
	d.r.pos[path] = Pos{n.Line, n.Column}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// fields decodes a mapping whose keys must be among handlers. It reports
// unknown and duplicate keys at the key's position.
func (d *decoder) fields(n *yaml.Node, path string, handlers map[string]func(v *yaml.Node, path string)) {
	if !d.kind(n, path, yaml.MappingNode, "a mapping") {
		return
	}
	yamlstrict.Keys(n, func(key string) bool { return handlers[key] != nil }, func(k, v *yaml.Node) {
		p := join(path, k.Value)
		if v.Kind == yaml.AliasNode || v.Anchor != "" {
			d.errAt(v, p, ErrInvalid, "YAML anchors and aliases are not supported in recipes")
			return
		}
		d.mark(v, p)
		handlers[k.Value](v, p)
	}, d.keyProblem(path, func() string { return keyList(handlers) }))
}

// keyProblem reports a bad key found by yamlstrict.Keys; known lists the
// accepted keys for "unknown field" errors (nil: any key is accepted).
func (d *decoder) keyProblem(path string, known func() string) func(k *yaml.Node, p yamlstrict.KeyProblem) {
	return func(k *yaml.Node, p yamlstrict.KeyProblem) {
		switch p {
		case yamlstrict.KeyNotString:
			d.errAt(k, path, ErrInvalid, "keys must be strings")
		case yamlstrict.KeyDuplicate:
			d.errAt(k, join(path, k.Value), ErrInvalid, "duplicate key %q", k.Value)
		default:
			d.errAt(k, join(path, k.Value), ErrUnknownField, "%q is not a recipe field here (known: %s)", k.Value, known())
		}
	}
}

func keyList(m map[string]func(*yaml.Node, string)) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return strings.Join(keys, ", ")
}

func (d *decoder) kind(n *yaml.Node, path string, k yaml.Kind, what string) bool {
	if n.Kind == k {
		return true
	}
	if n.Kind == yaml.AliasNode {
		d.errAt(n, path, ErrInvalid, "YAML anchors and aliases are not supported in recipes")
		return false
	}
	d.errAt(n, path, ErrInvalid, "expected %s, got %s", what, config.KindName(n))
	return false
}

func (d *decoder) str(n *yaml.Node, path string) string {
	if !d.kind(n, path, yaml.ScalarNode, "a string") {
		return ""
	}
	if n.Tag == "!!null" {
		d.errAt(n, path, ErrInvalid, "expected a string, got null")
		return ""
	}
	return n.Value
}

func (d *decoder) boolean(n *yaml.Node, path string) bool {
	if !d.kind(n, path, yaml.ScalarNode, "true or false") {
		return false
	}
	switch n.Value {
	case "true":
		return true
	case "false":
		return false
	}
	d.errAt(n, path, ErrInvalid, "expected true or false, got %q", n.Value)
	return false
}

func (d *decoder) integer(n *yaml.Node, path string, lo, hi int64) int64 {
	if !d.kind(n, path, yaml.ScalarNode, "an integer") {
		return 0
	}
	v, err := strconv.ParseInt(n.Value, 10, 64)
	if err != nil || v < lo || v > hi {
		d.errAt(n, path, ErrInvalid, "expected an integer from %d to %d, got %q", lo, hi, n.Value)
		return 0
	}
	return v
}

func (d *decoder) float(n *yaml.Node, path string, lo, hi float64) float64 {
	if !d.kind(n, path, yaml.ScalarNode, "a number") {
		return 0
	}
	v, err := strconv.ParseFloat(n.Value, 64)
	if err != nil || math.IsNaN(v) || v < lo || v > hi {
		d.errAt(n, path, ErrInvalid, "expected a number from %g to %g, got %q", lo, hi, n.Value)
		return 0
	}
	return v
}

func (d *decoder) duration(n *yaml.Node, path string) time.Duration {
	if !d.kind(n, path, yaml.ScalarNode, "a duration") {
		return 0
	}
	var v config.Duration
	if err := v.UnmarshalYAML(n); err != nil {
		d.errAt(n, path, ErrInvalid, "%v", err)
		return 0
	}
	if v < 0 {
		d.errAt(n, path, ErrInvalid, "duration must not be negative")
		return 0
	}
	return v.D()
}

func (d *decoder) strList(n *yaml.Node, path string) []string {
	if !d.kind(n, path, yaml.SequenceNode, "a list of strings") {
		return nil
	}
	out := make([]string, 0, len(n.Content))
	for i, e := range n.Content {
		p := fmt.Sprintf("%s[%d]", path, i)
		d.mark(e, p)
		out = append(out, d.str(e, p))
	}
	return out
}

func (d *decoder) strMap(n *yaml.Node, path string) map[string]string {
	if !d.kind(n, path, yaml.MappingNode, "a mapping of strings") {
		return nil
	}
	out := map[string]string{}
	yamlstrict.Keys(n, nil, func(k, v *yaml.Node) {
		p := join(path, k.Value)
		d.mark(v, p)
		out[k.Value] = d.str(v, p)
	}, d.keyProblem(path, nil))
	return out
}

func (d *decoder) recipe(n *yaml.Node) {
	r := d.r
	d.mark(n, "")
	var versionNode *yaml.Node
	d.fields(n, "", map[string]func(*yaml.Node, string){
		"name":        func(v *yaml.Node, p string) { r.Name = d.str(v, p) },
		"version":     func(v *yaml.Node, p string) { versionNode = v; d.version(v, p) },
		"description": func(v *yaml.Node, p string) { r.Description = d.str(v, p) },
		"kind":        func(v *yaml.Node, p string) { r.Kind = d.str(v, p) },
		"depends_on":  d.dependsOn,
		"artifacts":   d.artifacts,
		"lifecycle":   d.lifecycle,
		"env":         func(v *yaml.Node, p string) { r.Env = d.strMap(v, p) },
		"user":        func(v *yaml.Node, p string) { r.User = d.str(v, p) },
		"group":       func(v *yaml.Node, p string) { r.Group = d.str(v, p) },
		"working_dir": func(v *yaml.Node, p string) { r.WorkingDir = d.str(v, p) },
		"health":      d.health,
		"restart":     d.restart,
		"resources":   d.resources,
		"configuration": func(v *yaml.Node, p string) {
			if !d.kind(v, p, yaml.MappingNode, "a mapping") {
				return
			}
			if m, ok := d.anyValue(v, p, 0).(map[string]any); ok {
				r.Configuration = m
			}
		},
		"access":    d.access,
		"container": d.container,
		"egress":    d.egress,
	})
	if n.Kind != yaml.MappingNode {
		return
	}
	if r.Name == "" {
		d.errAt(n, "name", ErrInvalid, "name is required")
	} else if !ValidName(r.Name) {
		d.errAt(nodeAt(n, "name"), "name", ErrInvalid, "%q is not a valid component name (1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit)", r.Name)
	}
	if versionNode == nil {
		d.errAt(n, "version", ErrVersion, "version is required (semver, e.g. 1.0.0)")
	}
}

func nodeAt(m *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return m
}

func (d *decoder) version(n *yaml.Node, path string) {
	s := d.str(n, path)
	if s == "" {
		return
	}
	v, err := ParseVersion(s)
	if err != nil {
		d.errAt(n, path, ErrVersion, "%v", err)
		return
	}
	d.r.Version = v
}

func (d *decoder) dependsOn(n *yaml.Node, path string) {
	if !d.kind(n, path, yaml.SequenceNode, "a list of dependencies") {
		return
	}
	for i, e := range n.Content {
		p := fmt.Sprintf("%s[%d]", path, i)
		d.mark(e, p)
		dep := Dependency{Type: Hard, Pos: Pos{e.Line, e.Column}}
		if e.Kind == yaml.ScalarNode { // shorthand: "- name"
			dep.Name = d.str(e, p)
		} else {
			d.fields(e, p, map[string]func(*yaml.Node, string){
				"name": func(v *yaml.Node, p string) { dep.Name = d.str(v, p) },
				"type": func(v *yaml.Node, p string) {
					switch t := DepType(d.str(v, p)); t {
					case Hard, Soft:
						dep.Type = t
					default:
						d.errAt(v, p, ErrInvalid, "dependency type must be hard or soft, got %q", v.Value)
					}
				},
				"version": func(v *yaml.Node, p string) {
					s := d.str(v, p)
					c, err := ParseConstraint(s)
					if err != nil {
						d.errAt(v, p, ErrVersion, "%v", err)
						return
					}
					dep.Version = c
				},
			})
		}
		if e.Kind == yaml.MappingNode && dep.Name == "" {
			d.errAt(e, p+".name", ErrInvalid, "dependency name is required")
		} else if dep.Name != "" && !ValidName(dep.Name) {
			d.errAt(e, p, ErrInvalid, "%q is not a valid component name", dep.Name)
		}
		d.r.DependsOn = append(d.r.DependsOn, dep)
	}
}

func (d *decoder) artifacts(n *yaml.Node, path string) {
	if !d.kind(n, path, yaml.SequenceNode, "a list of artifacts") {
		return
	}
	for i, e := range n.Content {
		p := fmt.Sprintf("%s[%d]", path, i)
		d.mark(e, p)
		a := Artifact{Pos: Pos{e.Line, e.Column}}
		d.fields(e, p, map[string]func(*yaml.Node, string){
			"path": func(v *yaml.Node, p string) { a.Path = d.str(v, p) },
			"url":  func(v *yaml.Node, p string) { a.URL = d.str(v, p) },
			"sha256": func(v *yaml.Node, p string) {
				s := strings.ToLower(d.str(v, p))
				if b, err := hex.DecodeString(s); err != nil || len(b) != sha256.Size {
					d.errAt(v, p, ErrInvalid, "sha256 must be 64 hex digits")
					return
				}
				a.SHA256 = s
			},
			"unpack":     func(v *yaml.Node, p string) { a.Unpack = d.boolean(v, p) },
			"executable": func(v *yaml.Node, p string) { a.Executable = d.boolean(v, p) },
			"image":      func(v *yaml.Node, p string) { a.Image = d.boolean(v, p) },
		})
		if e.Kind != yaml.MappingNode {
			continue
		}
		switch {
		case a.Path == "" && a.URL == "":
			d.errAt(e, p, ErrInvalid, "an artifact needs path or url")
		case a.Path != "" && a.URL != "":
			d.errAt(e, p, ErrInvalid, "an artifact has either path or url, not both")
		case a.URL != "":
			u, err := url.Parse(a.URL)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				d.errAt(nodeAt(e, "url"), p+".url", ErrInvalid, "url must be an http or https URL")
			}
			if a.SHA256 == "" {
				d.errAt(e, p+".sha256", ErrInvalid, "sha256 is required for an artifact downloaded from a URL")
			}
		}
		if a.Unpack {
			name := a.Path + a.URL
			if u, err := url.Parse(a.URL); err == nil && a.URL != "" {
				name = u.Path
			}
			if ArchiveKind(name) == "" {
				d.errAt(nodeAt(e, "unpack"), p+".unpack", ErrInvalid, "unpack needs a .zip, .tar.gz or .tgz file")
			}
		}
		d.r.Artifacts = append(d.r.Artifacts, a)
	}
}

// ArchiveKind returns "zip", "tar.gz" or "" from a file name.
func ArchiveKind(name string) string {
	l := strings.ToLower(name)
	switch {
	case strings.HasSuffix(l, ".zip"):
		return "zip"
	case strings.HasSuffix(l, ".tar.gz"), strings.HasSuffix(l, ".tgz"):
		return "tar.gz"
	}
	return ""
}

// command decodes a string (script), a list (exec argv) or a mapping with
// script or exec and timeout.
func (d *decoder) command(n *yaml.Node, path string) *Command {
	c := &Command{Pos: Pos{n.Line, n.Column}}
	switch n.Kind {
	case yaml.ScalarNode:
		c.Script = d.str(n, path)
	case yaml.SequenceNode:
		c.Exec = d.strList(n, path)
	case yaml.MappingNode:
		d.fields(n, path, map[string]func(*yaml.Node, string){
			"script":  func(v *yaml.Node, p string) { c.Script = d.str(v, p) },
			"exec":    func(v *yaml.Node, p string) { c.Exec = d.strList(v, p) },
			"timeout": func(v *yaml.Node, p string) { c.Timeout = d.duration(v, p) },
		})
		if c.Script != "" && len(c.Exec) > 0 {
			d.errAt(n, path, ErrInvalid, "a command has either script or exec, not both")
		}
	default:
		d.kind(n, path, yaml.ScalarNode, "a script string, an exec list or a mapping")
		return nil
	}
	if strings.TrimSpace(c.Script) == "" && len(c.Exec) == 0 {
		d.errAt(n, path, ErrInvalid, "empty command")
		return nil
	}
	for i, a := range c.Exec {
		if i == 0 && a == "" {
			d.errAt(n, path, ErrInvalid, "empty program name")
		}
		if strings.IndexByte(a, 0) >= 0 {
			d.errAt(n, path, ErrInvalid, "NUL byte in argument")
		}
	}
	if strings.IndexByte(c.Script, 0) >= 0 {
		d.errAt(n, path, ErrInvalid, "NUL byte in script")
	}
	return c
}

func (d *decoder) lifecycle(n *yaml.Node, path string) {
	l := &d.r.Lifecycle
	d.fields(n, path, map[string]func(*yaml.Node, string){
		"install":  func(v *yaml.Node, p string) { l.Install = d.command(v, p) },
		"run":      func(v *yaml.Node, p string) { l.Run = d.command(v, p) },
		"startup":  func(v *yaml.Node, p string) { l.Startup = d.command(v, p) },
		"shutdown": func(v *yaml.Node, p string) { l.Shutdown = d.command(v, p) },
	})
}

func (d *decoder) health(n *yaml.Node, path string) {
	h := &Health{}
	kinds := 0
	d.fields(n, path, map[string]func(*yaml.Node, string){
		"exec": func(v *yaml.Node, p string) { kinds++; h.Kind = HealthExec; h.Exec = d.command(v, p) },
		"http": func(v *yaml.Node, p string) {
			kinds++
			h.Kind = HealthHTTP
			h.URL = d.str(v, p)
			if u, err := url.Parse(h.URL); h.URL != "" && (err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "") {
				d.errAt(v, p, ErrInvalid, "http must be an http or https URL")
			}
		},
		"mqtt": func(v *yaml.Node, p string) {
			kinds++
			h.Kind = HealthMQTT
			h.Topic = d.str(v, p)
			if h.Topic != "" && !validTopicName(h.Topic) {
				d.errAt(v, p, ErrInvalid, "mqtt must be a topic name without wildcards")
			}
		},
		"interval":          func(v *yaml.Node, p string) { h.Interval = d.duration(v, p) },
		"timeout":           func(v *yaml.Node, p string) { h.Timeout = d.duration(v, p) },
		"failure_threshold": func(v *yaml.Node, p string) { h.FailureThreshold = int(d.integer(v, p, 1, 1000)) },
		"start_period":      func(v *yaml.Node, p string) { h.StartPeriod = d.duration(v, p) },
		"start_interval":    func(v *yaml.Node, p string) { h.StartInterval = d.duration(v, p) },
	})
	if n.Kind != yaml.MappingNode {
		return
	}
	if kinds != 1 {
		d.errAt(n, path, ErrInvalid, "health needs exactly one of exec, http or mqtt")
	}
	d.r.Health = h
}

func validTopicName(t string) bool {
	return t != "" && len(t) <= 65535 && !strings.ContainsAny(t, "+#\x00")
}

func (d *decoder) restart(n *yaml.Node, path string) {
	r := &d.r.Restart
	d.fields(n, path, map[string]func(*yaml.Node, string){
		"policy": func(v *yaml.Node, p string) {
			switch pol := Policy(d.str(v, p)); pol {
			case Always, OnFailure, Never:
				r.Policy = pol
			default:
				d.errAt(v, p, ErrInvalid, "policy must be always, on-failure or never, got %q", v.Value)
			}
		},
		"initial_backoff": func(v *yaml.Node, p string) { r.InitialBackoff = d.duration(v, p) },
		"max_backoff":     func(v *yaml.Node, p string) { r.MaxBackoff = d.duration(v, p) },
		"multiplier":      func(v *yaml.Node, p string) { r.Multiplier = d.float(v, p, 1, 100) },
		"jitter":          func(v *yaml.Node, p string) { r.Jitter = d.float(v, p, 0, 1) },
		"max_restarts":    func(v *yaml.Node, p string) { r.MaxRestarts = int(d.integer(v, p, 1, 1_000_000)) },
		"window":          func(v *yaml.Node, p string) { r.Window = d.duration(v, p) },
	})
}

func (d *decoder) resources(n *yaml.Node, path string) {
	res := &d.r.Resources
	d.fields(n, path, map[string]func(*yaml.Node, string){
		"memory": func(v *yaml.Node, p string) {
			if !d.kind(v, p, yaml.ScalarNode, "a size such as 64MiB") {
				return
			}
			sz, err := config.ParseSize(v.Value)
			if err != nil {
				d.errAt(v, p, ErrInvalid, "%v", err)
				return
			}
			if sz < 4096 {
				d.errAt(v, p, ErrInvalid, "memory limit below 4KiB")
				return
			}
			res.Memory = sz
		},
		"cpu":  func(v *yaml.Node, p string) { res.CPU = d.float(v, p, 0.001, 1024) },
		"pids": func(v *yaml.Node, p string) { res.Pids = d.integer(v, p, 1, 1<<22) },
	})
}

func (d *decoder) access(n *yaml.Node, path string) {
	a := &d.r.Access
	filters := func(v *yaml.Node, p string) []string {
		l := d.strList(v, p)
		for i, f := range l {
			if err := ValidFilter(f); err != nil {
				d.errAt(v.Content[i], fmt.Sprintf("%s[%d]", p, i), ErrInvalid, "%v", err)
			}
		}
		return l
	}
	d.fields(n, path, map[string]func(*yaml.Node, string){
		"publish":   func(v *yaml.Node, p string) { a.Publish = filters(v, p) },
		"subscribe": func(v *yaml.Node, p string) { a.Subscribe = filters(v, p) },
	})
}

// egress decodes the `egress:` list: [{host or cidr, port, proto}].
func (d *decoder) egress(n *yaml.Node, path string) {
	if !d.kind(n, path, yaml.SequenceNode, "a list of egress entries ({host or cidr, port, proto})") {
		return
	}
	r := d.r
	r.Egress = []netpol.Egress{} // declared: only these (and the broker) are reachable
	if len(n.Content) > netpol.MaxEgress {
		d.errAt(n, path, ErrInvalid, "%d egress entries; at most %d", len(n.Content), netpol.MaxEgress)
		return
	}
	for i, e := range n.Content {
		p := fmt.Sprintf("%s[%d]", path, i)
		d.mark(e, p)
		var eg netpol.Egress
		nodes := map[string]*yaml.Node{}
		field := func(dst *string) func(*yaml.Node, string) {
			return func(v *yaml.Node, p string) {
				nodes[p[strings.LastIndexByte(p, '.')+1:]] = v
				*dst = d.str(v, p)
			}
		}
		before := len(d.errs)
		d.fields(e, p, map[string]func(*yaml.Node, string){
			"host":  field(&eg.Host),
			"cidr":  field(&eg.CIDR),
			"port":  field(&eg.Port),
			"proto": field(&eg.Proto),
		})
		if len(d.errs) > before || e.Kind != yaml.MappingNode {
			continue
		}
		if err := netpol.CheckEgress(eg); err != nil {
			var fe *netpol.FieldError
			at, fp := e, p
			if errors.As(err, &fe) {
				if v := nodes[fe.Field]; v != nil {
					at = v
				}
				fp = p + "." + fe.Field
				err = errors.New(fe.Msg)
			}
			d.errAt(at, fp, ErrInvalid, "%v", err)
			continue
		}
		r.Egress = append(r.Egress, eg)
	}
}

// ValidFilter checks an MQTT topic filter: non-empty, '#' only as the last
// level, '+' and '#' only as whole levels, no NUL.
func ValidFilter(f string) error {
	if f == "" {
		return fmt.Errorf("empty topic filter")
	}
	if strings.IndexByte(f, 0) >= 0 {
		return fmt.Errorf("topic filter %q contains NUL", f)
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		if strings.Contains(l, "#") && (l != "#" || i != len(levels)-1) {
			return fmt.Errorf("topic filter %q: '#' must be the whole last level", f)
		}
		if strings.Contains(l, "+") && l != "+" {
			return fmt.Errorf("topic filter %q: '+' must be a whole level", f)
		}
	}
	return nil
}

const maxConfigDepth = 64

// anyValue converts a YAML node to a JSON-compatible value.
func (d *decoder) anyValue(n *yaml.Node, path string, depth int) any {
	if depth > maxConfigDepth {
		d.errAt(n, path, ErrInvalid, "configuration nested deeper than %d levels", maxConfigDepth)
		return nil
	}
	if n.Kind == yaml.AliasNode || n.Anchor != "" {
		d.errAt(n, path, ErrInvalid, "YAML anchors and aliases are not supported in recipes")
		return nil
	}
	switch n.Kind {
	case yaml.MappingNode:
		m := make(map[string]any, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode || (k.Tag != "!!str" && k.Tag != "!!int" && k.Tag != "!!bool" && k.Tag != "!!float") {
				d.errAt(k, path, ErrInvalid, "configuration keys must be strings")
				continue
			}
			p := join(path, k.Value)
			if _, dup := m[k.Value]; dup {
				d.errAt(k, p, ErrInvalid, "duplicate key %q", k.Value)
				continue
			}
			d.mark(v, p)
			m[k.Value] = d.anyValue(v, p, depth+1)
		}
		return m
	case yaml.SequenceNode:
		l := make([]any, 0, len(n.Content))
		for i, e := range n.Content {
			l = append(l, d.anyValue(e, fmt.Sprintf("%s[%d]", path, i), depth+1))
		}
		return l
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!null":
			return nil
		case "!!bool":
			var b bool
			if err := n.Decode(&b); err != nil {
				d.errAt(n, path, ErrInvalid, "%v", err)
			}
			return b
		case "!!int":
			var i int64
			if err := n.Decode(&i); err != nil {
				var f float64
				if err2 := n.Decode(&f); err2 != nil {
					d.errAt(n, path, ErrInvalid, "number %q out of range", n.Value)
				}
				return f
			}
			return i
		case "!!float":
			var f float64
			if err := n.Decode(&f); err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
				d.errAt(n, path, ErrInvalid, "number %q is not representable in JSON", n.Value)
				return nil
			}
			return f
		case "!!str", "":
			return n.Value
		case "!!timestamp":
			return n.Value
		case "!!binary":
			return n.Value
		default:
			d.errAt(n, path, ErrInvalid, "unsupported YAML tag %s", n.Tag)
			return nil
		}
	}
	d.errAt(n, path, ErrInvalid, "unsupported YAML value")
	return nil
}
