package function

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
	"github.com/tetratelabs/wazero/sys"
)

// Errors of loading and invoking functions; check with errors.Is.
var (
	// ErrBadModule is returned by Load for bytes that are not a valid
	// module, a missing export or an export with the wrong signature.
	ErrBadModule = errors.New("function: bad module")
	// ErrTimeout is returned when an invocation ran past limits.timeout;
	// the instance was stopped and discarded.
	ErrTimeout = errors.New("function: timeout")
	// ErrTrap is returned when the guest trapped (unreachable, out of
	// bounds, memory exhausted, exit) or passed bad pointers to a host
	// call; the instance was discarded.
	ErrTrap = errors.New("function: trap")
	// ErrFailed is returned when the guest returned an error.
	ErrFailed = errors.New("function: failed")
	// ErrBadPointer is the trap cause of a host call whose pointer and
	// length are outside the guest's memory.
	ErrBadPointer = errors.New("function: host call with out-of-bounds pointer")
	// ErrNoEntry is returned when the function lacks the entry point the
	// invocation needs (not callable from rules, or without triggers).
	ErrNoEntry = errors.New("function: no such entry point")
	// ErrClosed is returned by invocations of a closed module.
	ErrClosed = errors.New("function: closed")
)

// RuntimeOptions configure a Runtime.
type RuntimeOptions struct {
	// CacheDir keeps compiled code on disk keyed by the module's hash, so
	// a restart does not compile again; "" = in memory only.
	CacheDir string
	Log      *slog.Logger
	// Metrics receives outpost_function_* series; nil = a private set.
	Metrics *metrics.Set
	// Interpreter forces wazero's interpreter (tests; the compiler is used
	// where supported: amd64, arm64).
	Interpreter bool
}

// Runtime compiles and runs functions. One per agent.
type Runtime struct {
	cache   wazero.CompilationCache
	log     *slog.Logger
	metrics *metrics.Set
	interp  bool

	mu    sync.Mutex
	stats map[string]*fnStats
}

// NewRuntime creates a runtime; Close releases its compilation cache.
func NewRuntime(opts RuntimeOptions) (*Runtime, error) {
	rt := &Runtime{log: opts.Log, metrics: opts.Metrics, interp: opts.Interpreter, stats: map[string]*fnStats{}}
	if rt.log == nil {
		rt.log = slog.New(slog.DiscardHandler)
	}
	if rt.metrics == nil {
		rt.metrics = metrics.NewSet()
	}
	if opts.CacheDir != "" {
		if err := os.MkdirAll(opts.CacheDir, 0o700); err != nil {
			return nil, fmt.Errorf("function: cache dir: %w", err)
		}
		c, err := wazero.NewCompilationCacheWithDir(opts.CacheDir)
		if err != nil {
			return nil, fmt.Errorf("function: cache dir %s: %w", opts.CacheDir, err)
		}
		rt.cache = c
	} else {
		rt.cache = wazero.NewCompilationCache()
	}
	return rt, nil
}

// Close releases the compilation cache (modules must be closed first).
func (rt *Runtime) Close(ctx context.Context) error { return rt.cache.Close(ctx) }

// Host is what a function may reach outside itself. Nil fields deny.
type Host struct {
	// Publish publishes on the local broker (capabilities.publish checked
	// before).
	Publish func(ctx context.Context, topic string, payload []byte, qos byte) error
}

// Module is one loaded version of a function: compiled code, a pool of
// instances and its limits. Safe for concurrent use.
type Module struct {
	Manifest *Manifest
	// Hash is the hex SHA-256 of the .wasm bytes.
	Hash string
	// Size is the .wasm size in bytes.
	Size int
	// CompileTime is how long Load took to compile (near zero on a cache hit).
	CompileTime time.Duration

	rt       *Runtime
	wrt      wazero.Runtime
	compiled wazero.CompiledModule
	modCfg   wazero.ModuleConfig
	host     Host
	state    *State
	stats    *fnStats

	pool  chan *instance
	slots chan struct{}

	mu     sync.RWMutex
	closed bool
}

type instance struct {
	mod     api.Module
	alloc   api.Function
	onMsg   api.Function
	call    api.Function
	stack   [2]uint64
	scratch []byte
}

// LoadOptions are what Load needs besides the manifest and bytes.
type LoadOptions struct {
	Host Host
	// State is the function's per-device state (shared by its versions,
	// so a new version keeps it); nil = a new one.
	State *State
}

