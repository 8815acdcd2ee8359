//go:build functions

package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/outpost-edge/outpost/internal/function"
	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/module"
	"github.com/outpost-edge/outpost/internal/rules"
	"github.com/outpost-edge/outpost/internal/sink"
)

const functionsBuilt = true

// functionsModule runs the functions registry as an agent module: it
// loads the directory at start (before the rule engine compiles rules that
// call fn()), watches it, and serves GET /functions.
type functionsModule struct {
	a      *Agent
	mu     sync.Mutex
	cfg    *FunctionsConfig
	rt     *function.Runtime
	reg    *function.Registry
	cancel context.CancelFunc
	done   chan struct{}
	// trustPrint identifies the trust root in use (path and content,
	// and whether the TUF chain is on).
	trustPrint string
	chain      *function.ChainTrust
}

func (a *Agent) newFunctions() module.Typed[FunctionsConfig] {
	a.fns = &functionsModule{a: a}
	a.route(func(mux *http.ServeMux) {
		mux.HandleFunc("GET /functions", a.fns.serveHTTP)
		// Under /api/: the token protects it like the rest of the API
		// (function logs may carry device data).
		mux.HandleFunc("GET /api/v1/functions/{name}/logs", a.fns.serveLogs)
	})
	return a.fns
}

// provideFunctionSinks registers "functions" (the triggers, fed by the
// pipeline) and "function:NAME" (a rule's DO FUNCTION) in the registry.
func (a *Agent) provideFunctionSinks() {
	if a.fns == nil {
		return
	}
	a.sinks.Provide(sink.KindFunctions, func(string) (message.Sink, error) { return functionsSink{a.fns}, nil })
	a.sinks.Provide(sink.KindFunction, a.fns.action)
}

// functionsSink forwards to the registry running now.
type functionsSink struct{ f *functionsModule }

func (s functionsSink) Name() string { return FunctionsSink }

// Durable: a QoS 1/2 publish is acknowledged after the functions ran on
// it, their state changes are fsynced and their outputs accepted by their
// sinks (uplink lanes: durable), as for rules.
func (s functionsSink) Durable() bool { return true }

func (s functionsSink) Deliver(ctx context.Context, m *message.Message) error {
	if r := s.f.registry(); r != nil {
		return r.Deliver(ctx, m)
	}
	return nil
}

func (f *functionsModule) registry() *function.Registry {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reg
}

func (f *functionsModule) Name() string { return "functions" }

func (f *functionsModule) Init(_ context.Context, c *FunctionsConfig) error {
	f.mu.Lock()
	f.cfg = c
	f.mu.Unlock()
	return nil
}

func (f *functionsModule) Start(ctx context.Context) error {
	f.mu.Lock()
	cfg := f.cfg
	f.mu.Unlock()
	a := f.a
	rt, err := function.NewRuntime(function.RuntimeOptions{CacheDir: cfg.CacheDir, Log: a.log, Metrics: a.metrics})
	if err != nil {
		return err
	}
	trust, print, err := f.loadTrust(cfg)
	if err != nil {
		_ = rt.Close(ctx)
		return err
	}
	chain, err := newChain(cfg)
	if err != nil {
		_ = rt.Close(ctx)
		return err
	}
	repub, err := a.sinks.Resolve(sink.KindRepublish)
	if err != nil {
		_ = rt.Close(ctx)
		return err
	}
	reg := function.NewRegistry(function.RegistryOptions{
		Runtime: rt, Dir: activeDir(cfg), Trust: trust, Chain: chain, Log: a.log, Warm: cfg.Warm, StateDir: cfg.StateDir,
		Sinks:  a.functionOutput,
		Labels: a.deviceLabels,
		Host: function.Host{Publish: func(ctx context.Context, topic string, payload []byte, qos byte) error {
			return repub.Deliver(ctx, &message.Message{Topic: topic, Payload: payload, QoS: qos})
		}},
	})
	if err := reg.Reload(ctx); err != nil {
		a.log.Error("functions: some functions were refused", "module", "functions", "err", err)
	}
	f.mu.Lock()
	if cfg.TUF {
		print += "+tuf"
	}
	f.rt, f.reg, f.trustPrint, f.chain = rt, reg, print, chain
	f.startWatch(cfg.Watch.D())
	f.mu.Unlock()
	return nil
}

// newChain opens the TUF chain when functions.tuf is set (nil otherwise).
func newChain(c *FunctionsConfig) (*function.ChainTrust, error) {
	if !c.TUF {
		return nil, nil
	}
	return function.NewChainTrust(c.TrustRoot, filepath.Join(c.Dir, function.ChainDir), c.StateDir)
}

// activeDir is the directory to load from: none when disabled.
func activeDir(c *FunctionsConfig) string {
	if !c.Enabled {
		return ""
	}
	return c.Dir
}

