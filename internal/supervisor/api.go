package supervisor

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/internal/config"
)

// Identity issues per-component MQTT credentials on the local broker. The
// integrator implements it on the embedded broker's Unix-socket listener.
//
// Issue replaces any credentials the component had (rotation on every
// start): the old password must stop working and the old sessions should be
// disconnected. The user must be limited to publishing and subscribing
// within components/<name>/# plus the filters in acl (a subscription filter
// is allowed only when every topic it can match is allowed, so wildcards do
// not widen access). Revoke removes the credentials and disconnects the
// sessions. Credentials are secrets: implementations must not log them.
type Identity interface {
	Issue(ctx context.Context, component string, acl Access) (Credentials, error)
	Revoke(component string)
}

// Access lists the topic filters a component requested in its recipe, on
// top of its own namespace.
type Access struct {
	Publish   []string
	Subscribe []string
}

// Credentials are what a component needs to connect to the local bus. URL
// is "unix:///path/to/socket" for the Unix-socket listener (TCP URLs such as
// "mqtt://127.0.0.1:1883" work too).
type Credentials struct {
	URL      string
	Username string
	Password string
}

// Publisher publishes on the local bus (component state, retained).
type Publisher interface {
	Publish(topic string, payload []byte, retain bool, qos byte) error
}

// Subscriber subscribes on the local bus with the agent's own (unrestricted)
// client; used for MQTT heartbeat health checks. cancel removes the
// subscription.
type Subscriber interface {
	Subscribe(filter string, fn func(topic string, payload []byte)) (cancel func(), err error)
}

// ComponentNamespace returns the topic filter every component may use.
func ComponentNamespace(name string) string { return "components/" + name + "/#" }

// StateTopic is where a component's state is published (retained).
func StateTopic(name string) string { return "outpost/local/components/" + name + "/state" }

// Environment variables a component receives.
const (
	EnvMQTTURL      = "OUTPOST_MQTT_URL"
	EnvMQTTUsername = "OUTPOST_MQTT_USERNAME"
	EnvMQTTPassword = "OUTPOST_MQTT_PASSWORD"
	EnvName         = "OUTPOST_COMPONENT_NAME"
	EnvVersion      = "OUTPOST_COMPONENT_VERSION"
	EnvArtifactsDir = "OUTPOST_ARTIFACTS_DIR"
	EnvDataDir      = "OUTPOST_DATA_DIR"
	EnvConfigFile   = "OUTPOST_CONFIG_FILE"
	EnvConfig       = "OUTPOST_CONFIG"
	EnvTopicPrefix  = "OUTPOST_TOPIC_PREFIX"
)

// Config is the supervisor's section of the agent config ("supervisor:").
// Zero values are the documented defaults (SetDefaults fills them).
type Config struct {
	// RecipesDir holds the recipe files (*.yaml, *.yml), watched for changes.
	RecipesDir string `yaml:"recipes_dir"` // default /etc/outpost/components
	// StateDir holds per-component state: artifacts, data, config, pid files.
	StateDir string `yaml:"state_dir"` // default /var/lib/outpost/components
	// LogDir holds one log file per component, <name>.log, rotated.
	LogDir string       `yaml:"log_dir"` // default /var/log/outpost/components
	Log    LogConfig    `yaml:"log"`
	Cgroup CgroupConfig `yaml:"cgroup"`
	// GracePeriod is the time between SIGTERM and SIGKILL on stop.
	GracePeriod config.Duration `yaml:"grace_period"` // default 10s
	// Watch reloads recipes when files in RecipesDir change.
	Watch *bool `yaml:"watch"` // default true
	// Overrides adjust components without editing their recipes.
	Overrides map[string]Override `yaml:"overrides"`
	// Containers configures kind: container components.
	Containers ContainersConfig `yaml:"containers"`
}

// LogConfig is the component log rotation.
type LogConfig struct {
	MaxSize  config.Size `yaml:"max_size"`  // default 10MiB per file
	MaxFiles int         `yaml:"max_files"` // default 3 (current + 2 rotated)
}

// CgroupConfig chooses the cgroup layout.
type CgroupConfig struct {
	Mode   string `yaml:"mode"`   // auto (default), v2, v1 or none
	Root   string `yaml:"root"`   // where hierarchies are mounted, default /sys/fs/cgroup
	Parent string `yaml:"parent"` // default "outpost": groups are <hierarchy>/outpost/<name>
}

// Override changes one component's settings from the agent config.
type Override struct {
	// Configuration is merged over the recipe's configuration document
	// (JSON merge patch, RFC 7396: a null value deletes a key).
	Configuration map[string]any `yaml:"configuration"`
	// Env is added to (and overrides) the recipe's env.
	Env map[string]string `yaml:"env"`
	// Disabled keeps the component stopped.
	Disabled bool `yaml:"disabled"`
}

// SetDefaults fills zero values with defaults.
func (c *Config) SetDefaults() {
	c.Containers.setDefaults()
	if c.RecipesDir == "" {
		c.RecipesDir = "/etc/outpost/components"
	}
	if c.StateDir == "" {
		c.StateDir = "/var/lib/outpost/components"
	}
	if c.LogDir == "" {
		c.LogDir = "/var/log/outpost/components"
	}
	if c.Log.MaxSize == 0 {
		c.Log.MaxSize = 10 << 20
	}
	if c.Log.MaxFiles == 0 {
		c.Log.MaxFiles = 3
	}
	if c.Cgroup.Mode == "" {
		c.Cgroup.Mode = "auto"
	}
	if c.Cgroup.Parent == "" {
		c.Cgroup.Parent = "outpost"
	}
	if c.Cgroup.Root == "" {
		c.Cgroup.Root = "/sys/fs/cgroup"
	}
	if c.GracePeriod == 0 {
		c.GracePeriod = config.Duration(10 * time.Second)
	}
	if c.Watch == nil {
		t := true
		c.Watch = &t
	}
}

// Validate reports every problem, each prefixed with its YAML path.
func (c Config) Validate() error {
	var errs []error
	bad := func(path, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", path, fmt.Sprintf(format, args...)))
	}
	for _, d := range []struct{ path, v string }{{"recipes_dir", c.RecipesDir}, {"state_dir", c.StateDir}, {"log_dir", c.LogDir}} {
		if d.v == "" {
			bad(d.path, "required")
		}
	}
	if c.Log.MaxSize < 0 {
		bad("log.max_size", "must not be negative")
	}
	if c.Log.MaxFiles < 0 || c.Log.MaxFiles > 100 {
		bad("log.max_files", "must be between 1 and 100")
	}
	switch c.Cgroup.Mode {
	case "", "auto", "v1", "v2", "none":
	default:
		bad("cgroup.mode", "must be auto, v2, v1 or none, got %q", c.Cgroup.Mode)
	}
	if strings.Contains(c.Cgroup.Parent, "..") || strings.HasPrefix(c.Cgroup.Parent, "/") {
		bad("cgroup.parent", "must be a relative path without '..'")
	}
	if c.Cgroup.Root != "" && !strings.HasPrefix(c.Cgroup.Root, "/") {
		bad("cgroup.root", "must be an absolute path")
	}
	if c.GracePeriod < 0 {
		bad("grace_period", "must not be negative")
	}
	for name := range c.Overrides {
		if !validName(name) {
			bad("overrides."+name, "not a valid component name")
		}
	}
	errs = append(errs, c.Containers.validate()...)
	return errors.Join(errs...)
}
