package rules

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/sink/webhook"
)

// Env is what the engine needs from the rest of Outpost: where actions
// deliver, which lanes exist, and device labels. The integrator implements
// it; MemEnv is an in-memory implementation for tests and `rules test`.
//
// Every method is called when rules are compiled (validation), except
// Labels, which is called per message for rules that have a device
// selector or read labels. Labels must be cheap and must not block; the
// returned map must not be modified afterwards (return a new map on change).
type Env interface {
	// Republish is the local broker.
	Republish() message.Sink
	// Uplink returns the sink of an uplink lane ("" = the default lane) or
	// an error wrapping ErrUnknownTarget.
	Uplink(lane string) (message.Sink, error)
	// File returns a configured file sink (JSON lines with rotation).
	File(name string) (message.Sink, error)
	// Function returns a function hook (the WASM runtime later).
	Function(name string) (message.Sink, error)
	// Lanes lists the uplink lane names, for error messages.
	Lanes() []string
	// Labels returns a device's labels (nil when unknown).
	Labels(deviceID string) map[string]string
}

// WebhookEnv is optionally implemented by an Env that builds the sinks of
// WEBHOOK actions (the agent's sink registry). Without it the engine
// builds them with internal/sink/webhook. Either way the engine shares one
// sink between rule versions with the same webhook configuration.
type WebhookEnv interface {
	Webhook(webhook.Config) (message.Sink, error)
}

// ErrUnknownTarget is returned (wrapped) by Env methods for a lane, file
// or function name that does not exist.
var ErrUnknownTarget = errors.New("rules: unknown action target")

// MemEnv is an in-memory Env: every sink records what it receives. Lanes,
// files and functions must be declared; an empty MemEnv accepts any name
// when Open is true.
type MemEnv struct {
	mu           sync.Mutex
	LaneNames    []string
	FileNames    []string
	FuncNames    []string
	Open         bool // accept any lane, file or function name
	DeviceLabels map[string]map[string]string
	sinks        map[string]*MemSink
	log          []Delivery
}

// Delivery is one message received by a MemEnv sink, in global order.
type Delivery struct {
	Sink string
	Msg  *message.Message
}

// Deliveries returns everything every sink received, in delivery order.
func (m *MemEnv) Deliveries() []Delivery {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Delivery(nil), m.log...)
}

// NewMemEnv returns an env accepting any target name.
func NewMemEnv() *MemEnv { return &MemEnv{Open: true} }

// Sink returns (creating) the recording sink with a name such as
// "republish", "uplink:alarms", "file:x", "function:f".
func (m *MemEnv) Sink(name string) *MemSink {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.sinks == nil {
		m.sinks = map[string]*MemSink{}
	}
	s := m.sinks[name]
	if s == nil {
		s = &MemSink{name: name, env: m}
		m.sinks[name] = s
	}
	return s
}

// SinkNames lists the sinks that exist, sorted.
func (m *MemEnv) SinkNames() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var n []string
	for k := range m.sinks {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

func (m *MemEnv) Republish() message.Sink { return m.Sink("republish") }

func (m *MemEnv) lookup(kind, name string, known []string) (message.Sink, error) {
	if !m.Open {
		ok := false
		for _, k := range known {
			ok = ok || k == name
		}
		if !ok {
			return nil, fmt.Errorf("%w: %s '%s' (known: %s)", ErrUnknownTarget, kind, name, strings.Join(known, ", "))
		}
	}
	if name == "" {
		name = "default"
	}
	return m.Sink(kind + ":" + name), nil
}

func (m *MemEnv) Uplink(lane string) (message.Sink, error) {
	return m.lookup("uplink", lane, m.LaneNames)
}
func (m *MemEnv) File(name string) (message.Sink, error) { return m.lookup("file", name, m.FileNames) }
func (m *MemEnv) Function(name string) (message.Sink, error) {
	return m.lookup("function", name, m.FuncNames)
}
func (m *MemEnv) Lanes() []string { return m.LaneNames }
func (m *MemEnv) Labels(id string) map[string]string {
	return m.DeviceLabels[id]
}

// MemSink records delivered messages (cloned).
type MemSink struct {
	name string
	mu   sync.Mutex
	msgs []*message.Message
	// Fail, when set, is returned by Deliver (for tests of action errors).
	Fail error
	// Discard drops messages after counting them (benchmarks).
	Discard bool
	n       int
	env     *MemEnv
}

func (s *MemSink) Name() string { return s.name }

func (s *MemSink) Deliver(_ context.Context, m *message.Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.Fail != nil {
		return s.Fail
	}
	s.n++
	if !s.Discard {
		c := m.Clone()
		s.msgs = append(s.msgs, c)
		if s.env != nil {
			s.env.mu.Lock()
			s.env.log = append(s.env.log, Delivery{Sink: s.name, Msg: c})
			s.env.mu.Unlock()
		}
	}
	return nil
}

// Messages returns a copy of what was delivered.
func (s *MemSink) Messages() []*message.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*message.Message(nil), s.msgs...)
}

// Count returns how many messages were delivered.
func (s *MemSink) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// Reset forgets delivered messages.
func (s *MemSink) Reset() {
	s.mu.Lock()
	s.msgs, s.n = nil, 0
	s.mu.Unlock()
}
