package pipeline

import (
	"errors"
	"fmt"

	"github.com/outpost-edge/outpost/internal/config"
	"github.com/outpost-edge/outpost/internal/sink/file"
	"github.com/outpost-edge/outpost/internal/sink/republish"
	"github.com/outpost-edge/outpost/internal/topic"
)

// Config is the `pipeline:` section.
type Config struct {
	// Partitions is the number of ordered lanes messages are spread over by
	// topic hash (default 4).
	Partitions int `yaml:"partitions"`
	// QueueSize bounds each partition's queue (default 1024 messages).
	QueueSize int      `yaml:"queue_size"`
	DeviceID  DeviceID `yaml:"device_id"`
	Sinks     []Sink   `yaml:"sinks"`
	Routes    []Route  `yaml:"routes"`
}

// DeviceID says how a message's device id is found.
type DeviceID struct {
	From  string `yaml:"from"`  // client_id (default) | topic
	Level int    `yaml:"level"` // with from: topic, the 1-based topic level
}

// Device id sources.
const (
	DeviceFromClientID = "client_id"
	DeviceFromTopic    = "topic"
)

// Sink declares a named sink. Exactly the section matching Type is used.
type Sink struct {
	Name      string           `yaml:"name"`
	Type      string           `yaml:"type"` // republish | file
	Republish republish.Config `yaml:"republish"`
	File      file.Config      `yaml:"file"`
}

// Sink types configured here; uplink lanes and rules add their own sinks.
const (
	SinkRepublish = "republish"
	SinkFile      = "file"
)

// Route sends messages whose topic matches any of From to every sink in To.
type Route struct {
	Name string   `yaml:"name"`
	From []string `yaml:"from"` // topic filters
	To   []string `yaml:"to"`   // sink names
}

// SetDefaults fills zero values.
func (c *Config) SetDefaults() {
	if c.Partitions == 0 {
		c.Partitions = 4
	}
	if c.QueueSize == 0 {
		c.QueueSize = 1024
	}
	if c.DeviceID.From == "" {
		c.DeviceID.From = DeviceFromClientID
	}
	for i := range c.Sinks {
		if c.Sinks[i].Type == SinkFile {
			c.Sinks[i].File.SetDefaults()
		}
	}
	for i := range c.Routes {
		if c.Routes[i].Name == "" {
			c.Routes[i].Name = fmt.Sprintf("route-%d", i+1)
		}
	}
}

// Validate checks the section. moduleSinks are sink names other modules
// provide (uplink lanes, rules), which routes may name too.
func (c *Config) Validate(moduleSinks ...string) error {
	var errs []error
	add := func(path, f string, a ...any) { errs = append(errs, config.Field(path, f, a...)) }
	if c.Partitions < 1 || c.Partitions > 256 {
		add("partitions", "must be between 1 and 256")
	}
	if c.QueueSize < 1 || c.QueueSize > 1<<20 {
		add("queue_size", "must be between 1 and 1048576")
	}
	switch c.DeviceID.From {
	case DeviceFromClientID:
	case DeviceFromTopic:
		if c.DeviceID.Level < 1 {
			add("device_id.level", "with from: topic, level must be 1 or more")
		}
	default:
		add("device_id.from", "must be client_id or topic")
	}
	known := map[string]bool{}
	for _, n := range moduleSinks {
		known[n] = true
	}
	for i, s := range c.Sinks {
		p := fmt.Sprintf("sinks[%d]", i)
		if !config.IsName(s.Name, 64, "_.:-") {
			add(p+".name", "sink name %q must be 1-64 letters, digits, _ . : -", s.Name)
		}
		if known[s.Name] {
			add(p+".name", "duplicate sink name %q", s.Name)
		}
		known[s.Name] = true
		switch s.Type {
		case SinkRepublish:
			if err := s.Republish.Validate(); err != nil {
				errs = append(errs, config.Section(p+".republish", err))
			}
		case SinkFile:
			if err := s.File.Validate(); err != nil {
				errs = append(errs, config.Section(p+".file", err))
			}
		default:
			add(p+".type", "unknown sink type %q (want republish or file)", s.Type)
		}
	}
	for i, r := range c.Routes {
		p := fmt.Sprintf("routes[%d]", i)
		if len(r.From) == 0 {
			add(p+".from", "a route needs at least one topic filter")
		}
		for j, f := range r.From {
			if err := topic.ValidFilter(f); err != nil {
				add(fmt.Sprintf("%s.from[%d]", p, j), "%v", err)
			}
		}
		if len(r.To) == 0 {
			add(p+".to", "a route needs at least one sink")
		}
		for j, t := range r.To {
			if !known[t] {
				add(fmt.Sprintf("%s.to[%d]", p, j), "unknown sink %q", t)
			}
		}
	}
	return errors.Join(errs...)
}