// loadTrust reads the trust root; print identifies it (path and bytes)
// so a reconfiguration knows whether every version must be verified again.
func (f *functionsModule) loadTrust(c *FunctionsConfig) (*function.Trust, string, error) {
	if c.TrustRoot == "" {
		f.a.log.Warn("functions: signatures are not checked (allow_unsigned)", "module", "functions")
		return nil, "", nil
	}
	raw, err := os.ReadFile(c.TrustRoot)
	if err != nil {
		return nil, "", fmt.Errorf("functions: trust_root: %w", err)
	}
	t, err := function.LoadTrust(c.TrustRoot)
	if err != nil {
		return nil, "", err
	}
	sum := sha256.Sum256(raw)
	return t, c.TrustRoot + "@" + hex.EncodeToString(sum[:]), nil
}

// startWatch (re)starts the directory watch; f.mu held.
func (f *functionsModule) startWatch(every time.Duration) {
	if f.cancel != nil {
		f.cancel()
		<-f.done
	}
	wctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	reg := f.reg
	go func() { defer close(done); reg.Watch(wctx, every) }()
	f.cancel, f.done = cancel, done
}

// Reconfigure applies a changed functions section without stopping the
// module: the registry, its loaded versions and their state stay, so
// messages keep flowing to the functions that did not change (no gap, no
// duplicate). dir, enabled, trust_root/allow_unsigned, warm and watch
// apply at once (a changed trust root re-verifies every version and
// unloads what it refuses); cache_dir and state_dir only at the next
// start (logged).
func (f *functionsModule) Reconfigure(ctx context.Context, c *FunctionsConfig) error {
	if c == nil {
		return fmt.Errorf("functions: no configuration")
	}
	f.mu.Lock()
	cur, reg, curPrint, chain := f.cfg, f.reg, f.trustPrint, f.chain
	f.mu.Unlock()
	if reg == nil { // not started: Start uses it
		f.mu.Lock()
		f.cfg = c
		f.mu.Unlock()
		return nil
	}
	trust, print, err := f.loadTrust(c)
	if err != nil {
		return err // the running configuration stays
	}
	if c.TUF != cur.TUF || c.TrustRoot != cur.TrustRoot || c.Dir != cur.Dir || c.StateDir != cur.StateDir {
		if chain, err = newChain(c); err != nil {
			return err
		}
	}
	if c.TUF {
		print += "+tuf"
	}
	for key, changed := range map[string]bool{"cache_dir": c.CacheDir != cur.CacheDir, "state_dir": c.StateDir != cur.StateDir} {
		if changed {
			f.a.log.Warn("functions: "+key+" changes take effect at the next start", "module", "functions")
		}
	}
	if err := reg.Reconfigure(ctx, function.Settings{Dir: activeDir(c), Trust: trust, Chain: chain, Reverify: print != curPrint, Warm: c.Warm}); err != nil {
		f.a.log.Error("functions: some functions were refused", "module", "functions", "err", err)
	}
	f.mu.Lock()
	f.cfg, f.trustPrint, f.chain = c, print, chain
	if c.Watch != cur.Watch {
		f.startWatch(c.Watch.D())
	}
	f.mu.Unlock()
	return nil
}

// The module applies a changed section in place (the adapter would
// restart it otherwise, and messages would be lost across the restart).
var _ module.TypedReconfigurable[FunctionsConfig] = (*functionsModule)(nil)

func (f *functionsModule) Stop(ctx context.Context) error {
	f.mu.Lock()
	rt, reg, cancel, done := f.rt, f.reg, f.cancel, f.done
	f.rt, f.reg, f.cancel, f.done = nil, nil, nil, nil
	f.mu.Unlock()
	if reg == nil {
		return nil
	}
	cancel()
	<-done
	_ = reg.Close(ctx)
	return rt.Close(ctx)
}

func (f *functionsModule) Health() module.Status {
	r := f.registry()
	if r == nil {
		return module.Status{State: module.StateStopped}
	}
	if _, p := r.Statuses(); len(p) > 0 {
		return module.Status{State: module.StateDegraded, Detail: fmt.Sprintf("%d function director(y/ies) refused: %s", len(p), p[0].Err)}
	}
	return module.Status{State: module.StateReady}
}

func (f *functionsModule) serveHTTP(w http.ResponseWriter, _ *http.Request) {
	r := f.registry()
	if r == nil {
		http.Error(w, "functions are not running", http.StatusServiceUnavailable)
		return
	}
	st, p := r.Statuses()
	writeJSON(w, map[string]any{"functions": st, "problems": p})
}

