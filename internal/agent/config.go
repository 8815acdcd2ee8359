package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"strings"
	"sync"

	"github.com/outpost-edge/outpost/internal/broker"
	"github.com/outpost-edge/outpost/internal/config"
	"github.com/outpost-edge/outpost/internal/fleet/client"
	"github.com/outpost-edge/outpost/internal/netpol"
	"github.com/outpost-edge/outpost/internal/ota"
	"github.com/outpost-edge/outpost/internal/pipeline"
	"github.com/outpost-edge/outpost/internal/rules"
	"github.com/outpost-edge/outpost/internal/supervisor"
	"github.com/outpost-edge/outpost/internal/telemetry"
	"github.com/outpost-edge/outpost/internal/uplink"
)

// Config is the whole outpost.yaml.
type Config struct {
	// NodeID names this gateway (uplink topics, fleet). Default: hostname.
	NodeID string `yaml:"node_id"`
	// DataDir holds the broker store, queues and state. Default ./data.
	DataDir   string              `yaml:"data_dir"`
	Log       telemetry.LogConfig `yaml:"log"`
	Runtime   Runtime             `yaml:"runtime"`
	Telemetry telemetry.Config    `yaml:"telemetry"`
	Broker    broker.Config       `yaml:"broker"`
	Pipeline  pipeline.Config     `yaml:"pipeline"`
	// Rules enables the rule engine when present.
	Rules *rules.Config `yaml:"rules"`
	// OTA is the self-updater (docs/ota.md).
	OTA ota.Config `yaml:"ota"`
	// Supervisor runs components (docs/components.md) when present.
	Supervisor *supervisor.Config `yaml:"supervisor"`
	// Uplink forwards lanes of durable queues to a cloud broker when present
	// and enabled (docs/uplink.md).
	Uplink *uplink.Config `yaml:"uplink"`
	// Fleet keeps the gateway in sync with outpost-server when present
	// (docs/fleet.md).
	Fleet *client.Config `yaml:"fleet"`
	// Functions runs WebAssembly functions when present and enabled
	// (docs/functions.md).
	Functions *FunctionsConfig `yaml:"functions"`
	// Netpol filters ingress traffic on the gateway's interfaces with eBPF
	// (XDP) or nftables when present (docs/netpol.md).
	Netpol *netpol.Config `yaml:"netpol"`

	// baseDir is the directory of the config file: relative paths in the
	// file resolve against it (config.ResolvePaths), not against the working
	// directory. Empty for configs parsed from bytes (Parse).
	baseDir string
}

// uplinkOn reports whether the uplink and its lanes are configured.
func (c *Config) uplinkOn() bool { return c.Uplink != nil && c.Uplink.Enabled }

// Runtime are Go runtime knobs, applied at start and on reload.
type Runtime struct {
	// MemoryLimit is a soft limit for the Go heap (debug.SetMemoryLimit);
	// 0 = none. Example: 64MiB.
	MemoryLimit config.Size `yaml:"memory_limit"`
	// GCPercent is GOGC (debug.SetGCPercent); 0 = default 100, -1 = off
	// (only sensible with memory_limit).
	GCPercent int `yaml:"gc_percent"`
	// MaxProcs is GOMAXPROCS; 0 = number of CPUs.
	MaxProcs int `yaml:"max_procs"`
}

