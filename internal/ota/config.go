package ota

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/outpost-edge/outpost/internal/buildinfo"
	"github.com/outpost-edge/outpost/internal/config"
)

// Config is the `ota:` section of outpost.yaml. Zero values are the
// documented defaults, filled by SetDefaults.
type Config struct {
	// Enabled turns the updater on. Boot is a no-op when false.
	Enabled bool `yaml:"enabled"`
	// URL is the repository base URL; metadata is read from URL/metadata/
	// and targets from URL/targets/.
	URL string `yaml:"url"`
	// Root is the pinned root.json shipped with the device (the trust
	// anchor). Required when enabled.
	Root string `yaml:"root"`
	// CAFile is a PEM CA certificate trusted for the repository's HTTPS in
	// addition to the system roots (an outpost-server hosting the
	// repository: its fleet CA, DATA_DIR/fleet/ca.pem). Optional.
	CAFile string `yaml:"ca_file"`
	// Platform selects targets; default this binary's GOOS/GOARCH[/vN].
	Platform string `yaml:"platform"`
	// Interval between automatic checks; default 6h. 0 after defaults is
	// impossible; set auto_apply false to only check.
	Interval config.Duration `yaml:"interval"`
	// AutoApply installs a newer version found by an automatic check;
	// default true. Checks on command apply only when asked.
	AutoApply *bool `yaml:"auto_apply"`
	// StagingDir holds downloads and the trusted metadata cache; default
	// /var/lib/outpost/ota.
	StagingDir string `yaml:"staging_dir"`
	// StateFile records the update in progress; default
	// <staging_dir>/state.json.
	StateFile string `yaml:"state_file"`
	// Binary is the executable to replace; default the running one
	// (os.Executable with symlinks resolved).
	Binary string `yaml:"binary"`
	// StartDeadline: a new version must be ready this long after it
	// starts; default 5m (greenboot waits for its health checks, bounded).
	StartDeadline config.Duration `yaml:"start_deadline"`
	// StabilityWindow: after ready, the new version must stay ready this
	// long before it is committed; default 5m.
	StabilityWindow config.Duration `yaml:"stability_window"`
	// MaxAttempts: starts of an uncommitted version before it is rolled
	// back; default 3 (greenboot's boot_counter).
	MaxAttempts int `yaml:"max_attempts"`
	// Delta uses a binary patch when one exists from the running version;
	// default true.
	Delta *bool `yaml:"delta"`
	// Restart selects how the agent restarts into another version:
	// "exec" (re-exec in place, same pid), "exit" (exit with ExitRestart
	// and let the service manager start it again) or "auto" (default:
	// "exit" under systemd, detected by $INVOCATION_ID, else "exec").
	Restart string `yaml:"restart"`
	// Timeouts bound network operations (slow-retrieval defence).
	Timeouts Timeouts `yaml:"timeouts"`
}

// Timeouts bound each network step.
type Timeouts struct {
	// Connect bounds TCP+TLS connection setup; default 15s.
	Connect config.Duration `yaml:"connect"`
	// Response bounds the wait for response headers; default 30s.
	Response config.Duration `yaml:"response"`
	// Metadata bounds one metadata file download; default 60s.
	Metadata config.Duration `yaml:"metadata"`
	// SpeedWindow and MinSpeed: a download that moves fewer than
	// MinSpeed bytes/s averaged over SpeedWindow is aborted (slow
	// retrieval); defaults 60s and 1KiB.
	SpeedWindow config.Duration `yaml:"speed_window"`
	MinSpeed    config.Size     `yaml:"min_speed"`
	// Retries of an interrupted download within one apply (each resumes
	// with Range); default 5.
	Retries int `yaml:"retries"`
}

// SetDefaults fills zero fields with defaults.
func (c *Config) SetDefaults() {
	if c.Platform == "" {
		c.Platform = buildinfo.Platform()
	}
	if c.Interval == 0 {
		c.Interval = config.Duration(6 * time.Hour)
	}
	if c.AutoApply == nil {
		c.AutoApply = ptr(true)
	}
	if c.StagingDir == "" {
		c.StagingDir = "/var/lib/outpost/ota"
	}
	if c.StateFile == "" {
		c.StateFile = filepath.Join(c.StagingDir, "state.json")
	}
	if c.StartDeadline == 0 {
		c.StartDeadline = config.Duration(5 * time.Minute)
	}
	if c.StabilityWindow == 0 {
		c.StabilityWindow = config.Duration(5 * time.Minute)
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 3
	}
	if c.Delta == nil {
		c.Delta = ptr(true)
	}
	if c.Restart == "" {
		c.Restart = "auto"
	}
	t := &c.Timeouts
	if t.Connect == 0 {
		t.Connect = config.Duration(15 * time.Second)
	}
	if t.Response == 0 {
		t.Response = config.Duration(30 * time.Second)
	}
	if t.Metadata == 0 {
		t.Metadata = config.Duration(60 * time.Second)
	}
	if t.SpeedWindow == 0 {
		t.SpeedWindow = config.Duration(60 * time.Second)
	}
	if t.MinSpeed == 0 {
		t.MinSpeed = 1024
	}
	if t.Retries == 0 {
		t.Retries = 5
	}
}

func ptr[T any](v T) *T { return &v }

// caPool returns the system roots plus the PEM certificates in file.
func caPool(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s: no PEM certificate", file)
	}
	return pool, nil
}

// Validate reports every problem, each prefixed with its YAML path.
func (c Config) Validate() error {
	if !c.Enabled {
		return nil
	}
	var errs []error
	bad := func(path string, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %w", path, fmt.Errorf(format, a...)))
	}
	if c.URL == "" {
		bad("url", "required when enabled")
	} else if u, err := url.Parse(c.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		bad("url", "must be an http(s) URL, got %q", c.URL)
	}
	if c.Root == "" {
		bad("root", "required when enabled: the pinned root.json")
	} else if _, err := os.Stat(c.Root); err != nil {
		bad("root", "%v", err)
	}
	if c.CAFile != "" {
		if _, err := caPool(c.CAFile); err != nil {
			bad("ca_file", "%v", err)
		}
	}
	if c.MaxAttempts < 1 {
		bad("max_attempts", "must be >= 1")
	}
	if c.StartDeadline < 0 || c.StabilityWindow < 0 || c.Interval < 0 {
		bad("start_deadline", "durations must be positive")
	}
	switch c.Restart {
	case "", "auto", "exec", "exit":
	default:
		bad("restart", "must be auto, exec or exit, got %q", c.Restart)
	}
	if c.Timeouts.Retries < 0 {
		bad("timeouts.retries", "must be >= 0")
	}
	return errors.Join(errs...)
}
