package function

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/topic"
)

// OriginProperty marks messages a function emitted (value: its name), so
// they never trigger that function again (no loops through republish).
const OriginProperty = "outpost-function"

// ErrUnknownFunction is returned (wrapped) for a function name that is not
// loaded, or not callable from rules.
var ErrUnknownFunction = errors.New("function: unknown function")

// RegistryOptions configure a Registry.
type RegistryOptions struct {
	Runtime *Runtime
	// Dir holds one subdirectory per function version: function.yaml, the
	// module and (when Trust is set) targets.json.
	Dir string
	// Trust verifies signatures; nil accepts unsigned functions (only when
	// the operator said so: functions.allow_unsigned).
	Trust *Trust
	// Sinks resolves a trigger's "to" names (republish, uplink:LANE, ...).
	Sinks func(name string) (message.Sink, error)
	Host  Host
	// Labels returns a device's labels for gray release (nil = none).
	Labels func(deviceID string) map[string]string
	Log    *slog.Logger
	// Warm is how many instances of each version to create at load.
	Warm int
	// Chain, when set, verifies functions through the TUF chain in
	// Dir/.tuf (ChainTrust) instead of per-function targets.json (Trust).
	Chain *ChainTrust
	// StateDir keeps each function's per-device state in NAME.state, so
	// it survives restarts and kill -9 (State). Empty: memory only.
	StateDir string
}

// Registry holds the loaded functions and runs them: on messages (it is a
// message.Sink for the pipeline) and from rules (Call). Reload swaps the
// set atomically: a message is run by exactly one version, in-flight
// invocations of a replaced version finish before it is closed.
type Registry struct {
	o    RegistryOptions
	log  *slog.Logger
	snap atomic.Pointer[snapshot]

	mu       sync.Mutex // serializes Reload; guards o.Dir, o.Trust, o.Chain, o.Warm
	states   map[string]*State
	problems []Problem
	reverify bool // the next Reload verifies and reloads every version
}

// Settings are what Reconfigure changes on a running registry.
type Settings struct {
	// Dir is the directory to load from; empty unloads every function
	// (functions.enabled: false).
	Dir string
	// Trust verifies signatures (nil: unsigned accepted).
	Trust *Trust
	// Chain verifies through the TUF chain instead of Trust (nil: off).
	Chain *ChainTrust
	// Reverify reloads every version, checking it against Trust again
	// (the trust root changed).
	Reverify bool
	// Warm applies to versions loaded from now on.
	Warm int
}

// Reconfigure applies new settings in place and reloads: versions whose
// directory and files did not change keep running untouched (their
// instances, their in-flight invocations); added, changed and removed
// ones are swapped atomically as by Reload, so no message of an
// unchanged function is lost or run twice.
func (r *Registry) Reconfigure(ctx context.Context, s Settings) error {
	r.mu.Lock()
	r.o.Dir, r.o.Trust, r.o.Chain, r.o.Warm = s.Dir, s.Trust, s.Chain, s.Warm
	r.reverify = r.reverify || s.Reverify
	r.mu.Unlock()
	return r.Reload(ctx)
}

func (r *Registry) dir() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.o.Dir
}

// Problem is a function directory that failed to load (the previously
// loaded version of it, if any, keeps running).
type Problem struct {
	Dir string `json:"dir"`
	Err string `json:"error"`
}

type version struct {
	mod   *Module
	dir   string
	print string // fingerprint of manifest, module and signature
	sinks [][]message.Sink
	// signed reports whether a signature was verified.
	signed bool
}

type snapshot struct {
	byName map[string][]*version // newest version first
	names  []string
}

// NewRegistry returns an empty registry; call Reload to load Dir.
func NewRegistry(o RegistryOptions) *Registry {
	r := &Registry{o: o, log: o.Log, states: map[string]*State{}}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	r.snap.Store(&snapshot{byName: map[string][]*version{}})
	return r
}

// Name implements message.Sink.
func (r *Registry) Name() string { return "functions" }

