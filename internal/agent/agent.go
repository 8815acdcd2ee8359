// Package agent wires Outpost's modules into one gateway process: it loads
// the config, builds the broker, pipeline, rule engine and telemetry, starts
// them in dependency order, applies config changes to just the modules whose
// section changed, and shuts down in reverse order on SIGTERM.
//
// Shutdown order (reverse of start) matters and is written down here:
// telemetry stays up longest so /readyz reports the shutdown; the broker stops
// accepting first (no new publishes), the pipeline then drains what it
// accepted into the sinks, the rule engine saves its window state last.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"os"
	"reflect"
	"runtime/debug"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/outpost-edge/outpost/internal/broker"
	"github.com/outpost-edge/outpost/internal/config"
	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/module"
	"github.com/outpost-edge/outpost/internal/netpol"
	"github.com/outpost-edge/outpost/internal/ota"
	"github.com/outpost-edge/outpost/internal/pipeline"
	"github.com/outpost-edge/outpost/internal/rules"
	"github.com/outpost-edge/outpost/internal/sink"
	"github.com/outpost-edge/outpost/internal/sink/webhook"
	"github.com/outpost-edge/outpost/internal/supervisor"
	"github.com/outpost-edge/outpost/internal/telemetry"
	"github.com/outpost-edge/outpost/internal/uplink"
)

// StopTimeout bounds a graceful shutdown.
const StopTimeout = 30 * time.Second

// Agent is one running gateway.
type Agent struct {
	// fleetBase holds, per fleet slot ("kind/name"), the run-time
	// figures when it was applied (fleetBaseline), for the status'
	// errors-since-applied and queue growth.
	fleetBase sync.Map

	path    string // config file ("" when built from a Config in memory)
	logs    *telemetry.Logs
	log     *slog.Logger
	metrics *metrics.Set

	mu  sync.Mutex
	cfg *Config

	Broker     *broker.Broker
	Pipeline   *pipeline.Pipeline
	Rules      *rules.Module
	Telemetry  *telemetry.Server
	OTA        *ota.Updater
	Supervisor *supervisor.Supervisor
	Uplink     *uplink.Uplink
	Netpol     module.Typed[netpol.Config]
	egress     egressStatus // netpol egress (netpol builds), nil otherwise
	lanes      *uplink.Lanes
	fns        *functionsModule
	runner     *module.Runner
	routes     []func(*http.ServeMux) // the modules' HTTP routes (telemetry serves them)
	sinks      *sink.Registry         // every sink name resolves here

	reloadOK, reloadRejected *metrics.Counter
	// frags are the fleet's config fragments, merged over the file on
	// every reload (fleet_config.go).
	frags fleetFragments
	// Ready is closed once every module has started.
	Ready chan struct{}
}

// New builds (but does not start) an agent for cfg, which must have been
// loaded with Load (defaulted and validated). path is the config file to
// watch for changes ("" = no watching).
func New(cfg *Config, path string, logs *telemetry.Logs) (*Agent, error) {
	if logs == nil {
		logs = telemetry.NewLogs(os.Stderr, cfg.Log)
	}
	a := &Agent{path: path, logs: logs, log: logs.Logger(), metrics: metrics.NewSet(), cfg: cfg, Ready: make(chan struct{})}
	a.reloadOK = a.metrics.NewCounter(`outpost_config_reloads_total{result="applied"}`)
	a.reloadRejected = a.metrics.NewCounter(`outpost_config_reloads_total{result="rejected"}`)

	a.sinks = a.newSinks()
	mods := a.buildModules(cfg)
	a.provideSinks()
	r, err := module.NewRunner(a.log, mods...)
	if err != nil {
		return nil, err
	}
	a.runner = r
	return a, nil
}

// pipelineConfig adds the implicit "everything to the rule engine" route
// when rules are enabled and no route names the engine.
func pipelineConfig(c *Config) *pipeline.Config {
	pc := c.Pipeline
	if c.functionsOn() {
		pc.Routes = implicitRoute(pc.Routes, FunctionsSink)
	}
	if c.Rules == nil {
		return &pc
	}
	for _, r := range pc.Routes {
		for _, t := range r.To {
			if t == RulesSink {
				return &pc
			}
		}
	}
	pc.Routes = append(append([]pipeline.Route(nil), pc.Routes...), pipeline.Route{Name: "rules", From: []string{"#"}, To: []string{RulesSink}})
	return &pc
}

