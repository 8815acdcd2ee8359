package function

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/internal/config"
	"github.com/outpost-edge/outpost/internal/topic"
	"gopkg.in/yaml.v3"
)

// ManifestFile is the name of a function's manifest inside its directory.
const ManifestFile = "function.yaml"

// Manifest describes one version of a function (function.yaml). It is
// decoded strictly by internal/config: an unknown key or a bad value is an
// error with file:line:column.
type Manifest struct {
	// Name is the function's name: fn('NAME', ...) in rules, the metrics
	// label, the state namespace. Letters, digits, '-', '_', at most 64.
	Name string `yaml:"name"`
	// Version is a positive integer; the newest version whose devices
	// selector matches a device runs for it (gray release).
	Version int `yaml:"version"`
	// Module is the .wasm file, relative to the manifest's directory.
	Module string `yaml:"module"`
	// Entry names the exported functions (defaults: the SDK's names).
	Entry Entry `yaml:"entry"`
	// Triggers run the function on messages matching topic filters; the
	// outputs it emits go to the trigger's sinks.
	Triggers []Trigger `yaml:"triggers"`
	// Limits bound each invocation.
	Limits Limits `yaml:"limits"`
	// Capabilities grant access beyond the message; none by default.
	Capabilities Capabilities `yaml:"capabilities"`
	// Config values the function reads with outpostfn.Config.
	Config map[string]string `yaml:"config"`
	// Devices restricts this version to devices whose labels match every
	// key (a list: any of its values); empty = every device.
	Devices map[string]StringList `yaml:"devices"`

	dir string // directory the manifest was read from
}

// Entry names the module's exports.
type Entry struct {
	// OnMessage is called for trigger messages; default outpost_on_message
	// when the manifest has triggers.
	OnMessage string `yaml:"on_message"`
	// Call is called by fn() in rules; default outpost_call when Callable.
	Call string `yaml:"call"`
	// Callable makes the function available to rules as fn('name', ...).
	Callable bool `yaml:"callable"`
}

// Trigger runs the function on messages whose topic matches From.
type Trigger struct {
	From []string `yaml:"from"`
	// To are the sinks of what the function emits: "republish",
	// "uplink:LANE", "file:NAME" (as in pipeline routes).
	To []string `yaml:"to"`
}

// Limits bound one function. Zero values are the defaults.
type Limits struct {
	// Memory caps the linear memory (rounded down to 64 KiB pages).
	// Default 32MiB, at most 4GiB.
	Memory config.Size `yaml:"memory"`
	// Timeout is the CPU/wall time one invocation may take before it is
	// stopped and counted as a timeout. Default 100ms.
	Timeout config.Duration `yaml:"timeout"`
	// Instances is the pool size: invocations run in parallel up to it.
	// Default 2.
	Instances int `yaml:"instances"`
	// State caps the bytes of per-device state (keys and values) per
	// device. Default 16KiB.
	State config.Size `yaml:"state"`
}

// Capabilities are what a function may do beyond computing on its input.
type Capabilities struct {
	// Publish lists the topic filters the function may publish to on the
	// local broker.
	Publish []string `yaml:"publish"`
	// FS mounts host directories into the guest (WASI); none by default.
	FS []Mount `yaml:"fs"`
	// Network is refused: WASI preview 1 has no outbound sockets, and the
	// host offers none.
	Network bool `yaml:"network"`
}

// Mount is a host directory visible to the guest.
type Mount struct {
	Host     string `yaml:"host"`
	Guest    string `yaml:"guest"`
	ReadOnly bool   `yaml:"read_only"`
}

// StringList accepts a scalar or a sequence of scalars.
type StringList []string

// Defaults.
const (
	DefaultMemory    = 32 << 20
	DefaultTimeout   = 100 * time.Millisecond
	DefaultInstances = 2
	DefaultState     = 16 << 10
	DefaultOnMessage = "outpost_on_message"
	DefaultCall      = "outpost_call"
	// AllocExport is the guest's allocator every module must export.
	AllocExport = "outpost_alloc"
)

// SetDefaults fills zero values.
func (m *Manifest) SetDefaults() {
	if m.Limits.Memory == 0 {
		m.Limits.Memory = DefaultMemory
	}
	if m.Limits.Timeout == 0 {
		m.Limits.Timeout = config.Duration(DefaultTimeout)
	}
	if m.Limits.Instances == 0 {
		m.Limits.Instances = DefaultInstances
	}
	if m.Limits.State == 0 {
		m.Limits.State = DefaultState
	}
	if m.Entry.OnMessage == "" && len(m.Triggers) > 0 {
		m.Entry.OnMessage = DefaultOnMessage
	}
	if m.Entry.Call == "" && m.Entry.Callable {
		m.Entry.Call = DefaultCall
	}
}