// pick returns the version of name that runs for device: the newest whose
// devices selector matches its labels.
func (r *Registry) pick(s *snapshot, name, device string) *version {
	vs := s.byName[name]
	var labels map[string]string
	for _, v := range vs {
		if len(v.mod.Manifest.Devices) == 0 {
			return v
		}
		if labels == nil && r.o.Labels != nil {
			labels = r.o.Labels(device)
		}
		if v.mod.Manifest.Matches(labels) {
			return v
		}
	}
	return nil
}

// Deliver runs every function with a trigger matching m's topic (the
// version chosen for m's device). Function failures are counted in the
// function's metrics and logged, not returned: a bad function must not
// make the pipeline retry or refuse the publish. An output sink's error is
// returned (durability as for rules: a QoS 1 publish is acknowledged after
// the outputs are accepted).
func (r *Registry) Deliver(ctx context.Context, m *message.Message) error {
	return r.deliverFrom(ctx, m, r.snap.Load())
}

// deliverFrom is Deliver starting from snapshot s (a test passes a stale
// one: the swap happened between picking a version and running it).
func (r *Registry) deliverFrom(ctx context.Context, m *message.Message, s *snapshot) error {
	origin := ""
	for _, p := range m.Props.User {
		if p.Key == OriginProperty {
			origin = p.Value
		}
	}
	var errs []error
	for _, name := range s.names {
		if name == origin {
			continue
		}
		for {
			v := r.pick(s, name, m.DeviceID)
			if v == nil || v.mod.Manifest.Entry.OnMessage == "" {
				break
			}
			ti := -1
			for i, t := range v.mod.Manifest.Triggers {
				for _, f := range t.From {
					if ti < 0 && topic.Match(f, m.Topic) {
						ti = i
					}
				}
			}
			if ti < 0 {
				break
			}
			err := v.mod.OnMessage(ctx, inputOf(m), r.emitter(v, ti, m, &errs))
			if ns, again := r.retryClosed(err, s); again {
				s = ns // swapped meanwhile: the new version runs it
				continue
			}
			if errors.Is(err, ErrState) {
				// Its state did not reach the disk: refuse the input
				// (no acknowledgement) rather than lose the change.
				errs = append(errs, err)
			}
			if err != nil {
				r.log.Warn("function failed", "module", "function", "function", name, "version", v.mod.Manifest.Version, "topic", m.Topic, "err", err)
			}
			break
		}
	}
	return errors.Join(errs...)
}

func inputOf(m *message.Message) *Input {
	in := &Input{Topic: m.Topic, DeviceID: m.DeviceID, ClientID: m.ClientID, QoS: m.QoS, Retain: m.Retain,
		ContentType: m.Props.ContentType, Payload: m.Payload}
	for _, p := range m.Props.User {
		in.Props = append(in.Props, [2]string{p.Key, p.Value})
	}
	return in
}

// retryClosed says whether an invocation that failed with err on a
// version of snapshot s must run again on the newer snapshot ns: ErrClosed
// is returned before the invocation starts, and a version is closed only
// after a newer snapshot replaced s, so the retry never runs a message
// twice and ends when the swaps do. (It used to give up after 3 attempts:
// a goroutine descheduled across 4 swaps — seen under CPU load — dropped
// its message silently, "message 0-3816 run 0 times" in
// TestHotSwapNoLossNoDup.)
func (r *Registry) retryClosed(err error, s *snapshot) (ns *snapshot, again bool) {
	if !errors.Is(err, ErrClosed) {
		return nil, false
	}
	ns = r.snap.Load()
	return ns, ns != s
}

func (r *Registry) emitter(v *version, ti int, in *message.Message, errs *[]error) Outputs {
	return func(ctx context.Context, t string, p []byte) error {
		out := &message.Message{Topic: t, Payload: append([]byte(nil), p...), QoS: in.QoS, DeviceID: in.DeviceID,
			ClientID: in.ClientID, Received: time.Now(),
			Props: message.Properties{User: []message.UserProperty{{Key: OriginProperty, Value: v.mod.Manifest.Name}}}}
		var err error
		for _, s := range v.sinks[ti] {
			if e := s.Deliver(ctx, out); e != nil {
				err = fmt.Errorf("function %s: output to %s: %w", v.mod.Manifest.Name, s.Name(), e)
				*errs = append(*errs, err)
			}
		}
		return err
	}
}