// Load compiles a module (or takes it from the cache), checks its exports
// against the manifest and returns it ready to run. Instances are created
// on first use.
func (rt *Runtime) Load(ctx context.Context, man *Manifest, wasm []byte, opts LoadOptions) (*Module, error) {
	sum := sha256.Sum256(wasm)
	m := &Module{Manifest: man, Hash: hex.EncodeToString(sum[:]), Size: len(wasm), rt: rt, host: opts.Host, state: opts.State}
	if m.state == nil {
		m.state = NewState(int64(man.Limits.State))
	}
	var cfg wazero.RuntimeConfig
	if rt.interp {
		cfg = wazero.NewRuntimeConfigInterpreter()
	} else {
		cfg = wazero.NewRuntimeConfig()
	}
	cfg = cfg.WithCompilationCache(rt.cache).WithCloseOnContextDone(true).
		WithMemoryLimitPages(man.MemoryPages()).WithCustomSections(false).WithDebugInfoEnabled(false)
	m.wrt = wazero.NewRuntimeWithConfig(ctx, cfg)
	fail := func(err error) (*Module, error) {
		_ = m.wrt.Close(ctx)
		return nil, err
	}
	start := time.Now()
	c, err := m.wrt.CompileModule(ctx, wasm)
	if err != nil {
		return fail(fmt.Errorf("%w: %s: %v", ErrBadModule, man.Name, err))
	}
	m.CompileTime = time.Since(start)
	m.compiled = c
	if err := checkExports(c, man); err != nil {
		return fail(fmt.Errorf("%w: %s: %v", ErrBadModule, man.Name, err))
	}
	if err := checkImports(c); err != nil {
		return fail(fmt.Errorf("%w: %s: %v", ErrBadModule, man.Name, err))
	}
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, m.wrt); err != nil {
		return fail(fmt.Errorf("function: wasi: %w", err))
	}
	if err := instantiateHost(ctx, m.wrt); err != nil {
		return fail(fmt.Errorf("function: host module: %w", err))
	}
	mc := wazero.NewModuleConfig().WithName("").WithStartFunctions("_initialize").
		WithSysWalltime().WithSysNanotime().WithSysNanosleep().WithRandSource(rand.Reader)
	if len(man.Capabilities.FS) > 0 {
		fc := wazero.NewFSConfig()
		for _, mt := range man.Capabilities.FS {
			if mt.ReadOnly {
				fc = fc.WithReadOnlyDirMount(mt.Host, mt.Guest)
			} else {
				fc = fc.WithDirMount(mt.Host, mt.Guest)
			}
		}
		mc = mc.WithFSConfig(fc)
	}
	m.modCfg = mc
	m.pool = make(chan *instance, man.Limits.Instances)
	m.slots = make(chan struct{}, man.Limits.Instances)
	m.stats = rt.statsFor(man.Name)
	return m, nil
}

// checkExports verifies the entry points the manifest needs.
func checkExports(c wazero.CompiledModule, man *Manifest) error {
	ex := c.ExportedFunctions()
	want := func(name string, params, results []api.ValueType) error {
		d, ok := ex[name]
		if !ok {
			return fmt.Errorf("missing export %q", name)
		}
		if !sameTypes(d.ParamTypes(), params) || !sameTypes(d.ResultTypes(), results) {
			return fmt.Errorf("export %q has signature %s, want %s", name, sig(d.ParamTypes(), d.ResultTypes()), sig(params, results))
		}
		return nil
	}
	i32 := api.ValueTypeI32
	var errs []error
	errs = append(errs, want(AllocExport, []api.ValueType{i32}, []api.ValueType{i32}))
	if man.Entry.OnMessage != "" {
		errs = append(errs, want(man.Entry.OnMessage, []api.ValueType{i32, i32}, []api.ValueType{i32}))
	}
	if man.Entry.Call != "" {
		errs = append(errs, want(man.Entry.Call, []api.ValueType{i32, i32}, []api.ValueType{i32}))
	}
	if _, ok := c.ExportedMemories()["memory"]; !ok {
		errs = append(errs, errors.New(`missing exported memory "memory"`))
	}
	return errors.Join(errs...)
}

// checkImports refuses imports the host does not provide, with a clear
// message at load instead of at instantiation.
func checkImports(c wazero.CompiledModule) error {
	for _, d := range c.ImportedFunctions() {
		mod, name, _ := d.Import()
		switch mod {
		case "wasi_snapshot_preview1":
		case HostModule:
			if _, ok := hostFuncs[name]; !ok {
				return fmt.Errorf("imports unknown host function %s.%s", mod, name)
			}
		default:
			return fmt.Errorf("imports %s.%s: only %s and wasi_snapshot_preview1 are provided", mod, name, HostModule)
		}
	}
	return nil
}