// SetDefaults fills zero values everywhere.
func (c *Config) SetDefaults() {
	if c.NodeID == "" {
		if h, err := os.Hostname(); err == nil {
			c.NodeID = h
		} else {
			c.NodeID = "outpost"
		}
	}
	if c.DataDir == "" {
		c.DataDir = "data"
	}
	c.Log.SetDefaults()
	c.Telemetry.SetDefaults()
	c.Broker.SetDefaults()
	c.Pipeline.SetDefaults()
	c.OTA.SetDefaults()
	if c.Uplink != nil {
		if c.Uplink.NodeID == "" {
			c.Uplink.NodeID = c.NodeID
		}
		c.Uplink.SetDefaults()
		uplink.SetLaneDefaults(c.DataDir, c.Uplink.Lanes)
	}
	if c.Supervisor != nil {
		if c.Supervisor.StateDir == "" {
			c.Supervisor.StateDir = filepath.Join(c.DataDir, "components")
		}
		if c.Supervisor.LogDir == "" {
			c.Supervisor.LogDir = filepath.Join(c.DataDir, "components", "logs")
		}
		c.Supervisor.SetDefaults()
	}
	if c.Netpol != nil {
		c.Netpol.SetDefaults()
	}
	if c.Functions != nil {
		c.Functions.setDefaults(c)
	}
	if c.Fleet != nil {
		c.Fleet.SetDefaults()
		if c.Fleet.Dir == "" {
			c.Fleet.Dir = filepath.Join(c.DataDir, "fleet")
		}
	}
	if c.Rules != nil {
		c.Rules.SetDefaults()
		if c.Rules.StateDir == "" {
			c.Rules.StateDir = filepath.Join(c.DataDir, "rules-state")
		}
	}
	config.ResolvePaths(c, c.baseDir)
}

// Validate checks the whole file; every problem is reported.
func (c *Config) Validate() error {
	var errs []error
	if !config.IsName(c.NodeID, 128, "_.-") {
		errs = append(errs, config.Field("node_id", "%q must be 1-128 letters, digits, _ . - (it becomes an MQTT topic level)", c.NodeID))
	}
	if c.Runtime.MemoryLimit < 0 || (c.Runtime.MemoryLimit > 0 && c.Runtime.MemoryLimit < 8<<20) {
		errs = append(errs, config.Field("runtime.memory_limit", "must be 0 (none) or at least 8MiB"))
	}
	if c.Runtime.GCPercent < -1 || c.Runtime.GCPercent > 10000 {
		errs = append(errs, config.Field("runtime.gc_percent", "must be -1 (off), 0 (default) or 1..10000"))
	}
	if c.Runtime.GCPercent == -1 && c.Runtime.MemoryLimit == 0 {
		errs = append(errs, config.Field("runtime.gc_percent", "gc_percent -1 turns the GC off; set memory_limit too or memory grows without bound"))
	}
	if c.Runtime.MaxProcs < 0 || c.Runtime.MaxProcs > 1024 {
		errs = append(errs, config.Field("runtime.max_procs", "must be between 0 (all CPUs) and 1024"))
	}
	errs = append(errs,
		config.Section("log", c.Log.Validate()),
		config.Section("telemetry", c.Telemetry.Validate()),
		config.Section("broker", c.Broker.Validate()),
		config.Section("pipeline", c.Pipeline.Validate(c.moduleSinks()...)),
		config.Section("ota", c.OTA.Validate()),
	)
	if c.Rules != nil {
		errs = append(errs, config.Section("rules", c.Rules.Validate()))
	}
	if c.Netpol != nil {
		errs = append(errs, config.Section("netpol", c.Netpol.Validate()))
	}
	if c.Fleet != nil {
		errs = append(errs, config.Section("fleet", c.Fleet.Validate()))
	}
	if c.Uplink != nil {
		errs = append(errs, config.Section("uplink", c.Uplink.Validate()), config.Section("uplink", uplink.ValidateLaneQueues(c.Uplink.Lanes)))
	}
	if c.Functions != nil {
		errs = append(errs, config.Section("functions", c.Functions.validate()))
	}
	if c.Supervisor != nil {
		errs = append(errs, config.Section("supervisor", c.Supervisor.Validate()))
		if !c.hasUnixListener() {
			errs = append(errs, config.Field("broker.listeners", "the supervisor gives components credentials on a unix listener; add one (type: unix, path: /run/outpost/mqtt.sock)"))
		}
	}
	return errors.Join(errs...)
}