// Run runs function name's on_message entry on m whatever its topic (the
// rule action DO FUNCTION 'name'), on the version chosen for m's device.
// What it emits goes to its first trigger's sinks, or is republished when
// it has no triggers. Unlike Deliver, the function's failure is returned.
func (r *Registry) Run(ctx context.Context, name string, m *message.Message) error {
	s := r.snap.Load()
	for {
		v := r.pick(s, name, m.DeviceID)
		if v == nil {
			return fmt.Errorf("%w: %q has no version for device %q", ErrUnknownFunction, name, m.DeviceID)
		}
		var errs []error
		err := v.mod.OnMessage(ctx, inputOf(m), r.emitter(v, 0, m, &errs))
		if ns, again := r.retryClosed(err, s); again {
			s = ns
			continue
		}
		return errors.Join(append(errs, err)...)
	}
}

// Runnable reports whether name is loaded with an on_message entry (checked
// when a rule with DO FUNCTION 'name' is compiled).
func (r *Registry) Runnable(name string) error {
	s := r.snap.Load()
	vs := s.byName[name]
	if len(vs) == 0 {
		return fmt.Errorf("%w: %q (loaded: %s)", ErrUnknownFunction, name, strings.Join(s.names, ", "))
	}
	for _, v := range vs {
		if v.mod.Manifest.Entry.OnMessage == "" {
			return fmt.Errorf("%w: %q version %d has no on_message entry (set entry.on_message or triggers)", ErrUnknownFunction, name, v.mod.Manifest.Version)
		}
	}
	return nil
}

// Call runs fn('name', args...) for a rule, on the version chosen for the
// device.
func (r *Registry) Call(ctx context.Context, name, device string, args []Value) (Value, error) {
	s := r.snap.Load()
	for {
		v := r.pick(s, name, device)
		if v == nil {
			return Value{}, fmt.Errorf("%w: %q has no version for device %q", ErrUnknownFunction, name, device)
		}
		res, err := v.mod.Call(ctx, name, device, args)
		if ns, again := r.retryClosed(err, s); again {
			s = ns
			continue
		}
		return res, err
	}
}

// Callable reports whether name is loaded and callable from rules (checked
// when a rule using fn('name', ...) is compiled).
func (r *Registry) Callable(name string) error {
	s := r.snap.Load()
	vs := s.byName[name]
	if len(vs) == 0 {
		return fmt.Errorf("%w: %q (loaded: %s)", ErrUnknownFunction, name, strings.Join(s.names, ", "))
	}
	for _, v := range vs {
		if v.mod.Manifest.Entry.Call == "" {
			return fmt.Errorf("%w: %q version %d is not callable from rules (set entry.callable: true)", ErrUnknownFunction, name, v.mod.Manifest.Version)
		}
	}
	return nil
}

