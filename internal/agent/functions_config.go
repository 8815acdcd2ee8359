package agent

import (
	"errors"
	"path/filepath"
	"time"

	"github.com/outpost-edge/outpost/internal/config"
	"github.com/outpost-edge/outpost/internal/pipeline"
)

// FunctionsConfig is the functions section: WebAssembly functions loaded
// from a watched directory (docs/functions.md). The runtime is linked only
// into binaries built with -tags functions (it adds 2.7 MB to the stripped
// binary); a binary without it refuses an enabled section.
type FunctionsConfig struct {
	Enabled bool `yaml:"enabled"`
	// Dir holds one subdirectory per function version. Default
	// DATA_DIR/functions.
	Dir string `yaml:"dir"`
	// CacheDir keeps compiled code across restarts. Default
	// DATA_DIR/functions-cache.
	CacheDir string `yaml:"cache_dir"`
	// StateDir keeps the functions' per-device state (NAME.state), fsynced
	// before the input that changed it is acknowledged. Default
	// DATA_DIR/functions-state.
	StateDir string `yaml:"state_dir"`
	// TrustRoot is the pinned TUF root.json whose targets role signs
	// functions (the release root; default ota.root).
	TrustRoot string `yaml:"trust_root"`
	// TUF verifies functions through the TUF chain (timestamp, snapshot,
	// targets) published into DIR/.tuf, refusing rolled-back metadata,
	// instead of per-function targets.json. Needs trust_root.
	TUF bool `yaml:"tuf"`
	// AllowUnsigned loads functions without targets.json (development).
	AllowUnsigned bool `yaml:"allow_unsigned"`
	// Watch is how often Dir is checked for changes. Default 2s.
	Watch config.Duration `yaml:"watch"`
	// Warm is how many instances of each version are created at load,
	// so the first message does not pay the cold start. Default 1.
	Warm int `yaml:"warm"`
}

func (f *FunctionsConfig) setDefaults(c *Config) {
	if f.Dir == "" {
		f.Dir = filepath.Join(c.DataDir, "functions")
	}
	if f.CacheDir == "" {
		f.CacheDir = filepath.Join(c.DataDir, "functions-cache")
	}
	if f.StateDir == "" {
		f.StateDir = filepath.Join(c.DataDir, "functions-state")
	}
	if f.TrustRoot == "" {
		f.TrustRoot = c.OTA.Root
	}
	if f.Watch == 0 {
		f.Watch = config.Duration(2 * time.Second)
	}
	if f.Warm == 0 {
		f.Warm = 1
	}
}

func (f *FunctionsConfig) validate() error {
	if !f.Enabled {
		return nil
	}
	var errs []error
	if !functionsBuilt {
		errs = append(errs, config.Field("enabled", "this outpost binary was built without WebAssembly functions (build it with -tags functions)"))
	}
	if f.TrustRoot == "" && !f.AllowUnsigned {
		errs = append(errs, config.Field("trust_root", "required (the release root.json that signs functions) unless allow_unsigned: true"))
	}
	if f.TUF && f.TrustRoot == "" {
		errs = append(errs, config.Field("tuf", "needs trust_root (the root.json the function repository is pinned to)"))
	}
	if f.Watch.D() < 10*time.Millisecond {
		errs = append(errs, config.Field("watch", "at least 10ms"))
	}
	if f.Warm < 0 || f.Warm > 1024 {
		errs = append(errs, config.Field("warm", "between 0 and 1024"))
	}
	return errors.Join(errs...)
}

func (c *Config) functionsOn() bool { return c.Functions != nil && c.Functions.Enabled }

// FunctionsSink is the pipeline sink of the functions' triggers. When no
// route names it, every message goes to it (each trigger's filter picks).
const FunctionsSink = "functions"

// implicitRoute adds "everything to sink" unless a route names the sink.
func implicitRoute(routes []pipeline.Route, sink string) []pipeline.Route {
	for _, r := range routes {
		for _, t := range r.To {
			if t == sink {
				return routes
			}
		}
	}
	return append(append([]pipeline.Route(nil), routes...), pipeline.Route{Name: sink, From: []string{"#"}, To: []string{sink}})
}
