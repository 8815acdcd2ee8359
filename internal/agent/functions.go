//go:build functions

package agent

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"

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
}

func (a *Agent) newFunctions() module.Typed[FunctionsConfig] {
	a.fns = &functionsModule{a: a}
	a.route(func(mux *http.ServeMux) { mux.HandleFunc("GET /functions", a.fns.serveHTTP) })
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
	var trust *function.Trust
	if cfg.TrustRoot != "" {
		if trust, err = function.LoadTrust(cfg.TrustRoot); err != nil {
			_ = rt.Close(ctx)
			return err
		}
	} else {
		a.log.Warn("functions: signatures are not checked (allow_unsigned)", "module", "functions")
	}
	repub, err := a.sinks.Resolve(sink.KindRepublish)
	if err != nil {
		_ = rt.Close(ctx)
		return err
	}
	reg := function.NewRegistry(function.RegistryOptions{
		Runtime: rt, Dir: cfg.Dir, Trust: trust, Log: a.log, Warm: cfg.Warm,
		Sinks:  a.functionOutput,
		Labels: a.deviceLabels,
		Host: function.Host{Publish: func(ctx context.Context, topic string, payload []byte, qos byte) error {
			return repub.Deliver(ctx, &message.Message{Topic: topic, Payload: payload, QoS: qos})
		}},
	})
	if err := reg.Reload(ctx); err != nil {
		a.log.Error("functions: some functions were refused", "module", "functions", "err", err)
	}
	wctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); reg.Watch(wctx, cfg.Watch.D()) }()
	f.mu.Lock()
	f.rt, f.reg, f.cancel, f.done = rt, reg, cancel, done
	f.mu.Unlock()
	return nil
}

func (f *functionsModule) Stop(ctx context.Context) error {
	f.mu.Lock()
	rt, reg, cancel, done := f.rt, f.reg, f.cancel, f.done
	f.rt, f.reg = nil, nil
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