// Reload reads Dir and swaps in what changed. A directory that fails
// (bad manifest, bad module, bad or missing signature) is reported in the
// returned error and in Problems, and the version previously loaded from
// it keeps running.
func (r *Registry) Reload(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.snap.Load()
	byDir := map[string]*version{}
	for _, vs := range old.byName {
		for _, v := range vs {
			byDir[v.dir] = v
		}
	}
	var entries []os.DirEntry
	var err error
	if r.o.Dir != "" {
		entries, err = os.ReadDir(r.o.Dir)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("function: %s: %w", r.o.Dir, err)
		}
	}
	reverify := r.reverify
	r.reverify = false
	var chainErr error
	if r.o.Chain != nil {
		changed, err := r.o.Chain.Refresh(ctx)
		if err != nil {
			chainErr = err
			r.log.Error("functions: TUF metadata refused; the last verified targets stay in force", "module", "function", "err", err)
		}
		// New targets may drop versions that run now: check them all.
		reverify = reverify || changed
	}
	var problems []Problem
	var errs []error
	if chainErr != nil {
		problems = append(problems, Problem{Dir: filepath.Join(r.o.Dir, ChainDir), Err: chainErr.Error()})
		errs = append(errs, chainErr)
	}
	next := &snapshot{byName: map[string][]*version{}}
	seen := map[string]string{} // name@version -> dir
	keep := map[*version]bool{}
	for _, e := range entries {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		dir := filepath.Join(r.o.Dir, e.Name())
		if _, err := os.Stat(filepath.Join(dir, ManifestFile)); err != nil {
			continue
		}
		v, err := r.loadDir(ctx, dir, byDir[dir], reverify)
		if err == nil {
			id := fmt.Sprintf("%s@%d", v.mod.Manifest.Name, v.mod.Manifest.Version)
			if other, dup := seen[id]; dup {
				err = fmt.Errorf("function %s version %d is also in %s", v.mod.Manifest.Name, v.mod.Manifest.Version, other)
				if v != byDir[dir] {
					_ = v.mod.Close(ctx)
				}
			} else {
				seen[id] = dir
			}
		}
		if err != nil {
			problems = append(problems, Problem{Dir: dir, Err: err.Error()})
			errs = append(errs, fmt.Errorf("%s: %w", dir, err))
			v = byDir[dir] // the old version keeps running
			if v == nil || reverify {
				// ...unless the trust root changed: what the new root
				// does not accept must not keep running.
				continue
			}
			id := fmt.Sprintf("%s@%d", v.mod.Manifest.Name, v.mod.Manifest.Version)
			if _, dup := seen[id]; dup && seen[id] != dir {
				continue
			}
			seen[id] = dir
		}
		keep[v] = true
		next.byName[v.mod.Manifest.Name] = append(next.byName[v.mod.Manifest.Name], v)
	}
	for name, vs := range next.byName {
		sort.Slice(vs, func(i, j int) bool { return vs[i].mod.Manifest.Version > vs[j].mod.Manifest.Version })
		next.names = append(next.names, name)
	}
	sort.Strings(next.names)
	r.snap.Store(next)
	r.problems = problems
	// Close what was replaced or removed: Close waits for the invocations
	// that started on the old snapshot; new ones go to the new snapshot.
	for _, v := range byDir {
		if !keep[v] {
			_ = v.mod.Close(ctx)
			r.log.Info("function unloaded", "module", "function", "function", v.mod.Manifest.Name, "version", v.mod.Manifest.Version, "file", v.dir)
		}
	}
	return errors.Join(errs...)
}

// loadDir loads one version directory, reusing cur when nothing changed.
func (r *Registry) loadDir(ctx context.Context, dir string, cur *version, reverify bool) (*version, error) {
	mpath := filepath.Join(dir, ManifestFile)
	manRaw, err := os.ReadFile(mpath)
	if err != nil {
		return nil, err
	}
	man, err := ParseManifest(mpath, manRaw)
	if err != nil {
		return nil, err
	}
	wasm, err := os.ReadFile(filepath.Join(dir, man.Module))
	if err != nil {
		return nil, fmt.Errorf("function %s: module: %w", man.Name, err)
	}
	sig, err := os.ReadFile(filepath.Join(dir, SignatureFile))
	if errors.Is(err, fs.ErrNotExist) {
		sig, err = nil, nil
	}
	if err != nil {
		return nil, err
	}
	print := hashHex(manRaw) + hashHex(wasm) + hashHex(sig)
	if cur != nil && cur.print == print && !reverify {
		return cur, nil
	}
	signed := false
	if r.o.Chain != nil {
		if err := r.o.Chain.Verify(man, manRaw, wasm); err != nil {
			return nil, err
		}
		signed = true
	} else if r.o.Trust != nil {
		if err := r.o.Trust.Verify(man, manRaw, wasm, sig); err != nil {
			return nil, err
		}
		signed = true
	}
	v := &version{dir: dir, print: print, signed: signed}
	triggers := man.Triggers
	if len(triggers) == 0 {
		// Run (DO FUNCTION) of a function without triggers: republish.
		triggers = []Trigger{{To: []string{"republish"}}}
	}
	for i, t := range triggers {
		var sinks []message.Sink
		for j, name := range t.To {
			if r.o.Sinks == nil {
				return nil, fmt.Errorf("%s: triggers[%d].to[%d]: no sinks available", mpath, i, j)
			}
			s, err := r.o.Sinks(name)
			if err != nil {
				return nil, fmt.Errorf("%s: triggers[%d].to[%d]: %w", mpath, i, j, err)
			}
			sinks = append(sinks, s)
		}
		v.sinks = append(v.sinks, sinks)
	}
	st := r.states[man.Name]
	if st == nil {
		if r.o.StateDir != "" {
			var err error
			if st, err = OpenState(filepath.Join(r.o.StateDir, man.Name+".state"), int64(man.Limits.State)); err != nil {
				return nil, err
			}
		} else {
			st = NewState(int64(man.Limits.State))
		}
		r.states[man.Name] = st
	} else {
		st.SetLimit(int64(man.Limits.State))
	}
	mod, err := r.o.Runtime.Load(ctx, man, wasm, LoadOptions{Host: r.o.Host, State: st})
	if err != nil {
		return nil, err
	}
	if r.o.Warm > 0 {
		if err := mod.Warm(ctx, r.o.Warm); err != nil {
			_ = mod.Close(ctx)
			return nil, err
		}
	}
	v.mod = mod
	r.log.Info("function loaded", "module", "function", "function", man.Name, "version", man.Version, "file", dir,
		"sha256", mod.Hash, "compile", mod.CompileTime.Round(time.Microsecond), "signed", signed)
	return v, nil
}