func sameTypes(a, b []api.ValueType) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func sig(p, r []api.ValueType) string {
	s := "("
	for i, t := range p {
		if i > 0 {
			s += ", "
		}
		s += api.ValueTypeName(t)
	}
	s += ") -> ("
	for i, t := range r {
		if i > 0 {
			s += ", "
		}
		s += api.ValueTypeName(t)
	}
	return s + ")"
}

// Close stops the module: waits for running invocations, closes instances
// and the compiled code.
func (m *Module) Close(ctx context.Context) error {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	return m.wrt.Close(ctx)
}

// newInstance instantiates the module (running _initialize, bounded by the
// timeout and at least 1 s).
func (m *Module) newInstance(ctx context.Context) (*instance, error) {
	d := max(m.Manifest.Limits.Timeout.D(), time.Second)
	ictx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	mod, err := m.wrt.InstantiateModule(ictx, m.compiled, m.modCfg)
	if err != nil {
		if ictx.Err() != nil && ctx.Err() == nil {
			return nil, fmt.Errorf("%w: %s: initialization ran past %v", ErrTimeout, m.Manifest.Name, d)
		}
		return nil, fmt.Errorf("%w: %s: instantiate: %v", ErrTrap, m.Manifest.Name, err)
	}
	in := &instance{mod: mod, alloc: mod.ExportedFunction(AllocExport)}
	if m.Manifest.Entry.OnMessage != "" {
		in.onMsg = mod.ExportedFunction(m.Manifest.Entry.OnMessage)
	}
	if m.Manifest.Entry.Call != "" {
		in.call = mod.ExportedFunction(m.Manifest.Entry.Call)
	}
	m.stats.instances.Add(1)
	return in, nil
}

