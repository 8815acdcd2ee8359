// Package module is Outpost's subsystem contract and the runner that starts
// and stops subsystems in dependency order.
//
// Every subsystem (broker, pipeline, uplink, rules, supervisor, ota,
// telemetry, ...) implements Typed[C], the contract with its config section
// as the concrete type *C, and the integrator adapts it with Of, which does
// the config preamble once for all of them: the section may be a C, a *C or
// nil; the module gets a defaulted (SetDefaults) and validated (Validate)
// copy, and a section of the wrong type is refused naming the module. Of
// also carries the module's dependencies. The Runner drives the untyped
// Module that Of returns:
//
//   - calls Init on every module in dependency order (a module's Deps are
//     initialised and started before it);
//   - calls Start in the same order; if one fails, the modules already started
//     are stopped in reverse order and Run returns that module's error;
//   - on shutdown, calls Stop in reverse start order, each bounded by the
//     context's deadline, and reports every Stop error;
//   - reconfigures only the modules whose config section changed
//     (Reconfigurable), or restarts them alone when they cannot reconfigure in
//     place.
//
// A module's Health is polled by /readyz; it must be cheap and must not block.
package module

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sort"
	"strings"
	"sync"
	"time"
)

// Module is the contract every subsystem implements.
type Module interface {
	// Name is the module's unique id; it is also its config section name.
	Name() string
	// Init validates and applies configuration. It must not start goroutines
	// that outlive a failed Start.
	Init(ctx context.Context, cfg any) error
	// Start begins work. It returns once the module is serving (or failed).
	Start(ctx context.Context) error
	// Stop drains in-flight work and releases resources before ctx ends.
	Stop(ctx context.Context) error
	// Health reports the module's current state without blocking.
	Health() Status
}

// Deps is implemented by modules that must start after others.
type Deps interface {
	DependsOn() []string
}

// Reconfigurable is implemented by modules that can apply a changed config
// section without a restart. Reconfigure must leave the running config in
// place and return an error if the new one cannot be applied.
type Reconfigurable interface {
	Reconfigure(ctx context.Context, cfg any) error
}

// State is a coarse health state.
type State int

const (
	StateStarting State = iota
	StateReady
	StateDegraded // working, with a problem an operator should see
	StateFailed
	StateStopped
)