func (c *Config) hasUnixListener() bool {
	for _, l := range c.Broker.Listeners {
		if l.Type == broker.TypeUnix {
			return true
		}
	}
	return false
}

// moduleSinks are the sink names modules add to the pipeline.
func (c *Config) moduleSinks() []string {
	var s []string
	if c.Rules != nil {
		s = append(s, RulesSink)
	}
	if c.functionsOn() {
		s = append(s, FunctionsSink)
	}
	if c.uplinkOn() {
		for _, l := range c.Uplink.Lanes {
			s = append(s, LaneSinkPrefix+l.Name)
		}
	}
	return s
}

// RulesSink is the pipeline sink name of the rule engine; routes may name it
// to feed the engine a subset of topics. When no route names it, every
// message goes to the engine (its own FROM index picks what it needs).
const RulesSink = "rules"

// Load reads, strictly decodes, defaults and validates a config file.
//
// Relative paths in the file (data_dir, dir, path and every *_dir and
// *_file key) are resolved against the directory of the file.
func Load(path string) (*Config, error) {
	var c Config
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c.baseDir = filepath.Dir(abs)
	if err := config.Load(path, &c, config.Options{}); err != nil {
		return nil, err
	}
	return &c, nil
}

// Parse is Load for bytes (tests, `outpost init`'s self-check).
func Parse(name string, data []byte, env []string) (*Config, error) {
	var c Config
	if err := config.Parse(name, data, &c, config.Options{Environ: env}); err != nil {
		return nil, err
	}
	return &c, nil
}

// Redacted returns a copy of c as a generic tree with every secret replaced
// by "REDACTED": any field whose key contains password, secret, token or
// key (private keys, password hashes, API tokens). Used by /api/v1/config
// and `outpost diag`.
func Redacted(c *Config) any {
	return redact(reflect.ValueOf(c), "")
}

var secretKey = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`(?i)(password|secret|token|private|_key$|^key$|key_file|hash|credential)`)
})

func redact(v reflect.Value, key string) any {
	for v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface {
		if v.IsNil() {
			return nil
		}
		v = v.Elem()
	}
	if key != "" && secretKey().MatchString(key) && !v.IsZero() {
		return "REDACTED"
	}
	switch v.Kind() {
	case reflect.Struct:
		out := map[string]any{}
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "-" {
				continue
			}
			if name == "" {
				name = strings.ToLower(f.Name)
			}
			if m, ok := v.Field(i).Interface().(fmt.Stringer); ok && isScalarStringer(v.Field(i)) {
				out[name] = m.String()
				continue
			}
			out[name] = redact(v.Field(i), name)
		}
		return out
	case reflect.Slice, reflect.Array:
		if v.Type().Elem().Kind() == reflect.Uint8 {
			return fmt.Sprintf("%d bytes", v.Len())
		}
		out := make([]any, v.Len())
		for i := range out {
			out[i] = redact(v.Index(i), key)
		}
		return out
	case reflect.Map:
		out := map[string]any{}
		for _, k := range v.MapKeys() {
			ks := fmt.Sprint(k.Interface())
			out[ks] = redact(v.MapIndex(k), ks)
		}
		return out
	default:
		return v.Interface()
	}
}

func isScalarStringer(v reflect.Value) bool {
	switch v.Kind() {
	case reflect.Int64, reflect.Int, reflect.Uint64:
		return true
	}
	return false
}

// applyRuntime sets the Go runtime knobs.
func applyRuntime(r Runtime) {
	if r.MemoryLimit > 0 {
		setMemoryLimit(int64(r.MemoryLimit))
	} else {
		setMemoryLimit(-1)
	}
	gc := r.GCPercent
	if gc == 0 {
		gc = 100
	}
	setGCPercent(gc)
	if r.MaxProcs > 0 {
		runtime.GOMAXPROCS(r.MaxProcs)
	}
}
