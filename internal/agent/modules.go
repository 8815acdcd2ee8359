package agent

import (
	"context"
	"net/http"
	"os"

	"github.com/outpost-edge/outpost/internal/broker"
	"github.com/outpost-edge/outpost/internal/fleet/client"
	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/module"
	"github.com/outpost-edge/outpost/internal/netpol"
	"github.com/outpost-edge/outpost/internal/ota"
	"github.com/outpost-edge/outpost/internal/pipeline"
	"github.com/outpost-edge/outpost/internal/rules"
	"github.com/outpost-edge/outpost/internal/supervisor"
	"github.com/outpost-edge/outpost/internal/telemetry"
	"github.com/outpost-edge/outpost/internal/uplink"
)

// registry is every module the agent can run, one registration each: the
// module's name, where its typed section lives in Config (nil = the module
// is off and not built), how the agent builds it, and the modules that
// start before it when they run. Adding a module is one line here plus its
// package (docs/CONVENTIONS.md, "Adding a module").
//
// The order is the build order (a module's constructor may use the handles
// of the modules above it: the pipeline publishes through a.Broker) and
// breaks ties in the start order; dependencies decide the rest.
var registry = []registration{
	register("broker", func(c *Config) *broker.Config { return &c.Broker }, (*Agent).newBroker, "pipeline"),
	register("telemetry", func(c *Config) *telemetry.Config { return &c.Telemetry }, (*Agent).newTelemetry),
	// Built only with -tags functions (functions.go); other builds refuse
	// an enabled section in Config.Validate.
	register("functions", functionsSection, (*Agent).newFunctions, "telemetry").toggleNotRefused(),
	// UPLINK actions resolve to the lanes' sinks when rules compile, and
	// window outputs emitted by the timer go to them: the lanes start
	// before the rule engine and stop after it. Likewise fn() calls.
	register("rules", func(c *Config) *rules.Config { return c.Rules }, (*Agent).newRules, "lanes", "functions"),
	// The pipeline delivers to the rule engine, the functions and the
	// lanes: they start before it and stop after it.
	register("pipeline", pipelineConfig, (*Agent).newPipeline, "telemetry", "rules", "lanes", "functions"),
	register("ota", func(c *Config) *ota.Config { return &c.OTA }, (*Agent).newOTA, "telemetry"),
	// Components get credentials on the bus: the broker is up first.
	register("supervisor", func(c *Config) *supervisor.Config { return c.Supervisor }, (*Agent).newSupervisor, "broker"),
	// Built only with -tags netpol (netpol.go); other builds fail at start.
	register("netpol", func(c *Config) *netpol.Config { return c.Netpol }, (*Agent).newNetpol, "telemetry"),
	// The lanes' queues: a change of lanes needs a restart.
	register("lanes", lanesSection, (*Agent).newLanes).fixed(),
	register("uplink", uplinkSection, (*Agent).newUplink, "lanes"),
	register("fleet", func(c *Config) *client.Config { return c.Fleet }, (*Agent).newFleet, "telemetry", "broker", "rules").toggleNotRefused(),
}

// registration is one entry of the registry.
type registration struct {
	name string
	// section returns the module's section (a *C) or nil when it is off.
	section func(*Config) any
	// build constructs the module, adapted to module.Module with its
	// dependencies (the names in after that are built).
	build func(a *Agent, after []string) module.Module
	after []string
	// restart: enabling or disabling the module is refused at reload
	// (the process must restart); fixedSection: so is any change of it.
	restart, fixedSection bool
}

// register declares a module whose config section has type C. section
// returns nil when the module is off; build returns the typed module
// (module.Of writes its config preamble).
func register[C any](name string, section func(*Config) *C, build func(*Agent) module.Typed[C], after ...string) registration {
	return registration{
		name: name,
		section: func(c *Config) any {
			if s := section(c); s != nil {
				return s
			}
			return nil
		},
		build:   func(a *Agent, after []string) module.Module { return module.Of(build(a), after...) },
		after:   after,
		restart: true,
	}
}

// toggleNotRefused: enabling or disabling the module at reload is not
// refused (it takes effect at the next start), as it was before the
// registry for functions and fleet. The default is to refuse it.
func (r registration) toggleNotRefused() registration { r.restart = false; return r }

// fixed refuses any change of the section while running.
func (r registration) fixed() registration { r.fixedSection = true; return r }

// sectionOf returns the section of the module name in c (nil when off or
// unknown).
func sectionOf(c *Config, name string) any {
	for _, r := range registry {
		if r.name == name {
			return r.section(c)
		}
	}
	return nil
}

