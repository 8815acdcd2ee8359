package recipe

import (
	"fmt"
	"strings"
	"time"
)

// Defaults of the health check and restart policy.
const (
	DefaultHealthInterval      = 10 * time.Second
	DefaultHealthTimeout       = 5 * time.Second
	DefaultFailureThreshold    = 3
	DefaultHealthStartInterval = 250 * time.Millisecond
	DefaultHealthStartPeriod   = 30 * time.Second
	DefaultInitialBackoff      = time.Second
	DefaultMaxBackoff          = time.Minute
	DefaultMultiplier          = 2.0
	DefaultJitter              = 0.2
	DefaultMaxRestarts         = 5
	DefaultRestartWindow       = 5 * time.Minute
)

// validate checks cross-field rules and fills defaults. It runs only when
// decoding found no error.
func (d *decoder) validate() {
	r := d.r
	errAt := func(path string, format string, args ...any) {
		d.errs = append(d.errs, r.ErrorAt(path, fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))))
	}
	switch r.Kind {
	case "":
		r.Kind = KindNative
	case KindNative, KindContainer:
	default:
		errAt("kind", "kind %q is not supported (supported: native, container)", r.Kind)
	}
	if r.Kind == KindContainer {
		d.validateContainer(errAt)
	} else {
		if r.Container != nil {
			errAt("container", "container needs kind: container")
		}
		for i, a := range r.Artifacts {
			if a.Image {
				errAt(fmt.Sprintf("artifacts[%d].image", i), "image archives are for kind: container")
			}
		}
	}

	l := &r.Lifecycle
	switch {
	case r.Kind == KindContainer:
	case l.Run == nil && l.Startup == nil:
		errAt("lifecycle", "lifecycle needs run (a long-running process) or startup (a one-shot step)")
	case l.Run != nil && l.Startup != nil:
		errAt("lifecycle", "lifecycle has either run or startup, not both")
	}
	if l.Install != nil && l.Install.Timeout == 0 {
		l.Install.Timeout = DefaultInstallTimeout
	}
	if l.Startup != nil && l.Startup.Timeout == 0 {
		l.Startup.Timeout = DefaultStartupTimeout
	}
	if l.Shutdown != nil && l.Shutdown.Timeout == 0 {
		l.Shutdown.Timeout = DefaultShutdownTimeout
	}

	seen := map[string]bool{}
	for i, dep := range r.DependsOn {
		p := fmt.Sprintf("depends_on[%d]", i)
		if dep.Name == r.Name {
			errAt(p, "a component cannot depend on itself")
		}
		if seen[dep.Name] {
			errAt(p, "%q is listed twice", dep.Name)
		}
		seen[dep.Name] = true
	}

	for k := range r.Env {
		p := "env." + k
		switch {
		case k == "" || strings.ContainsAny(k, "=\x00"):
			errAt(p, "invalid environment variable name %q", k)
		case strings.HasPrefix(k, "OUTPOST_"):
			errAt(p, "names starting with OUTPOST_ are reserved for the supervisor")
		}
		if strings.IndexByte(r.Env[k], 0) >= 0 {
			errAt(p, "NUL byte in value")
		}
	}
	for _, f := range []struct{ path, v string }{{"user", r.User}, {"group", r.Group}, {"working_dir", r.WorkingDir}} {
		if strings.IndexByte(f.v, 0) >= 0 {
			errAt(f.path, "NUL byte in value")
		}
	}
	if r.Group != "" && r.User == "" {
		errAt("group", "group needs user")
	}

	if h := r.Health; h != nil {
		if h.Interval == 0 {
			h.Interval = DefaultHealthInterval
		}
		if h.Timeout == 0 {
			h.Timeout = min(DefaultHealthTimeout, h.Interval)
		}
		if h.Timeout > h.Interval {
			errAt("health.timeout", "timeout (%s) must not exceed interval (%s)", h.Timeout, h.Interval)
		}
		if h.FailureThreshold == 0 {
			h.FailureThreshold = DefaultFailureThreshold
		}
		if h.StartInterval == 0 {
			h.StartInterval = min(DefaultHealthStartInterval, h.Interval)
		}
		if _, set := r.pos["health.start_period"]; !set {
			h.StartPeriod = DefaultHealthStartPeriod
		}
		if h.Exec != nil && h.Exec.Timeout != 0 {
			errAt("health.exec.timeout", "set health.timeout instead")
		}
	}

	rs := &r.Restart
	if rs.Policy == "" {
		rs.Policy = OnFailure
	}
	if rs.InitialBackoff == 0 {
		rs.InitialBackoff = DefaultInitialBackoff
	}
	if rs.MaxBackoff == 0 {
		rs.MaxBackoff = max(DefaultMaxBackoff, rs.InitialBackoff)
	}
	if rs.MaxBackoff < rs.InitialBackoff {
		errAt("restart.max_backoff", "max_backoff (%s) is below initial_backoff (%s)", rs.MaxBackoff, rs.InitialBackoff)
	}
	if rs.Multiplier == 0 {
		rs.Multiplier = DefaultMultiplier
	}
	if _, set := r.pos["restart.jitter"]; !set {
		rs.Jitter = DefaultJitter
	}
	if rs.MaxRestarts == 0 {
		rs.MaxRestarts = DefaultMaxRestarts
	}
	if rs.Window == 0 {
		rs.Window = DefaultRestartWindow
	}
}

// Dependencies returns the names of r's dependencies of the given type
// ("" for all).
func (r *Recipe) Dependencies(t DepType) []string {
	var out []string
	for _, d := range r.DependsOn {
		if t == "" || d.Type == t {
			out = append(out, d.Name)
		}
	}
	return out
}
