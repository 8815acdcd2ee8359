package rules

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"reflect"
	"strings"
	"sync"

	"github.com/VictoriaMetrics/metrics"
	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/module"
	"github.com/outpost-edge/outpost/internal/rules/parser"
	"github.com/outpost-edge/outpost/internal/sink/webhook"
)

// Module runs the rule engine as an Outpost module (name "rules"): it owns
// an Engine and a Store, restores window state on Start and saves it on
// Stop.
//
// The engine is built once, by the first Init, and lives as long as the
// Module: a config reload (Reconfigure) changes the running engine's
// settings in place, so the pipeline, which holds the engine's sink, keeps
// feeding the engine that the timer ticks, the store loads rule files into
// and the HTTP API manages, and no rule, window or device state is rebuilt.
type Module struct {
	env Env
	log *slog.Logger
	set *metrics.Set

	mu      sync.Mutex
	cfg     Config
	labels  *labelEnv
	eng     *Engine
	store   *Store
	started bool
}

var (
	_ module.Typed[Config]               = (*Module)(nil)
	_ module.TypedReconfigurable[Config] = (*Module)(nil)
)

// NewModule returns the rules module. env is implemented by the
// integrator; log and set may be nil.
func NewModule(env Env, log *slog.Logger, set *metrics.Set) *Module {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if set == nil {
		set = metrics.NewSet()
	}
	return &Module{env: env, log: log, set: set}
}

// Name implements module.Typed.
func (m *Module) Name() string { return "rules" }

// DependsOn: actions deliver to the broker and the uplink queue.
func (m *Module) DependsOn() []string { return nil }

// Init builds the engine from pc, defaulted and validated (module.Of)
// (once; a later Init applies pc to the same engine, like Reconfigure).
func (m *Module) Init(_ context.Context, pc *Config) error {
	c := *pc
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.eng != nil {
		if m.started {
			return errors.New("rules: Init while running")
		}
		m.applySettings(c)
		m.cfg = c
		m.store = NewStore(m.eng, c.Dir, c.Debounce.D(), m.log)
		return nil
	}
	m.cfg = c
	m.labels = withConfigLabels(m.env, c.Devices)
	var hook func(webhook.Config) (message.Sink, error)
	if w, ok := m.env.(WebhookEnv); ok {
		hook = w.Webhook
	}
	m.eng = New(Options{
		Env: m.labels, Webhook: hook, Partitions: c.Partitions, Log: m.log, Metrics: m.set,
		Tick: c.WindowTick.D(), Idle: c.IdleTimeout.D(), MaxHops: c.MaxHops, DeviceID: c.DeviceIDFunc(), Selectors: c.Selectors(),
	})
	m.eng.SetCheckpointDir(c.StateDir)
	m.store = NewStore(m.eng, c.Dir, c.Debounce.D(), m.log)
	m.set.GetOrCreateGauge("outpost_rules_rejected_files", func() float64 {
		m.mu.Lock()
		s := m.store
		m.mu.Unlock()
		if s == nil {
			return 0
		}
		return float64(s.Rejected())
	})
	return nil
}

// applySettings sets everything of c that lives in the engine; the caller
// holds m.mu. Rollout selectors are compiled into rules: the caller
// recompiles them when they changed.
func (m *Module) applySettings(c Config) {
	m.labels.set(c.Devices)
	m.eng.SetIdle(c.IdleTimeout.D())
	m.eng.SetMaxHops(c.MaxHops)
	m.eng.SetDeviceID(c.DeviceIDFunc())
	m.eng.SetSelectors(c.Selectors())
	m.eng.SetTick(c.WindowTick.D())
	m.eng.SetPartitions(c.Partitions)
	m.eng.SetCheckpointDir(c.StateDir)
}

// Start restores window state, loads the rule directory, starts watching
// it and starts the window timer. Rule errors do not fail Start (the
// module reports degraded health); an unreadable directory does.
func (m *Module) Start(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.eng == nil {
		return errors.New("rules: Start before Init")
	}
	if m.cfg.StateDir != "" {
		if err := m.eng.LoadState(m.cfg.StateDir); err != nil {
			m.log.Warn("rule state not restored", "module", "rules", "err", err)
		}
	}
	if m.cfg.Dir != "" {
		if err := os.MkdirAll(m.cfg.Dir, 0o755); err != nil {
			return fmt.Errorf("rules: dir: %w", err)
		}
	}
	if err := m.store.Reload(); err != nil {
		var el parser.ErrorList
		if !errors.As(err, &el) {
			return err // the directory is unreadable
		}
		m.log.Warn("some rules were rejected", "module", "rules", "err", err)
	}
	if err := m.store.Watch(); err != nil {
		return err
	}
	m.eng.Start(ctx)
	m.started = true
	return nil
}