// buildModules builds every module that is on in cfg, with the
// dependencies on modules that are on.
func (a *Agent) buildModules(cfg *Config) []module.Module {
	on := map[string]bool{}
	for _, r := range registry {
		on[r.name] = r.section(cfg) != nil
	}
	var mods []module.Module
	for _, r := range registry {
		if !on[r.name] {
			continue
		}
		var after []string
		for _, d := range r.after {
			if on[d] {
				after = append(after, d)
			}
		}
		mods = append(mods, r.build(a, after))
	}
	return mods
}

// route adds HTTP handlers served by the telemetry endpoint.
func (a *Agent) route(f func(*http.ServeMux)) { a.routes = append(a.routes, f) }

// Constructors, one per registration. Each sets the agent's handle for the
// module and registers its HTTP routes.

func (a *Agent) newBroker() module.Typed[broker.Config] {
	a.Broker = broker.New(broker.Options{
		Logger: a.log, Metrics: a.metrics, DataDir: a.cfg.DataDir,
		OnPublish:      func(m *message.Message) error { return a.Pipeline.Submit(m) },
		OnPublishAsync: func(m *message.Message, done func(error)) { a.Pipeline.SubmitAsync(m, done) },
	})
	return a.Broker
}

func (a *Agent) newTelemetry() module.Typed[telemetry.Config] {
	a.Telemetry = telemetry.New(telemetry.Options{
		Logger: a.log, Metrics: a.metrics, Health: a,
		// The modules' routes, read when the endpoint first needs them
		// (after New has built every module).
		Routes: []func(*http.ServeMux){func(mux *http.ServeMux) {
			for _, r := range a.routes {
				r(mux)
			}
		}},
		// Installing software needs the token or the unix socket.
		Protected:      []string{"/api/v1/update/"},
		RedactedConfig: func() any { a.mu.Lock(); defer a.mu.Unlock(); return Redacted(a.cfg) },
	})
	return a.Telemetry
}

func (a *Agent) newRules() module.Typed[rules.Config] {
	a.Rules = rules.NewModule(&rulesEnv{a: a}, a.log, a.metrics)
	a.route(a.Rules.RegisterHTTP)
	return a.Rules
}

func (a *Agent) newPipeline() module.Typed[pipeline.Config] {
	a.Pipeline = pipeline.New(pipeline.Options{
		Logger: a.log, Metrics: a.metrics, Publisher: a.Broker, Sinks: a.sinks,
	})
	return a.Pipeline
}

func (a *Agent) newOTA() module.Typed[ota.Config] {
	a.OTA = ota.New(ota.Options{Log: a.log, Metrics: a.metrics, Restart: func(c ota.Config) {
		ctx, cancel := context.WithTimeout(context.Background(), StopTimeout)
		defer cancel()
		a.Stop(ctx)
		if err := ota.Restart(c); err != nil {
			a.log.Error("restart into the new version failed", "err", err)
			os.Exit(1)
		}
	}})
	a.route(a.OTA.Register)
	return a.OTA
}

func (a *Agent) newSupervisor() module.Typed[supervisor.Config] {
	a.Supervisor = supervisor.New(supervisor.Options{
		Logger: a.log, Identity: brokerIdentity{a.Broker}, Publisher: a.Broker, Bus: a.Broker,
		Metrics: a.metrics, Egress: a.newEgress(), EgressAlways: a.brokerEgress,
	})
	a.route(a.Supervisor.RegisterHTTP)
	return a.Supervisor
}

func (a *Agent) newLanes() module.Typed[[]uplink.LaneConfig] {
	a.lanes = uplink.NewLanes(a.log, a.metrics)
	return a.lanes
}

func (a *Agent) newUplink() module.Typed[uplink.Config] {
	a.Uplink = uplink.New(uplink.Options{Logger: a.log, Metrics: a.metrics, Queues: a.lanes.Queue, Downlink: downlink{a.Broker}})
	a.route(a.queueStatusHandler)
	return a.Uplink
}

func uplinkSection(c *Config) *uplink.Config {
	if !c.uplinkOn() {
		return nil
	}
	return c.Uplink
}

func lanesSection(c *Config) *[]uplink.LaneConfig {
	if !c.uplinkOn() {
		return nil
	}
	return &c.Uplink.Lanes
}

func functionsSection(c *Config) *FunctionsConfig {
	if !c.functionsOn() {
		return nil
	}
	return c.Functions
}
