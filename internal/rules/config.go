package rules

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/outpost-edge/outpost/internal/config"
	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/rules/parser"
)

// Config is the `rules:` section of outpost.yaml.
//
//	rules:
//	  dir: /etc/outpost/rules        # *.sql files, watched ("" = API only, in memory)
//	  state_dir: /var/lib/outpost/rules  # window state snapshot ("" = none)
//	  partitions: 64                 # device lock stripes
//	  debounce: 20ms                 # file event debounce
//	  window_tick: 50ms              # processing-time window check period
//	  idle_timeout: 5s               # event-time windows: advance the watermark after this long without messages (-1s: never)
//	  max_hops: 8                    # a message republished this often is not evaluated (loop guard)
//	  device_id_from: client_id      # or topic_level:2
//	  devices:
//	    - id: sensor-1
//	      labels: {site: plant-2, canary: "true"}
//	  rollouts:                      # YAML form of FOR DEVICES WHERE
//	    - rule: overheat
//	      version: 4
//	      devices: "labels.canary = 'true'"
type Config struct {
	Dir          string          `yaml:"dir"`
	StateDir     string          `yaml:"state_dir"`
	Partitions   int             `yaml:"partitions"`
	Debounce     config.Duration `yaml:"debounce"`
	WindowTick   config.Duration `yaml:"window_tick"`
	IdleTimeout  config.Duration `yaml:"idle_timeout"`
	MaxHops      int             `yaml:"max_hops"`
	DeviceIDFrom string          `yaml:"device_id_from"`
	Devices      []Device        `yaml:"devices"`
	Rollouts     []Rollout       `yaml:"rollouts"`
}

// Rollout restricts a rule version to the devices matching a selector
// (an expression over labels.KEY and deviceid(), as in FOR DEVICES WHERE).
type Rollout struct {
	Rule    string `yaml:"rule"`
	Version int    `yaml:"version"`
	Devices string `yaml:"devices"`
}

// Selectors returns the rollouts keyed by "name@version".
func (c Config) Selectors() map[string]string {
	if len(c.Rollouts) == 0 {
		return nil
	}
	m := make(map[string]string, len(c.Rollouts))
	for _, r := range c.Rollouts {
		v := r.Version
		if v == 0 {
			v = 1
		}
		m[fmt.Sprintf("%s@%d", r.Rule, v)] = r.Devices
	}
	return m
}

// Device declares a device's labels for FOR DEVICES selectors.
type Device struct {
	ID     string            `yaml:"id"`
	Labels map[string]string `yaml:"labels"`
}

// SetDefaults fills zero values: partitions 64, debounce 20ms, window_tick
// 50ms, idle_timeout 5s, max_hops 8, device_id_from client_id.
func (c *Config) SetDefaults() {
	if c.Partitions == 0 {
		c.Partitions = 64
	}
	if c.Debounce == 0 {
		c.Debounce = config.Duration(20 * time.Millisecond)
	}
	if c.WindowTick == 0 {
		c.WindowTick = config.Duration(50 * time.Millisecond)
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = config.Duration(DefaultIdle)
	}
	if c.MaxHops == 0 {
		c.MaxHops = DefaultMaxHops
	}
	if c.DeviceIDFrom == "" {
		c.DeviceIDFrom = "client_id"
	}
}

