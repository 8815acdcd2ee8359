package function

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/outpost-edge/outpost/internal/topic"
	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
)

// HostModule is the import module name of the host functions.
const HostModule = "outpost"

// Host-call return codes (negative int32).
const (
	rcOK     int32 = 0
	rcAbsent int32 = -1 // state_get, config_get: no such key
	rcDenied int32 = -2 // capability not granted, state limit reached
	rcFailed int32 = -3 // the sink or broker refused
)

// maxHostBytes bounds one string or buffer a guest passes to a host call.
const maxHostBytes = 16 << 20

// invocation is the per-call context the host functions act on.
type invocation struct {
	m         *Module
	device    string
	topic     string
	emit      Outputs
	failMsg   string
	result    []byte
	hasResult bool
	// stateMark is the state log position to commit before the
	// invocation returns (0: no state change to persist).
	stateMark uint64
}

type invKey struct{}

func invOf(ctx context.Context) *invocation {
	inv, _ := ctx.Value(invKey{}).(*invocation)
	if inv == nil {
		// A host call outside an invocation: only from _initialize.
		panic(fmt.Errorf("%w: host call during initialization", ErrTrap))
	}
	return inv
}

// read returns the guest bytes [ptr, ptr+n) or traps with ErrBadPointer.
func read(mod api.Module, ptr, n uint32, what string) []byte {
	if n > maxHostBytes {
		panic(fmt.Errorf("%w: %s length %d exceeds %d", ErrBadPointer, what, n, maxHostBytes))
	}
	b, ok := mod.Memory().Read(ptr, n)
	if !ok {
		panic(fmt.Errorf("%w: %s [%d, +%d) outside memory of %d bytes", ErrBadPointer, what, ptr, n, mod.Memory().Size()))
	}
	return b
}

// copyOut writes v into the guest buffer [ptr, ptr+capacity) when it fits
// and returns len(v) (the caller retries with a larger buffer otherwise).
func copyOut(mod api.Module, v []byte, ptr, capacity uint32) int32 {
	buf := read(mod, ptr, capacity, "buffer")
	if len(v) <= len(buf) {
		copy(buf, v)
	}
	return int32(len(v))
}

type hostFunc struct {
	params, results []api.ValueType
	fn              api.GoModuleFunc
}

var i32, i64 = api.ValueTypeI32, api.ValueTypeI64

func types(t ...api.ValueType) []api.ValueType { return t }

