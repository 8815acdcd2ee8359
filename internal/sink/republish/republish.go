// Package republish is the sink that publishes messages back onto the local
// broker under a new topic, e.g. routing raw `factory/+/sensors/#` data to
// `processed/{device_id}/...` for local consumers.
//
// Messages published this way do not re-enter the pipeline (the broker marks
// them as Outpost's own), so a route can never loop.
package republish

import (
	"context"
	"fmt"
	"strings"

	"github.com/outpost-edge/outpost/internal/message"
)

// Publisher is what the sink needs from the broker.
type Publisher interface {
	PublishMessage(m *message.Message) error
}

// Config configures one republish sink.
type Config struct {
	// Topic is a template: {topic} is the original topic, {device_id} and
	// {client_id} the publisher's identities. Default "{topic}".
	Topic string `yaml:"topic"`
	// QoS overrides the message's QoS when set (0, 1 or 2).
	QoS    *int `yaml:"qos"`
	Retain bool `yaml:"retain"`
}

// Validate checks the template and QoS.
func (c Config) Validate() error {
	if err := ValidateTemplate(c.Topic); err != nil {
		return fmt.Errorf("topic: %w", err)
	}
	if c.QoS != nil && (*c.QoS < 0 || *c.QoS > 2) {
		return fmt.Errorf("qos: must be 0, 1 or 2")
	}
	return nil
}

// ValidateTemplate checks a topic template: known placeholders only, no
// wildcards.
func ValidateTemplate(t string) error {
	if t == "" {
		return nil
	}
	if strings.ContainsAny(t, "+#") {
		return fmt.Errorf("template %q must not contain + or #", t)
	}
	rest := t
	for {
		i := strings.IndexByte(rest, '{')
		if i < 0 {
			break
		}
		j := strings.IndexByte(rest[i:], '}')
		if j < 0 {
			return fmt.Errorf("template %q has an unclosed {", t)
		}
		switch rest[i+1 : i+j] {
		case "topic", "device_id", "client_id":
		default:
			return fmt.Errorf("template %q: unknown placeholder {%s} (known: {topic}, {device_id}, {client_id})", t, rest[i+1:i+j])
		}
		rest = rest[i+j+1:]
	}
	return nil
}

// Expand fills a template for m.
func Expand(t string, m *message.Message) string {
	if t == "" || t == "{topic}" {
		return m.Topic
	}
	if !strings.Contains(t, "{") {
		return t
	}
	r := strings.NewReplacer("{topic}", m.Topic, "{device_id}", m.DeviceID, "{client_id}", m.ClientID)
	return r.Replace(t)
}

// Sink republishes to the local broker.
type Sink struct {
	name string
	cfg  Config
	pub  Publisher
}

var _ message.Sink = (*Sink)(nil)

// New returns a republish sink.
func New(name string, cfg Config, pub Publisher) *Sink { return &Sink{name: name, cfg: cfg, pub: pub} }

// Name implements message.Sink.
func (s *Sink) Name() string { return s.name }

// Deliver implements message.Sink.
func (s *Sink) Deliver(_ context.Context, m *message.Message) error {
	out := *m
	out.Topic = Expand(s.cfg.Topic, m)
	out.Retain = s.cfg.Retain
	if s.cfg.QoS != nil {
		out.QoS = byte(*s.cfg.QoS)
	}
	if err := s.pub.PublishMessage(&out); err != nil {
		return fmt.Errorf("republish %s to %s: %w", s.name, out.Topic, err)
	}
	return nil
}
