package recipe

import (
	"time"

	"github.com/outpost-edge/outpost/internal/netpol"
)

// Recipe is one component's declaration, decoded and validated. Defaults
// are filled in by Parse; a Recipe is read-only once returned.
type Recipe struct {
	File        string // the file it was read from (as given to Parse)
	Name        string
	Version     Version
	Description string
	Kind        string     // KindNative (default) or KindContainer
	Container   *Container // kind container only
	DependsOn   []Dependency
	Artifacts   []Artifact
	Lifecycle   Lifecycle
	Env         map[string]string
	User        string // user name or numeric uid; empty: the agent's user
	Group       string // group name or numeric gid; empty: the user's primary group
	WorkingDir  string // relative to the artifacts directory, or absolute
	Health      *Health
	Restart     Restart
	Resources   Resources
	// Configuration is the default configuration document, a JSON-compatible
	// value (maps have string keys). Nil when the recipe has none.
	Configuration map[string]any
	Access        Access
	// Egress is where the component may connect (netpol egress): nil when
	// the recipe has no `egress:` key (unrestricted), else the declared
	// entries (an empty list allows only the local broker).
	Egress []netpol.Egress
	// Hash is the hex SHA-256 of the file's bytes: a recipe whose hash
	// changes is a changed recipe.
	Hash string

	pos map[string]Pos // YAML path -> position of its value
}

// Pos is a position in a recipe file (1-based line and column).
type Pos struct{ Line, Column int }

// Where returns the position of the value at a YAML path ("lifecycle.run",
// "depends_on[1]") or the closest enclosing one that was present.
func (r *Recipe) Where(path string) Pos {
	for {
		if p, ok := r.pos[path]; ok {
			return p
		}
		i := lastSep(path)
		if i < 0 {
			return r.pos[""]
		}
		path = path[:i]
	}
}

func lastSep(p string) int {
	for i := len(p) - 1; i >= 0; i-- {
		if p[i] == '.' || p[i] == '[' {
			return i
		}
	}
	return -1
}

// ErrorAt builds an *Error located at a YAML path of this recipe.
func (r *Recipe) ErrorAt(path string, err error) *Error {
	p := r.Where(path)
	return &Error{File: r.File, Line: p.Line, Column: p.Column, Field: path, Err: err}
}

// DepType says how a dependency constrains its dependent.
type DepType string

const (
	// Hard: the dependent starts only once the dependency is healthy, and is
	// restarted when the dependency restarts.
	Hard DepType = "hard"
	// Soft: the dependent starts after the dependency has been started (or
	// has failed); the dependency's failure never blocks it.
	Soft DepType = "soft"
)

// Dependency is one depends_on entry.
type Dependency struct {
	Name    string
	Type    DepType
	Version Constraint // zero: any version
	Pos     Pos
}

// Artifact is a file the component needs, copied (or downloaded) into its
// versioned artifacts directory at install time.
type Artifact struct {
	Path       string // local file, relative to the recipe's directory or absolute
	URL        string // http(s) URL; SHA256 is then required
	SHA256     string // lower-case hex; verified when set
	Unpack     bool   // unpack a .zip, .tar.gz or .tgz into the artifacts directory
	Executable bool   // set the executable bit on the copied file
	Image      bool   // an image archive (docker-archive or oci-archive tar) loaded into the container runtime
	Pos        Pos
}

// Command is a lifecycle step or an exec health check. Exactly one of
// Script (run by /bin/sh -c) and Exec (argv, run directly) is set.
type Command struct {
	Script  string
	Exec    []string
	Timeout time.Duration // 0: no timeout (run) or the step's default
	Pos     Pos
}

// Argv returns the command line to execute.
func (c *Command) Argv() []string {
	if c.Script != "" {
		return []string{"/bin/sh", "-c", c.Script}
	}
	return append([]string(nil), c.Exec...)
}

// Lifecycle holds the component's steps. Either Run (a long-running
// process) or Startup (a one-shot that starts something and exits) is set;
// Shutdown goes with Startup.
type Lifecycle struct {
	Install  *Command // runs once per version (and install/artifact change)
	Run      *Command
	Startup  *Command
	Shutdown *Command
}

// Default timeouts of one-shot steps.
const (
	DefaultInstallTimeout  = 5 * time.Minute
	DefaultStartupTimeout  = 2 * time.Minute
	DefaultShutdownTimeout = 30 * time.Second
)

// HealthKind is the kind of health check.
type HealthKind string

const (
	HealthExec HealthKind = "exec"
	HealthHTTP HealthKind = "http"
	HealthMQTT HealthKind = "mqtt"
)

// Health is the component's health check.
type Health struct {
	Kind HealthKind
	Exec *Command // HealthExec
	URL  string   // HealthHTTP: GET; a 2xx or 3xx answer is healthy
	// Topic is the MQTT heartbeat topic (HealthMQTT): the component is
	// healthy while a message arrives on it at least once per Interval.
	Topic            string
	Interval         time.Duration // between checks once healthy (default 10s)
	Timeout          time.Duration // per check (default 5s, at most Interval)
	FailureThreshold int           // consecutive failures that make it unhealthy (default 3)
	// StartPeriod is the time after start during which failures do not count
	// until the first success (default 30s; 0 to count from the first
	// check); StartInterval is the check cadence meanwhile (default 250ms, at
	// most Interval).
	StartPeriod   time.Duration
	StartInterval time.Duration
}

// Policy is a restart policy.
type Policy string

const (
	Always    Policy = "always"     // restart after any exit
	OnFailure Policy = "on-failure" // restart after a non-zero exit, a signal or failed health
	Never     Policy = "never"
)

// Restart is the restart policy with its backoff and broken threshold.
type Restart struct {
	Policy         Policy
	InitialBackoff time.Duration // default 1s
	MaxBackoff     time.Duration // default 1m
	Multiplier     float64       // default 2
	Jitter         float64       // fraction 0..1 of the delay, default 0.2
	// A component restarted MaxRestarts times within Window is marked broken
	// (defaults 5 in 5m) and left stopped until restarted by hand or changed.
	MaxRestarts int
	Window      time.Duration
}

// Resources are limits enforced through the component's cgroup. Zero means
// unlimited.
type Resources struct {
	Memory int64   // bytes (swap is not allowed on top of it)
	CPU    float64 // cores, e.g. 0.5
	Pids   int64   // maximum number of processes and threads
}

// Access lists the MQTT topic filters a component may use beyond its own
// namespace components/<name>/#.
type Access struct {
	Publish   []string
	Subscribe []string
}