// hostFuncs is the ABI (docs/functions.md). Every pointer and length is
// checked against the guest's memory; a bad one traps this invocation.
var hostFuncs = map[string]hostFunc{
	"log": {types(i32, i32, i32), nil, func(ctx context.Context, mod api.Module, s []uint64) {
		inv := invOf(ctx)
		inv.guestLog(ctx, slog.Level(int32(s[0])), read(mod, uint32(s[1]), uint32(s[2]), "log message"))
	}},
	"fail": {types(i32, i32), nil, func(ctx context.Context, mod api.Module, s []uint64) {
		inv := invOf(ctx)
		msg := read(mod, uint32(s[0]), uint32(s[1]), "error message")
		if len(msg) > 512 {
			msg = msg[:512]
		}
		inv.failMsg = string(msg)
	}},
	"result": {types(i32, i32), nil, func(ctx context.Context, mod api.Module, s []uint64) {
		inv := invOf(ctx)
		inv.result = append(inv.result[:0], read(mod, uint32(s[0]), uint32(s[1]), "result")...)
		inv.hasResult = true
	}},
	"emit": {types(i32, i32, i32, i32), types(i32), func(ctx context.Context, mod api.Module, s []uint64) {
		inv := invOf(ctx)
		t := string(read(mod, uint32(s[0]), uint32(s[1]), "topic"))
		p := read(mod, uint32(s[2]), uint32(s[3]), "payload")
		s[0] = rcWord(inv.doEmit(ctx, t, p))
	}},
	"publish": {types(i32, i32, i32, i32, i32), types(i32), func(ctx context.Context, mod api.Module, s []uint64) {
		inv := invOf(ctx)
		t := string(read(mod, uint32(s[0]), uint32(s[1]), "topic"))
		p := read(mod, uint32(s[2]), uint32(s[3]), "payload")
		s[0] = rcWord(inv.doPublish(ctx, t, p, uint32(s[4])))
	}},
	"state_get": {types(i32, i32, i32, i32), types(i32), func(ctx context.Context, mod api.Module, s []uint64) {
		inv := invOf(ctx)
		k := read(mod, uint32(s[0]), uint32(s[1]), "key")
		v, ok := inv.m.state.Get(inv.device, string(k))
		if !ok {
			s[0] = rcWord(rcAbsent)
			return
		}
		s[0] = rcWord(copyOut(mod, v, uint32(s[2]), uint32(s[3])))
	}},
	"state_put": {types(i32, i32, i32, i32), types(i32), func(ctx context.Context, mod api.Module, s []uint64) {
		inv := invOf(ctx)
		k := read(mod, uint32(s[0]), uint32(s[1]), "key")
		v := read(mod, uint32(s[2]), uint32(s[3]), "value")
		rc := rcOK
		ok, mark := inv.m.state.Put(inv.device, string(k), v)
		if !ok {
			rc = rcDenied
			inv.m.stats.stateDenied.Inc()
		} else if mark > 0 {
			inv.stateMark = mark
		}
		s[0] = rcWord(rc)
	}},
	"config_get": {types(i32, i32, i32, i32), types(i32), func(ctx context.Context, mod api.Module, s []uint64) {
		inv := invOf(ctx)
		k := read(mod, uint32(s[0]), uint32(s[1]), "key")
		v, ok := inv.m.Manifest.Config[string(k)]
		if !ok {
			s[0] = rcWord(rcAbsent)
			return
		}
		s[0] = rcWord(copyOut(mod, []byte(v), uint32(s[2]), uint32(s[3])))
	}},
	"now": {nil, types(i64), func(_ context.Context, _ api.Module, s []uint64) {
		s[0] = uint64(time.Now().UnixNano())
	}},
}

func (inv *invocation) doEmit(ctx context.Context, t string, p []byte) int32 {
	if inv.emit == nil {
		return rcDenied
	}
	if t == "" {
		t = inv.topic
	}
	if topic.ValidFilter(t) != nil || containsWildcard(t) {
		return rcFailed
	}
	if err := inv.emit(ctx, t, p); err != nil {
		inv.m.stats.outputErrors.Inc()
		return rcFailed
	}
	inv.m.stats.outputs.Inc()
	return rcOK
}

func (inv *invocation) doPublish(ctx context.Context, t string, p []byte, qos uint32) int32 {
	if qos > 2 || t == "" || containsWildcard(t) || topic.ValidFilter(t) != nil {
		return rcFailed
	}
	allowed := false
	for _, f := range inv.m.Manifest.Capabilities.Publish {
		allowed = allowed || topic.Match(f, t)
	}
	if !allowed || inv.m.host.Publish == nil {
		inv.m.stats.denied.Inc()
		return rcDenied
	}
	if err := inv.m.host.Publish(ctx, t, p, byte(qos)); err != nil {
		inv.m.stats.outputErrors.Inc()
		return rcFailed
	}
	inv.m.stats.outputs.Inc()
	return rcOK
}

func containsWildcard(t string) bool {
	for i := 0; i < len(t); i++ {
		if t[i] == '+' || t[i] == '#' {
			return true
		}
	}
	return false
}

func instantiateHost(ctx context.Context, r wazero.Runtime) error {
	b := r.NewHostModuleBuilder(HostModule)
	for name, h := range hostFuncs {
		b.NewFunctionBuilder().WithGoModuleFunction(h.fn, h.params, h.results).Export(name)
	}
	_, err := b.Instantiate(ctx)
	return err
}

// rcWord puts an int32 result on the wasm stack.
func rcWord(v int32) uint64 { return uint64(uint32(v)) }