// Validate reports every problem with its YAML path.
func (c Config) Validate() error {
	var errs []error
	if c.Partitions < 1 || c.Partitions > 4096 {
		errs = append(errs, fmt.Errorf("partitions: %d is not between 1 and 4096", c.Partitions))
	}
	if c.Debounce < 0 || c.Debounce.D() > 10*time.Second {
		errs = append(errs, fmt.Errorf("debounce: %s is not between 0 and 10s", c.Debounce))
	}
	if c.WindowTick < 0 || (c.WindowTick > 0 && c.WindowTick.D() < time.Millisecond) {
		errs = append(errs, fmt.Errorf("window_tick: %s is below 1ms", c.WindowTick))
	}
	if c.MaxHops < 1 || c.MaxHops > 64 {
		errs = append(errs, fmt.Errorf("max_hops: %d is not between 1 and 64", c.MaxHops))
	}
	if _, err := deviceIDFunc(c.DeviceIDFrom); err != nil {
		errs = append(errs, fmt.Errorf("device_id_from: %w", err))
	}
	seen := map[string]int{}
	for i, d := range c.Devices {
		if d.ID == "" {
			errs = append(errs, fmt.Errorf("devices[%d].id: empty", i))
		} else if j, dup := seen[d.ID]; dup {
			errs = append(errs, fmt.Errorf("devices[%d].id: %q already declared at devices[%d]", i, d.ID, j))
		}
		seen[d.ID] = i
		for k := range d.Labels {
			if k == "" {
				errs = append(errs, fmt.Errorf("devices[%d].labels: empty label name", i))
			}
		}
	}
	seenRollout := map[string]int{}
	for i, r := range c.Rollouts {
		if !validRuleName(r.Rule) {
			errs = append(errs, fmt.Errorf("rollouts[%d].rule: %q is not a rule name", i, r.Rule))
		}
		if r.Version < 0 {
			errs = append(errs, fmt.Errorf("rollouts[%d].version: must be positive", i))
		}
		id := fmt.Sprintf("%s@%d", r.Rule, max(r.Version, 1))
		if j, dup := seenRollout[id]; dup {
			errs = append(errs, fmt.Errorf("rollouts[%d]: %s already has a selector at rollouts[%d]", i, id, j))
		}
		seenRollout[id] = i
		if strings.TrimSpace(r.Devices) == "" {
			errs = append(errs, fmt.Errorf("rollouts[%d].devices: empty selector", i))
		} else if _, err := parser.ParseExpr(r.Devices, parser.Pos{Line: 1, Col: 1}); err != nil {
			errs = append(errs, fmt.Errorf("rollouts[%d].devices: %v", i, err))
		}
	}
	return errors.Join(errs...)
}

// DeviceIDFunc returns the function that derives a message's device id
// per device_id_from (client_id, or topic_level:N with N 1-based). The
// pipeline uses it to fill message.DeviceID.
func (c Config) DeviceIDFunc() func(*message.Message) string {
	f, err := deviceIDFunc(c.DeviceIDFrom)
	if err != nil {
		return func(m *message.Message) string { return m.ClientID }
	}
	return f
}

func deviceIDFunc(s string) (func(*message.Message) string, error) {
	switch {
	case s == "" || s == "client_id":
		return func(m *message.Message) string { return m.ClientID }, nil
	case strings.HasPrefix(s, "topic_level:"):
		n, err := strconv.Atoi(strings.TrimPrefix(s, "topic_level:"))
		if err != nil || n < 1 || n > 64 {
			return nil, fmt.Errorf("%q: want topic_level:N with N between 1 and 64", s)
		}
		return func(m *message.Message) string {
			l, _ := topicLevel(m.Topic, n)
			return l
		}, nil
	}
	return nil, fmt.Errorf("%q: want client_id or topic_level:N", s)
}

// labelEnv overlays the devices declared in config on an Env's labels.
// The declared devices are replaced as a whole on a config reload (set),
// while the engine keeps the same Env.
type labelEnv struct {
	Env
	devices atomic.Pointer[map[string]map[string]string]
}

func (l *labelEnv) Labels(id string) map[string]string {
	if m, ok := (*l.devices.Load())[id]; ok {
		return m
	}
	return l.Env.Labels(id)
}

// set replaces the declared devices; the next message sees them.
func (l *labelEnv) set(devs []Device) {
	m := make(map[string]map[string]string, len(devs))
	for _, d := range devs {
		m[d.ID] = d.Labels
	}
	l.devices.Store(&m)
}

func withConfigLabels(env Env, devs []Device) *labelEnv {
	l := &labelEnv{Env: env}
	l.set(devs)
	return l
}