// Close closes every loaded version.
func (r *Registry) Close(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.snap.Swap(&snapshot{byName: map[string][]*version{}})
	for _, vs := range s.byName {
		for _, v := range vs {
			_ = v.mod.Close(ctx)
		}
	}
	var errs []error
	for name, st := range r.states {
		errs = append(errs, st.Close())
		delete(r.states, name)
	}
	return errors.Join(errs...)
}

// Watch reloads whenever a file under Dir changes (checked every interval
// by size and modification time), until ctx ends.
func (r *Registry) Watch(ctx context.Context, interval time.Duration) {
	last := fingerprint(r.dir())
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if fp := fingerprint(r.dir()); fp != last {
			last = fp
			if err := r.Reload(ctx); err != nil {
				r.log.Error("functions reload: some functions were refused", "module", "function", "err", err)
			}
		}
	}
}

func fingerprint(dir string) string {
	var b strings.Builder
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if info, err := d.Info(); err == nil {
			fmt.Fprintf(&b, "%s %d %d\n", p, info.Size(), info.ModTime().UnixNano())
		}
		return nil
	})
	return b.String()
}

// Status describes a loaded version (CLI, HTTP).
type Status struct {
	Name         string                `json:"name"`
	Version      int                   `json:"version"`
	Dir          string                `json:"dir"`
	SHA256       string                `json:"sha256"`
	Size         int                   `json:"size"`
	Signed       bool                  `json:"signed"`
	Callable     bool                  `json:"callable"`
	Triggers     []Trigger             `json:"triggers,omitempty"`
	Devices      map[string]StringList `json:"devices,omitempty"`
	Limits       Limits                `json:"limits"`
	CompileTime  string                `json:"compile_time"`
	Stats        Stats                 `json:"stats"`
	StateDevices int                   `json:"state_devices"`
	StateBytes   int64                 `json:"state_bytes"`
}

// Statuses lists the loaded versions (by name, newest first) and the
// directories that failed.
func (r *Registry) Statuses() ([]Status, []Problem) {
	s := r.snap.Load()
	var out []Status
	for _, name := range s.names {
		for _, v := range s.byName[name] {
			man := v.mod.Manifest
			n, b := v.mod.state.Devices()
			out = append(out, Status{Name: man.Name, Version: man.Version, Dir: v.dir, SHA256: v.mod.Hash, Size: v.mod.Size,
				Signed: v.signed, Callable: man.Entry.Call != "", Triggers: man.Triggers, Devices: man.Devices, Limits: man.Limits,
				CompileTime: v.mod.CompileTime.String(), Stats: r.o.Runtime.Stats(man.Name), StateDevices: n, StateBytes: b})
		}
	}
	r.mu.Lock()
	p := append([]Problem(nil), r.problems...)
	r.mu.Unlock()
	return out, p
}
