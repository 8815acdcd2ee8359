package agent

import (
	"context"
	"fmt"

	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/pipeline"
	"github.com/outpost-edge/outpost/internal/rules"
	"github.com/outpost-edge/outpost/internal/sink"
)

// newSinks returns the agent's sink registry: the one place every producer
// (pipeline routes, rule actions, functions) resolves sink names and builds
// configured sinks. Republish goes to a.Broker (looked up at delivery: the
// registry exists before the broker is built).
func (a *Agent) newSinks() *sink.Registry {
	return sink.New(sink.Options{Publisher: brokerPublisher{a}, Logger: a.log, Metrics: a.metrics})
}

// provideSinks registers the kinds of sink the built modules provide.
func (a *Agent) provideSinks() {
	if a.lanes != nil {
		a.sinks.Provide(sink.KindUplink, a.laneSink)
	}
	a.sinks.Provide(sink.KindFile, a.fileSink)
	if a.Rules != nil {
		a.sinks.Provide(sink.KindRules, func(string) (message.Sink, error) {
			if eng := a.Rules.Engine(); eng != nil {
				return eng.Sink(), nil
			}
			return nil, fmt.Errorf("%w %q: the rule engine is not initialised", sink.ErrUnknown, RulesSink)
		})
	}
	a.provideFunctionSinks()
}

// laneSink resolves "uplink:LANE" to the lane's durable sink ("" = the
// first configured lane).
func (a *Agent) laneSink(lane string) (message.Sink, error) {
	if lane == "" {
		if names := a.laneNames(); len(names) > 0 {
			lane = names[0]
		}
	}
	if s, ok := a.lanes.Sink(lane); ok {
		return s, nil
	}
	return nil, unknownTarget("uplink lane %q (lanes: %v)", lane, a.laneNames())
}

func (a *Agent) laneNames() []string {
	c := a.Config()
	if !c.uplinkOn() {
		return nil
	}
	var names []string
	for _, l := range c.Uplink.Lanes {
		names = append(names, l.Name)
	}
	return names
}

// fileSink resolves "file:NAME" to the pipeline's file sink of that name,
// looked up at delivery so a reloaded pipeline's new file is used.
func (a *Agent) fileSink(name string) (message.Sink, error) {
	for _, s := range a.Config().Pipeline.Sinks {
		if s.Name == name && s.Type == pipeline.SinkFile {
			return pipelineSink{p: a.Pipeline, name: name}, nil
		}
	}
	return nil, unknownTarget("file sink %q (declare it under pipeline.sinks with type: file)", name)
}

type pipelineSink struct {
	p    *pipeline.Pipeline
	name string
}

func (s pipelineSink) Name() string { return s.name }

func (s pipelineSink) Deliver(ctx context.Context, m *message.Message) error {
	sink, ok := s.p.Sink(s.name)
	if !ok {
		return fmt.Errorf("file sink %q is not configured any more", s.name)
	}
	return sink.Deliver(ctx, m)
}

// brokerPublisher publishes on the agent's broker.
type brokerPublisher struct{ a *Agent }

func (p brokerPublisher) PublishMessage(m *message.Message) error {
	return p.a.Broker.PublishMessage(m)
}

// unknownTarget is an unknown sink name: errors.Is both sink.ErrUnknown
// and rules.ErrUnknownTarget (a rule action's message names the target).
func unknownTarget(format string, args ...any) error {
	return unknownErr(rules.ErrUnknownTarget.Error() + ": " + fmt.Sprintf(format, args...))
}

type unknownErr string

func (e unknownErr) Error() string { return string(e) }
func (e unknownErr) Is(target error) bool {
	return target == sink.ErrUnknown || target == rules.ErrUnknownTarget
}