// acquire takes a pooled instance or creates one (up to the limit).
func (m *Module) acquire(ctx context.Context) (*instance, error) {
	select {
	case in := <-m.pool:
		return in, nil
	default:
	}
	select {
	case in := <-m.pool:
		return in, nil
	case m.slots <- struct{}{}:
		in, err := m.newInstance(ctx)
		if err != nil {
			<-m.slots
			return nil, err
		}
		return in, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (m *Module) release(ctx context.Context, in *instance, ok bool) {
	if ok {
		m.pool <- in
		return
	}
	_ = in.mod.Close(ctx)
	m.stats.instances.Add(-1)
	<-m.slots
}

// Warm creates up to n instances ahead of the first message (cold start
// off the message path).
func (m *Module) Warm(ctx context.Context, n int) error {
	var got []*instance
	defer func() {
		for _, in := range got {
			m.release(ctx, in, true)
		}
	}()
	for i := 0; i < n && i < cap(m.slots); i++ {
		select {
		case m.slots <- struct{}{}:
		default:
			return nil
		}
		in, err := m.newInstance(ctx)
		if err != nil {
			<-m.slots
			return err
		}
		got = append(got, in)
	}
	return nil
}

// Outputs receive what a message-triggered invocation emits.
type Outputs func(ctx context.Context, topic string, payload []byte) error

// OnMessage runs the on_message entry point on in. Emitted outputs are
// passed to emit (nil: emitting is an error) before OnMessage returns.
func (m *Module) OnMessage(ctx context.Context, in *Input, emit Outputs) error {
	if m.Manifest.Entry.OnMessage == "" {
		return fmt.Errorf("%w: %s has no on_message entry", ErrNoEntry, m.Manifest.Name)
	}
	inv := &invocation{m: m, device: in.DeviceID, topic: in.Topic, emit: emit}
	err := m.invoke(ctx, entryMessage, inv, func(dst []byte) []byte { return AppendInput(dst, in) })
	return m.commitState(entryMessage, inv, err)
}

// commitState makes the invocation's state changes durable before it
// returns (the durability point: before the input is acknowledged). The
// changes were made in memory also when the invocation failed after a
// state_put, so they are written then too.
func (m *Module) commitState(entry string, inv *invocation, err error) error {
	if inv.stateMark == 0 {
		return err
	}
	if cerr := m.state.Commit(inv.stateMark); cerr != nil {
		m.stats.fail(entry, "state")
		return errors.Join(err, fmt.Errorf("%s: %w", m.Manifest.Name, cerr))
	}
	return err
}

// Call runs the call entry point (fn('name', args...) from a rule) and
// returns the guest's result.
func (m *Module) Call(ctx context.Context, name, deviceID string, args []Value) (Value, error) {
	if m.Manifest.Entry.Call == "" {
		return Value{}, fmt.Errorf("%w: %s is not callable from rules (entry.callable)", ErrNoEntry, m.Manifest.Name)
	}
	inv := &invocation{m: m, device: deviceID}
	err := m.invoke(ctx, entryCall, inv, func(dst []byte) []byte { return AppendCall(dst, name, deviceID, args) })
	err = m.commitState(entryCall, inv, err)
	if err != nil {
		return Value{}, err
	}
	if !inv.hasResult {
		return Value{}, nil
	}
	v, err := DecodeValue(inv.result)
	if err != nil {
		m.stats.fail(entryCall, "bad_result")
		return Value{}, fmt.Errorf("%w: %s: result: %v", ErrFailed, m.Manifest.Name, err)
	}
	return v, nil
}

const (
	entryMessage = "on_message"
	entryCall    = "call"
)

// invoke runs one entry point on a pooled instance with the deadline.
func (m *Module) invoke(ctx context.Context, entry string, inv *invocation, encode func([]byte) []byte) error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return ErrClosed
	}
	st := m.stats
	st.invocations(entry).Inc()
	start := time.Now()
	in, err := m.acquire(ctx)
	if err != nil {
		st.fail(entry, reasonOf(err))
		return err
	}
	ok := false
	defer func() {
		m.release(context.Background(), in, ok)
		st.duration.UpdateDuration(start)
	}()
	in.scratch = encode(in.scratch[:0])
	cctx, cancel := context.WithTimeout(context.WithValue(ctx, invKey{}, inv), m.Manifest.Limits.Timeout.D())
	defer cancel()
	in.stack[0] = uint64(len(in.scratch))
	if err := in.alloc.CallWithStack(cctx, in.stack[:]); err != nil {
		err = m.classify(ctx, cctx, err, "outpost_alloc")
		st.fail(entry, reasonOf(err))
		return err
	}
	ptr := uint32(in.stack[0])
	if len(in.scratch) > 0 && !in.mod.Memory().Write(ptr, in.scratch) {
		err := fmt.Errorf("%w: %s: outpost_alloc returned %d, outside memory for %d bytes", ErrTrap, m.Manifest.Name, ptr, len(in.scratch))
		st.fail(entry, "trap")
		return err
	}
	f := in.onMsg
	if entry == entryCall {
		f = in.call
	}
	in.stack[0], in.stack[1] = uint64(ptr), uint64(len(in.scratch))
	err = f.CallWithStack(cctx, in.stack[:])
	st.memory(in.mod.Memory().Size())
	if err != nil {
		err = m.classify(ctx, cctx, err, entry)
		st.fail(entry, reasonOf(err))
		return err
	}
	ok = true
	if rc := int32(in.stack[0]); rc != 0 {
		st.fail(entry, "error")
		msg := inv.failMsg
		if msg == "" {
			msg = fmt.Sprintf("returned %d", rc)
		}
		return fmt.Errorf("%w: %s: %s", ErrFailed, m.Manifest.Name, msg)
	}
	return nil
}

// classify maps a wazero error to ErrTimeout or ErrTrap.
func (m *Module) classify(parent, cctx context.Context, err error, what string) error {
	if parent.Err() != nil {
		return fmt.Errorf("function: %s: %w", m.Manifest.Name, parent.Err())
	}
	if cctx.Err() != nil {
		return fmt.Errorf("%w: %s: %s ran past %v", ErrTimeout, m.Manifest.Name, what, m.Manifest.Limits.Timeout)
	}
	var ee *sys.ExitError
	if errors.As(err, &ee) {
		return fmt.Errorf("%w: %s: %s: the guest exited with code %d (a Go panic or out of memory exits with 2)", ErrTrap, m.Manifest.Name, what, ee.ExitCode())
	}
	return fmt.Errorf("%w: %s: %s: %w", ErrTrap, m.Manifest.Name, what, err)
}

func reasonOf(err error) string {
	switch {
	case errors.Is(err, ErrTimeout):
		return "timeout"
	case errors.Is(err, ErrBadPointer):
		return "bad_pointer"
	case errors.Is(err, ErrTrap):
		return "trap"
	case errors.Is(err, ErrFailed):
		return "error"
	}
	return "canceled"
}
