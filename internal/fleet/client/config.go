package client

import (
	"fmt"
	"strings"

	"github.com/outpost-edge/outpost/internal/config"
)

// Config is the agent's `fleet:` section. Present = the agent keeps itself
// in sync with the fleet server it was enrolled with (outpost enroll).
//
//	fleet:
//	  dir: /var/lib/outpost/fleet   # identity + cache (default DATA_DIR/fleet)
//	  server: https://fleet.example.com:8443   # default: the enrolled server
//	  reconnect_max: 30s
//	  status_every: 30s   # how often the live figures (message rate, uplink backlog) are checked; sent when changed
type Config struct {
	Dir    string `yaml:"dir"`
	Server string `yaml:"server"`
	// Servers are more replicas of the fleet server, tried in turn when
	// the one in use fails (PostgreSQL mode).
	Servers      []string        `yaml:"servers"`
	ReconnectMax config.Duration `yaml:"reconnect_max"`
	StatusEvery  config.Duration `yaml:"status_every"`
}

// SetDefaults fills the zero values (dir is set by the agent from data_dir).
func (c *Config) SetDefaults() {
	if c.ReconnectMax == 0 {
		c.ReconnectMax = config.Duration(30e9)
	}
	if c.StatusEvery == 0 {
		c.StatusEvery = config.Duration(30e9)
	}
}

// Validate checks the section.
func (c Config) Validate() error {
	if c.Server != "" && !strings.HasPrefix(c.Server, "https://") {
		return config.Field("server", "%q: want https://host:port", c.Server)
	}
	for i, u := range c.Servers {
		if !strings.HasPrefix(u, "https://") {
			return config.Field(fmt.Sprintf("servers[%d]", i), "%q: want https://host:port", u)
		}
	}
	if c.ReconnectMax.D() < 1e9 {
		return config.Field("reconnect_max", "must be at least 1s")
	}
	if c.StatusEvery.D() < 1e9 {
		return config.Field("status_every", "must be at least 1s")
	}
	return nil
}