// Validate returns every problem, each "path: what".
func (m *Manifest) Validate() error {
	var errs []error
	bad := func(path, format string, a ...any) { errs = append(errs, config.Field(path, format, a...)) }
	if !config.IsName(m.Name, 64, "-_") {
		bad("name", "%q: want letters, digits, '-' or '_' (at most 64)", m.Name)
	}
	if m.Version <= 0 {
		bad("version", "must be a positive integer")
	}
	switch {
	case m.Module == "":
		bad("module", "required: the .wasm file")
	case filepath.IsAbs(m.Module) || strings.Contains(m.Module, "..") || strings.ContainsAny(m.Module, "/\\"):
		bad("module", "%q: a file name in the manifest's directory", m.Module)
	}
	if len(m.Triggers) == 0 && !m.Entry.Callable {
		bad("triggers", "a function needs triggers or entry.callable: true")
	}
	for i, t := range m.Triggers {
		if len(t.From) == 0 {
			bad(fmt.Sprintf("triggers[%d].from", i), "at least one topic filter")
		}
		for j, f := range t.From {
			if err := topic.ValidFilter(f); err != nil {
				bad(fmt.Sprintf("triggers[%d].from[%d]", i, j), "%q: %v", f, err)
			}
		}
		for j, s := range t.To {
			if !validSinkName(s) {
				bad(fmt.Sprintf("triggers[%d].to[%d]", i, j), "%q: want republish, uplink:LANE or file:NAME", s)
			}
		}
	}
	for _, e := range []struct{ path, v string }{{"entry.on_message", m.Entry.OnMessage}, {"entry.call", m.Entry.Call}} {
		if e.v != "" && !config.IsName(e.v, 128, "_-.") {
			bad(e.path, "%q is not an export name", e.v)
		}
	}
	if m.Limits.Memory < 64<<10 || m.Limits.Memory > 4<<30 {
		bad("limits.memory", "%v: between 64KiB and 4GiB", m.Limits.Memory)
	}
	if m.Limits.Timeout.D() < time.Millisecond || m.Limits.Timeout.D() > time.Minute {
		bad("limits.timeout", "%v: between 1ms and 1m", m.Limits.Timeout)
	}
	if m.Limits.Instances < 1 || m.Limits.Instances > 1024 {
		bad("limits.instances", "%d: between 1 and 1024", m.Limits.Instances)
	}
	if m.Limits.State < 0 || m.Limits.State > 64<<20 {
		bad("limits.state", "%v: at most 64MiB", m.Limits.State)
	}
	for i, f := range m.Capabilities.Publish {
		if err := topic.ValidFilter(f); err != nil {
			bad(fmt.Sprintf("capabilities.publish[%d]", i), "%q: %v", f, err)
		}
	}
	for i, mt := range m.Capabilities.FS {
		if !filepath.IsAbs(mt.Host) {
			bad(fmt.Sprintf("capabilities.fs[%d].host", i), "%q: an absolute directory", mt.Host)
		}
		if !strings.HasPrefix(mt.Guest, "/") {
			bad(fmt.Sprintf("capabilities.fs[%d].guest", i), "%q: an absolute guest path", mt.Guest)
		}
	}
	if m.Capabilities.Network {
		bad("capabilities.network", "not supported: functions have no sockets (WASI preview 1)")
	}
	for k, v := range m.Devices {
		if len(v) == 0 {
			bad("devices."+k, "empty list matches no device")
		}
	}
	return errors.Join(errs...)
}

func validSinkName(s string) bool {
	switch {
	case s == "republish":
		return true
	case strings.HasPrefix(s, "uplink:"), strings.HasPrefix(s, "file:"):
		return true
	}
	return false
}

// ParseManifest decodes and validates a manifest; name is used in error
// positions (file:line:col). Errors are config.Problems.
func ParseManifest(name string, data []byte) (*Manifest, error) {
	var m Manifest
	if err := config.Parse(name, data, &m, config.Options{NoEnv: true}); err != nil {
		return nil, err
	}
	m.dir = filepath.Dir(name)
	return &m, nil
}

// MemoryPages is the memory cap in 64 KiB pages.
func (m *Manifest) MemoryPages() uint32 { return uint32(int64(m.Limits.Memory) / 65536) }

// Matches reports whether this version's device selector matches labels.
func (m *Manifest) Matches(labels map[string]string) bool {
	for k, vs := range m.Devices {
		v, ok := labels[k]
		if !ok {
			return false
		}
		hit := false
		for _, w := range vs {
			hit = hit || w == v
		}
		if !hit {
			return false
		}
	}
	return true
}

// UnmarshalYAML accepts "a" or ["a", "b"].
func (l *StringList) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		*l = StringList{n.Value}
		return nil
	case yaml.SequenceNode:
		var s []string
		if err := n.Decode(&s); err != nil {
			return err
		}
		*l = s
		return nil
	}
	return fmt.Errorf("want a string or a list of strings, got %s", config.KindName(n))
}