// Logger returns the agent's logger.
func (a *Agent) Logger() *slog.Logger { return a.log }

// Metrics returns the agent's metric set.
func (a *Agent) Metrics() *metrics.Set { return a.metrics }

// Config returns the running config.
func (a *Agent) Config() *Config { a.mu.Lock(); defer a.mu.Unlock(); return a.cfg }

// Start starts every module. On failure the started ones are stopped and a
// *module.StartError says which module failed and why.
func (a *Agent) Start(ctx context.Context) error {
	applyRuntime(a.cfg.Runtime)
	if err := os.MkdirAll(a.cfg.DataDir, 0o750); err != nil {
		return fmt.Errorf("agent: data_dir: %w", err)
	}
	t0 := time.Now()
	err := a.runner.Start(ctx, func(name string) any { return sectionOf(a.cfg, name) }, StopTimeout)
	if err != nil {
		return err
	}
	a.log.Info("outpost started", "node_id", a.cfg.NodeID, "took", time.Since(t0).Round(time.Microsecond),
		"mqtt", a.listenerSummary(), "http", a.Telemetry.Addr())
	// After the last unlocked read of a.cfg: from Ready on, config
	// changes (reloads, fleet fragments) may replace it.
	close(a.Ready)
	return nil
}

func (a *Agent) listenerSummary() string {
	s := ""
	for _, l := range a.cfg.Broker.Listeners {
		if s != "" {
			s += ", "
		}
		addr := a.Broker.Addr(l.Name)
		if addr == "" {
			addr = l.Path
		}
		s += l.Type + "://" + addr
	}
	return s
}

// Run starts the agent, watches the config file, and blocks until ctx ends;
// then it shuts down gracefully within StopTimeout.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.Start(ctx); err != nil {
		return err
	}
	watchCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	if a.path != "" {
		if err := config.Watch(watchCtx, a.path, 250*time.Millisecond, func() { a.Reload(watchCtx) }); err != nil {
			a.log.Warn("config file will not be watched for changes", "file", a.path, "err", err)
		}
	}
	<-ctx.Done()
	a.log.Info("outpost stopping", "reason", context.Cause(ctx))
	stopCtx, stop := context.WithTimeout(context.Background(), StopTimeout)
	defer stop()
	return a.Stop(stopCtx)
}

// Stop stops every module in reverse start order.
func (a *Agent) Stop(ctx context.Context) error {
	t0 := time.Now()
	err := a.runner.Stop(ctx)
	a.log.Info("outpost stopped", "took", time.Since(t0).Round(time.Millisecond), "err", err)
	return err
}

// Health returns every module's health.
func (a *Agent) Health() []module.NamedStatus { return a.runner.Health() }

// Reload re-reads the config file. An invalid file is rejected with every
// error logged and the running config stays; a valid one is applied to the
// modules whose section changed, one at a time.
func (a *Agent) Reload(ctx context.Context) {
	if a.frags.lock(ctx) != nil {
		return
	}
	defer a.frags.unlock()
	next, err := a.loadConfigLocked(a.frags.byName)
	if err != nil {
		a.reloadRejected.Inc()
		a.log.Error("config change rejected; the running config stays in force", "file", a.path, "errors", err.Error())
		return
	}
	if err := a.Apply(ctx, next); err != nil {
		a.reloadRejected.Inc()
		a.log.Error("config change could not be applied fully", "file", a.path, "err", err)
		return
	}
	a.reloadOK.Inc()
}