// Stop stops the watcher and the timer, closes webhook sinks and saves
// window state to state_dir.
func (m *Module) Stop(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.started {
		return nil
	}
	m.started = false
	var errs []error
	if err := m.store.Close(); err != nil {
		errs = append(errs, err)
	}
	if err := m.eng.Stop(ctx); err != nil {
		errs = append(errs, err)
	}
	if m.cfg.StateDir != "" {
		if err := m.eng.SaveState(m.cfg.StateDir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Health is degraded while a rule file is rejected.
func (m *Module) Health() module.Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.started {
		return module.Status{State: module.StateStopped}
	}
	var bad []string
	for _, f := range m.store.Status() {
		if len(f.Errors) > 0 {
			bad = append(bad, f.File)
		}
	}
	if len(bad) > 0 {
		return module.Status{State: module.StateDegraded, Detail: "rejected rule files: " + strings.Join(bad, ", ")}
	}
	return module.Status{State: module.StateReady, Detail: fmt.Sprintf("%d rules", len(m.eng.Rules()))}
}

// Engine returns the engine (for the pipeline: Process or Sink()).
func (m *Module) Engine() *Engine {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.eng
}

// Store returns the rule store.
func (m *Module) Store() *Store {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.store
}

// RegisterHTTP adds /api/v1/rules to mux (after Init).
func (m *Module) RegisterHTTP(mux *http.ServeMux) {
	mux.HandleFunc("/api/v1/rules", m.proxy)
	mux.HandleFunc("/api/v1/rules/", m.proxy)
}

// proxy dispatches to the current store (which Reconfigure may replace).
func (m *Module) proxy(w http.ResponseWriter, r *http.Request) {
	s := m.Store()
	if s == nil {
		http.Error(w, "rules: not initialised", http.StatusServiceUnavailable)
		return
	}
	mux := http.NewServeMux()
	s.RegisterHTTP(mux)
	mux.ServeHTTP(w, r)
}

// Reconfigure applies a changed section to the running engine, without a
// gap or a duplicate: labels, idle_timeout, max_hops, device_id_from,
// window_tick and partitions apply from the next message or tick; changed
// rollouts recompile the loaded rules (same names and versions, so window
// and device state carry over); a changed dir or debounce moves the rule
// store to the new directory (its rules replace the old directory's, with
// state carried over per Reload semantics) and watches it; state_dir is
// used at the next stop. A new dir that cannot be read is refused and the
// old one stays.
func (m *Module) Reconfigure(ctx context.Context, pc *Config) error {
	c := *pc
	m.mu.Lock()
	if !m.started {
		m.mu.Unlock()
		return m.Init(ctx, &c)
	}
	defer m.mu.Unlock()
	old := m.cfg
	if old.Dir != c.Dir || old.Debounce != c.Debounce {
		ns := NewStore(m.eng, c.Dir, c.Debounce.D(), m.log)
		if c.Dir != "" {
			if err := os.MkdirAll(c.Dir, 0o755); err != nil {
				return fmt.Errorf("rules: dir: %w", err)
			}
		} else {
			ns.mem = m.store.memSources()
		}
		// the selectors first, so the new store compiles with them
		m.applySettings(c)
		if err := ns.Reload(); err != nil {
			var el parser.ErrorList
			if !errors.As(err, &el) {
				m.eng.SetSelectors(old.Selectors())
				return err // unreadable: nothing was applied, the old store stays
			}
			m.log.Warn("some rules were rejected", "module", "rules", "err", err)
		}
		if err := m.store.Close(); err != nil {
			m.log.Warn("rules: closing the old directory watch", "module", "rules", "err", err)
		}
		m.store = ns
		m.cfg = c
		return ns.Watch()
	}
	m.applySettings(c)
	m.cfg = c
	if !reflect.DeepEqual(old.Selectors(), c.Selectors()) {
		if err := m.store.Recompile(); err != nil {
			var el parser.ErrorList
			if !errors.As(err, &el) {
				return err
			}
			m.log.Warn("some rules were rejected", "module", "rules", "err", err)
		}
	}
	return nil
}
