// Package sink is the one place sinks are built and sink names are
// resolved, for every producer: pipeline routes (`to: [...]`), rule actions
// (REPUBLISH, UPLINK, FILE, WEBHOOK, FUNCTION) and WebAssembly functions'
// trigger outputs. The sink implementations live in the subpackages (file,
// republish, webhook); the uplink lanes' durable sinks in internal/uplink.
//
// A sink reference is "kind" or "kind:name":
//
//	republish          the local broker (topic unchanged)
//	uplink:<lane>      a lane's durable queue ("uplink:" = the first lane)
//	file:<name>        a file sink declared under pipeline.sinks
//	function:<name>    a function's on_message entry (-tags functions)
//	rules, functions   the rule engine and the functions' triggers
//
// The integrator Provides each kind once (the agent, as it builds its
// modules); a kind whose module is not configured is unknown. Configured
// sinks (pipeline.sinks, a rule's WEBHOOK) are built with Republish, File
// and Webhook so that every producer builds them the same way.
//
//	reg := sink.New(sink.Options{Publisher: broker, Logger: log, Metrics: set})
//	reg.Provide("uplink", func(lane string) (message.Sink, error) { ... })
//	s, err := reg.Resolve("uplink:telemetry")
package sink

import (
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"

	"github.com/VictoriaMetrics/metrics"

	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/sink/file"
	"github.com/outpost-edge/outpost/internal/sink/republish"
	"github.com/outpost-edge/outpost/internal/sink/webhook"
)

// Kinds of sink references the agent provides.
const (
	KindRepublish = "republish"
	KindUplink    = "uplink"
	KindFile      = "file"
	KindFunction  = "function"
	KindRules     = "rules"
	KindFunctions = "functions"
)

// ErrUnknown is returned (wrapped) by Resolve for a reference whose kind is
// not provided, or whose name the kind does not know.
var ErrUnknown = errors.New("sink: unknown sink")

// ErrNoPublisher is returned by Republish when the registry has no broker.
var ErrNoPublisher = errors.New("no broker to republish to")

// Resolver resolves the name part of a reference of one kind ("" for a
// bare "kind"). Its errors should wrap ErrUnknown for unknown names.
type Resolver func(name string) (message.Sink, error)

// Options configure a Registry. Every field may be nil.
type Options struct {
	// Publisher is the local broker, for republish sinks.
	Publisher republish.Publisher
	Logger    *slog.Logger
	Metrics   *metrics.Set
}

// Registry builds sinks and resolves sink references. Safe for concurrent
// use; Provide is normally called before the producers start.
type Registry struct {
	opts  Options
	mu    sync.RWMutex
	kinds map[string]Resolver
}

// New returns a registry whose "republish" kind is the broker (when
// Options.Publisher is set).
func New(o Options) *Registry {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Metrics == nil {
		o.Metrics = metrics.NewSet()
	}
	r := &Registry{opts: o, kinds: map[string]Resolver{}}
	if o.Publisher != nil {
		repub := republish.New(KindRepublish, republish.Config{}, o.Publisher)
		r.Provide(KindRepublish, func(string) (message.Sink, error) { return repub, nil })
	}
	return r
}

// Provide registers (or replaces) the resolver of a kind.
func (r *Registry) Provide(kind string, res Resolver) {
	r.mu.Lock()
	r.kinds[kind] = res
	r.mu.Unlock()
}

// Resolve returns the sink a reference names.
func (r *Registry) Resolve(ref string) (message.Sink, error) {
	kind, name, _ := strings.Cut(ref, ":")
	r.mu.RLock()
	res, ok := r.kinds[kind]
	r.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w %q (kinds: %s)", ErrUnknown, ref, strings.Join(r.Kinds(), ", "))
	}
	return res(name)
}

// Kinds lists the provided kinds, sorted.
func (r *Registry) Kinds() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]string, 0, len(r.kinds))
	for k := range r.kinds {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Republish builds a configured republish sink on the registry's broker.
func (r *Registry) Republish(name string, c republish.Config) (message.Sink, error) {
	if r.opts.Publisher == nil {
		return nil, fmt.Errorf("sink %s: %w", name, ErrNoPublisher)
	}
	return republish.New(name, c, r.opts.Publisher), nil
}

// File opens a configured file sink; the caller closes it.
func (r *Registry) File(name string, c file.Config) (*file.Sink, error) { return file.Open(name, c) }

// Webhook builds a webhook sink (a rule's WEBHOOK action).
func (r *Registry) Webhook(c webhook.Config) (message.Sink, error) {
	s, err := webhook.New(c, r.opts.Logger, r.opts.Metrics)
	if err != nil {
		return nil, err
	}
	return s, nil
}