// serveLogs answers GET /api/v1/functions/NAME/logs?after=SEQ&max=N&wait=DUR:
// the lines the function logged after SEQ; with wait (at most 60s) it
// waits for a line when there is none yet (outpost functions logs -f).
func (f *functionsModule) serveLogs(w http.ResponseWriter, req *http.Request) {
	f.mu.Lock()
	rt := f.rt
	f.mu.Unlock()
	if rt == nil {
		writeJSONError(w, http.StatusServiceUnavailable, "functions are not running")
		return
	}
	q := req.URL.Query()
	var after uint64
	var limit int
	var wait time.Duration
	var err error
	if v := q.Get("after"); v != "" {
		if after, err = strconv.ParseUint(v, 10, 64); err != nil {
			writeJSONError(w, http.StatusBadRequest, "after: want a line number, got "+strconv.Quote(v))
			return
		}
	}
	if v := q.Get("max"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 {
			writeJSONError(w, http.StatusBadRequest, "max: want a positive number, got "+strconv.Quote(v))
			return
		}
	}
	if v := q.Get("wait"); v != "" {
		if wait, err = time.ParseDuration(v); err != nil || wait < 0 || wait > time.Minute {
			writeJSONError(w, http.StatusBadRequest, "wait: want a duration up to 60s, got "+strconv.Quote(v))
			return
		}
	}
	logs, err := rt.Logs(req.Context(), req.PathValue("name"), after, limit, wait)
	switch {
	case errors.Is(err, function.ErrUnknownFunction):
		writeJSONError(w, http.StatusNotFound, err.Error())
		return
	case err != nil:
		return // the client went away
	}
	writeJSON(w, logs)
}

func writeJSONError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// functionOutput resolves a trigger's output through the sink registry:
// republish, uplink:LANE, file:NAME (the same targets as rule actions).
func (a *Agent) functionOutput(name string) (message.Sink, error) {
	kind, _, _ := strings.Cut(name, ":")
	switch {
	case name == sink.KindRepublish, kind == sink.KindUplink && name != kind, kind == sink.KindFile && name != kind:
		if kind == sink.KindUplink && a.lanes == nil {
			return nil, fmt.Errorf("%w: uplink lane %q (no uplink is configured)", rules.ErrUnknownTarget, strings.TrimPrefix(name, "uplink:"))
		}
		return a.sinks.Resolve(name)
	}
	return nil, fmt.Errorf("unknown sink %q", name)
}

// deviceLabels are the labels declared under rules.devices (the same
// source as the rules' gray rollout).
func (a *Agent) deviceLabels(id string) map[string]string {
	c := a.Config()
	if c.Rules == nil {
		return nil
	}
	for _, d := range c.Rules.Devices {
		if d.ID == id {
			return d.Labels
		}
	}
	return nil
}

// ScalarFunc makes the loaded functions callable from rules as
// fn('name', args...) (rules.FuncEnv).
func (e *rulesEnv) ScalarFunc(name string) (rules.ScalarFunc, error) {
	f := e.a.fns
	if f == nil {
		return nil, fmt.Errorf("%w: function '%s' (functions are not enabled)", rules.ErrUnknownTarget, name)
	}
	r := f.registry()
	if r == nil {
		return nil, fmt.Errorf("%w: function '%s' (functions are not running)", rules.ErrUnknownTarget, name)
	}
	if err := r.Callable(name); err != nil {
		return nil, err
	}
	return func(ctx context.Context, dev string, args []rules.Value) (rules.Value, error) {
		r := f.registry()
		if r == nil {
			return rules.Value{}, fmt.Errorf("functions stopped")
		}
		in := make([]function.Value, len(args))
		for i, v := range args {
			in[i] = function.Value{Kind: byte(v.K), Num: v.N, Str: v.S}
		}
		out, err := r.Call(ctx, name, dev, in)
		if err != nil {
			return rules.Value{}, err
		}
		if out.Kind > function.KindJSON {
			return rules.Value{}, fmt.Errorf("function %s returned kind %d", name, out.Kind)
		}
		return rules.Value{K: rules.Kind(out.Kind), N: out.Num, S: out.Str}, nil
	}, nil
}

// functionAction resolves a rule's DO FUNCTION 'name' through the sink
// registry ("function:NAME").
func (e *rulesEnv) functionAction(name string) (message.Sink, error) {
	if e.a.fns == nil {
		return nil, fmt.Errorf("%w: function %q (functions are not enabled)", rules.ErrUnknownTarget, name)
	}
	return e.a.sinks.Resolve(sink.KindFunction + ":" + name)
}

// action is the "function:NAME" sink: the message runs the function's
// on_message entry (its emits go to its first trigger's sinks, or are
// republished).
func (f *functionsModule) action(name string) (message.Sink, error) {
	if f.registry() == nil {
		return nil, fmt.Errorf("%w: function %q (functions are not enabled)", rules.ErrUnknownTarget, name)
	}
	if err := f.registry().Runnable(name); err != nil {
		return nil, fmt.Errorf("%w: %v", rules.ErrUnknownTarget, err)
	}
	return functionAction{f: f, name: name}, nil
}

type functionAction struct {
	f    *functionsModule
	name string
}

func (s functionAction) Name() string { return "function:" + s.name }

func (s functionAction) Deliver(ctx context.Context, m *message.Message) error {
	r := s.f.registry()
	if r == nil {
		return fmt.Errorf("function %s: functions stopped", s.name)
	}
	return r.Run(ctx, s.name, m)
}