// Apply switches to next, reconfiguring only modules whose section changed.
// Settings that need a process restart (node_id, data_dir, enabling or
// disabling the rule engine) are refused.
func (a *Agent) Apply(ctx context.Context, next *Config) error {
	a.mu.Lock()
	cur := a.cfg
	a.mu.Unlock()
	if cur.NodeID != next.NodeID || cur.DataDir != next.DataDir {
		return errors.New("node_id and data_dir take effect only after a restart; change refused")
	}
	for _, r := range registry {
		was, is := r.section(cur) != nil, r.section(next) != nil
		if r.restart && was != is {
			return fmt.Errorf("enabling or disabling %s takes effect only after a restart; change refused", r.name)
		}
		if r.fixedSection && was && is && !reflect.DeepEqual(r.section(cur), r.section(next)) {
			return fmt.Errorf("a change of %s takes effect only after a restart; change refused", r.name)
		}
	}
	var changed []string
	if !reflect.DeepEqual(cur.Log, next.Log) {
		a.logs.Apply(next.Log)
		changed = append(changed, "log")
	}
	if !reflect.DeepEqual(cur.Runtime, next.Runtime) {
		applyRuntime(next.Runtime)
		changed = append(changed, "runtime")
	}
	var errs []error
	for _, m := range a.runner.Modules() {
		name := m.Name()
		if reflect.DeepEqual(sectionOf(cur, name), sectionOf(next, name)) {
			continue
		}
		if err := a.runner.Reconfigure(ctx, name, sectionOf(next, name)); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			continue
		}
		changed = append(changed, name)
	}
	a.mu.Lock()
	a.cfg = next
	a.mu.Unlock()
	if len(changed) == 0 && len(errs) == 0 {
		a.log.Info("config file changed, nothing to apply")
	} else {
		a.log.Info("config reloaded", "changed", changed)
	}
	return errors.Join(errs...)
}

// brokerIdentity adapts the broker's component identities to the supervisor.
type brokerIdentity struct{ b *broker.Broker }

func (bi brokerIdentity) Issue(ctx context.Context, component string, acl supervisor.Access) (supervisor.Credentials, error) {
	c, err := bi.b.IssueIdentity(ctx, component, broker.Access{Publish: acl.Publish, Subscribe: acl.Subscribe})
	return supervisor.Credentials{URL: c.URL, Username: c.Username, Password: c.Password}, err
}

func (bi brokerIdentity) Revoke(component string) { bi.b.RevokeIdentity(component) }

// rulesEnv gives the rule engine its action targets.
type rulesEnv struct{ a *Agent }

// Republish is the registry's republish sink (the local broker).
func (e *rulesEnv) Republish() message.Sink {
	s, err := e.a.sinks.Resolve(sink.KindRepublish)
	if err != nil {
		panic("agent: the sink registry has no republish sink: " + err.Error())
	}
	return s
}

// Uplink resolves an UPLINK action to a lane's durable sink ("" = the
// first configured lane) through the sink registry.
func (e *rulesEnv) Uplink(lane string) (message.Sink, error) {
	if e.a.lanes == nil {
		return nil, fmt.Errorf("%w: uplink lane %q (no uplink is configured)", rules.ErrUnknownTarget, lane)
	}
	return e.a.sinks.Resolve(sink.KindUplink + ":" + lane)
}

// File resolves a FILE action to the pipeline's file sink of that name
// through the sink registry.
func (e *rulesEnv) File(name string) (message.Sink, error) {
	return e.a.sinks.Resolve(sink.KindFile + ":" + name)
}

// Webhook builds a WEBHOOK action's sink with the registry
// (rules.WebhookEnv).
func (e *rulesEnv) Webhook(c webhook.Config) (message.Sink, error) { return e.a.sinks.Webhook(c) }

// Function resolves DO FUNCTION 'name' (functions.go; in a build without
// -tags functions, every name is unknown).
func (e *rulesEnv) Function(name string) (message.Sink, error) { return e.functionAction(name) }

func (e *rulesEnv) Lanes() []string { return e.a.laneNames() }

func (e *rulesEnv) Labels(string) map[string]string { return nil }

func setMemoryLimit(n int64) {
	if n < 0 {
		n = math.MaxInt64
	}
	debug.SetMemoryLimit(n)
}

func setGCPercent(p int) { debug.SetGCPercent(p) }

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