func (s State) String() string {
	switch s {
	case StateStarting:
		return "starting"
	case StateReady:
		return "ready"
	case StateDegraded:
		return "degraded"
	case StateFailed:
		return "failed"
	case StateStopped:
		return "stopped"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// Status is a module's health: a state and a human-readable detail.
type Status struct {
	State  State
	Detail string
}

// Ready reports whether the status counts as ready for /readyz. A degraded
// module is ready (it serves) but its detail is shown.
func (s Status) Ready() bool { return s.State == StateReady || s.State == StateDegraded }

// ErrUnknownDependency and ErrCycle are returned by NewRunner for a bad graph.
var (
	ErrUnknownDependency = errors.New("module: unknown dependency")
	ErrCycle             = errors.New("module: dependency cycle")
	ErrDuplicate         = errors.New("module: duplicate module name")
)

// StartError reports which module failed to start.
type StartError struct {
	Module string
	Err    error
}

func (e *StartError) Error() string { return fmt.Sprintf("module %s: start: %v", e.Module, e.Err) }
func (e *StartError) Unwrap() error { return e.Err }

// Runner owns a set of modules and their lifecycle.
type Runner struct {
	log     *slog.Logger
	order   []Module // dependency order
	byName  map[string]Module
	mu      sync.Mutex
	started []Module
}

// NewRunner orders mods by their dependencies (stable: ties keep the given
// order) and returns a runner. It fails on duplicates, unknown dependencies
// and cycles (the error names the cycle).
func NewRunner(log *slog.Logger, mods ...Module) (*Runner, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Runner{log: log, byName: make(map[string]Module, len(mods))}
	for _, m := range mods {
		if _, dup := r.byName[m.Name()]; dup {
			return nil, fmt.Errorf("%w: %s", ErrDuplicate, m.Name())
		}
		r.byName[m.Name()] = m
	}
	const (
		white = iota
		grey
		black
	)
	color := map[string]int{}
	var stack []string
	var visit func(m Module) error
	visit = func(m Module) error {
		switch color[m.Name()] {
		case black:
			return nil
		case grey:
			i := indexOf(stack, m.Name())
			return fmt.Errorf("%w: %s", ErrCycle, strings.Join(append(stack[i:], m.Name()), " -> "))
		}
		color[m.Name()] = grey
		stack = append(stack, m.Name())
		if d, ok := m.(Deps); ok {
			for _, dn := range d.DependsOn() {
				dep, ok := r.byName[dn]
				if !ok {
					return fmt.Errorf("%w: %s depends on %s", ErrUnknownDependency, m.Name(), dn)
				}
				if err := visit(dep); err != nil {
					return err
				}
			}
		}
		stack = stack[:len(stack)-1]
		color[m.Name()] = black
		r.order = append(r.order, m)
		return nil
	}
	for _, m := range mods {
		if err := visit(m); err != nil {
			return nil, err
		}
	}
	return r, nil
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return 0
}

// Modules returns the modules in start order.
func (r *Runner) Modules() []Module { return append([]Module(nil), r.order...) }

// Get returns the module with the given name.
func (r *Runner) Get(name string) (Module, bool) { m, ok := r.byName[name]; return m, ok }

// Start initialises and starts every module in order. cfgFor returns the
// config section for a module. If any Init or Start fails, the modules already
// started are stopped (bounded by stopTimeout) and a *StartError is returned.
func (r *Runner) Start(ctx context.Context, cfgFor func(name string) any, stopTimeout time.Duration) error {
	for _, m := range r.order {
		t0 := time.Now()
		if err := m.Init(ctx, cfgFor(m.Name())); err != nil {
			r.abort(stopTimeout)
			return &StartError{Module: m.Name(), Err: fmt.Errorf("init: %w", err)}
		}
		if err := m.Start(ctx); err != nil {
			r.abort(stopTimeout)
			return &StartError{Module: m.Name(), Err: err}
		}
		r.mu.Lock()
		r.started = append(r.started, m)
		r.mu.Unlock()
		r.log.Debug("module started", "module", m.Name(), "took", time.Since(t0))
	}
	return nil
}

func (r *Runner) abort(timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := r.Stop(ctx); err != nil {
		r.log.Error("stopping after failed start", "err", err)
	}
}

// Stop stops every started module in reverse order. Each module gets what is
// left of ctx; a module that overruns is reported and the next one is still
// stopped. Stop is idempotent.
func (r *Runner) Stop(ctx context.Context) error {
	r.mu.Lock()
	started := r.started
	r.started = nil
	r.mu.Unlock()
	var errs []error
	for i := len(started) - 1; i >= 0; i-- {
		m := started[i]
		t0 := time.Now()
		err := stopBounded(ctx, m)
		if err != nil {
			errs = append(errs, fmt.Errorf("module %s: stop: %w", m.Name(), err))
			r.log.Error("module stop failed", "module", m.Name(), "err", err, "took", time.Since(t0))
			continue
		}
		r.log.Debug("module stopped", "module", m.Name(), "took", time.Since(t0))
	}
	return errors.Join(errs...)
}

// stopBounded returns when m.Stop returns or ctx ends, whichever is first.
func stopBounded(ctx context.Context, m Module) error {
	done := make(chan error, 1)
	go func() { done <- m.Stop(ctx) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("deadline exceeded: %w", ctx.Err())
	}
}

// Reconfigure applies a changed config section to one module: in place when
// it is Reconfigurable, else by Stop, Init and Start of that module alone.
func (r *Runner) Reconfigure(ctx context.Context, name string, cfg any) error {
	m, ok := r.byName[name]
	if !ok {
		return fmt.Errorf("%w: %s", ErrUnknownDependency, name)
	}
	if rc, ok := m.(Reconfigurable); ok {
		return rc.Reconfigure(ctx, cfg)
	}
	if err := m.Stop(ctx); err != nil {
		return fmt.Errorf("module %s: restart: stop: %w", name, err)
	}
	if err := m.Init(ctx, cfg); err != nil {
		return fmt.Errorf("module %s: restart: init: %w", name, err)
	}
	if err := m.Start(ctx); err != nil {
		return fmt.Errorf("module %s: restart: start: %w", name, err)
	}
	return nil
}

// Health returns every module's status, sorted by name.
func (r *Runner) Health() []NamedStatus {
	out := make([]NamedStatus, 0, len(r.order))
	for _, m := range r.order {
		out = append(out, NamedStatus{Name: m.Name(), Status: m.Health()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// NamedStatus pairs a module name with its status.
type NamedStatus struct {
	Name string
	Status
}

// Typed is what a subsystem implements: the module contract with its config
// section as the concrete type *C. Of adapts it to Module; the adapter does
// the preamble every Init and Reconfigure used to repeat (type assertion,
// defaults, validation), so the module receives a defaulted and validated
// copy of its section.
type Typed[C any] interface {
	Name() string
	Init(ctx context.Context, cfg *C) error
	Start(ctx context.Context) error
	Stop(ctx context.Context) error
	Health() Status
}

// TypedReconfigurable is implemented by a Typed module that can apply a
// changed section in place. Without it, Reconfigure restarts the module
// (Stop, Init, Start).
type TypedReconfigurable[C any] interface {
	Reconfigure(ctx context.Context, cfg *C) error
}

// Defaulter and Validator are the optional methods of a config section,
// called by the adapter on the copy it passes to Init and Reconfigure.
type (
	Defaulter interface{ SetDefaults() }
	Validator interface{ Validate() error }
)

// ErrConfigType is returned by an adapted module's Init and Reconfigure when
// the section is not the module's config type.
var ErrConfigType = errors.New("module: config of the wrong type")

// Of adapts a typed module to Module. after names the modules that must
// start before it (its DependsOn); the module's own DependsOn, if any, is
// not consulted: who starts first is the integrator's decision.
//
// The generic part is kept to two small closures per config type (the
// lifecycle and the preamble are shared code), so that each registered
// module costs little binary (and mapped, resident text).
func Of[C any](m Typed[C], after ...string) Adapted {
	a := &adapter{m: m, name: m.Name(), after: after, typ: reflect.TypeFor[C]()}
	a.init = func(ctx context.Context, c any) error { return m.Init(ctx, c.(*C)) }
	if rc, ok := m.(TypedReconfigurable[C]); ok {
		a.reconf = func(ctx context.Context, c any) error { return rc.Reconfigure(ctx, c.(*C)) }
	} else if _, untyped := m.(Reconfigurable); untyped {
		// An untyped Reconfigure would never be called: the module would
		// be restarted on every change instead of reconfigured in place.
		panic(fmt.Sprintf("module %s: Reconfigure takes any; a typed module's takes *%s", a.name, a.typ))
	}
	return a
}

// Adapted is a typed module behind the untyped contract the Runner drives.
type Adapted interface {
	Module
	Reconfigurable
	Deps
}

// Unwrap returns the typed module behind an adapter (m itself otherwise).
func Unwrap(m Module) any {
	if a, ok := m.(*adapter); ok {
		return a.m
	}
	return m
}

// lifecycle is the untyped part of Typed.
type lifecycle interface {
	Start(ctx context.Context) error
	Stop(ctx context.Context) error
	Health() Status
}

type adapter struct {
	m      lifecycle
	name   string
	after  []string
	typ    reflect.Type                           // C
	init   func(ctx context.Context, c any) error // m.Init with a *C
	reconf func(ctx context.Context, c any) error // m.Reconfigure, nil if it cannot
}

func (a *adapter) Name() string                    { return a.name }
func (a *adapter) DependsOn() []string             { return a.after }
func (a *adapter) Start(ctx context.Context) error { return a.m.Start(ctx) }
func (a *adapter) Stop(ctx context.Context) error  { return a.m.Stop(ctx) }
func (a *adapter) Health() Status                  { return a.m.Health() }

func (a *adapter) Init(ctx context.Context, cfg any) error {
	c, err := prepare(a.name, a.typ, cfg)
	if err != nil {
		return err
	}
	return a.init(ctx, c)
}

// Reconfigure applies the section in place when the module can, else
// restarts it alone.
func (a *adapter) Reconfigure(ctx context.Context, cfg any) error {
	c, err := prepare(a.name, a.typ, cfg)
	if err != nil {
		return err
	}
	if a.reconf != nil {
		return a.reconf(ctx, c)
	}
	if err := a.m.Stop(ctx); err != nil {
		return fmt.Errorf("restart: stop: %w", err)
	}
	if err := a.init(ctx, c); err != nil {
		return fmt.Errorf("restart: init: %w", err)
	}
	if err := a.m.Start(ctx); err != nil {
		return fmt.Errorf("restart: start: %w", err)
	}
	return nil
}

// Prepare is the one config preamble: cfg may be a C, a *C or nil (a nil
// section is C's zero value); the result is a copy, defaulted
// (Defaulter) and validated (Validator), so the caller's section is never
// modified. Errors name the module.
func Prepare[C any](name string, cfg any) (*C, error) {
	c, err := prepare(name, reflect.TypeFor[C](), cfg)
	if err != nil {
		return nil, err
	}
	return c.(*C), nil
}

// prepare is Prepare for the type t; it returns a *t.
func prepare(name string, t reflect.Type, cfg any) (any, error) {
	p := reflect.New(t)
	if cfg != nil {
		v := reflect.ValueOf(cfg)
		switch {
		case v.Type() == t:
			p.Elem().Set(v)
		case v.Type() == reflect.PointerTo(t):
			if !v.IsNil() {
				p.Elem().Set(v.Elem())
			}
		default:
			return nil, fmt.Errorf("%w: %s: %T, want %v", ErrConfigType, name, cfg, t)
		}
	}
	c := p.Interface()
	if d, ok := c.(Defaulter); ok {
		d.SetDefaults()
	}
	if v, ok := c.(Validator); ok {
		if err := v.Validate(); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	return c, nil
}
