package agent

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/rules"
	"github.com/outpost-edge/outpost/internal/sink"
)

// Every producer resolves sink names through the one registry: a route's
// "uplink:telemetry", a rule's UPLINK 'telemetry' and the registry itself
// give the same lane sink; FILE 'archive' and "file:archive" the same
// pipeline file sink; unknown names are errors of both the registry and
// the rule engine, worded for the rule author.
func TestOneSinkRegistry(t *testing.T) {
	dir := t.TempDir()
	cfg := uplinkConfig(dir, "mqtt://127.0.0.1:1", "") + `rules: {dir: ` + filepath.Join(dir, "rules") + `}
`
	path := filepath.Join(dir, "outpost.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	a, _ := startAgent(t, path)
	env := &rulesEnv{a: a}
	reg, err := a.sinks.Resolve("uplink:telemetry")
	if err != nil {
		t.Fatal(err)
	}
	act, err := env.Uplink("telemetry")
	if err != nil {
		t.Fatal(err)
	}
	route, ok := a.Pipeline.Sink("uplink:telemetry")
	if !ok {
		t.Fatal("the pipeline has no uplink:telemetry sink")
	}
	if reg != act || reg != route {
		t.Fatalf("three sinks for one lane: registry %p, rule %p, route %p", reg, act, route)
	}
	if first, _ := env.Uplink(""); first.Name() != "uplink:alarms" {
		t.Fatalf("UPLINK without a lane went to %s, want the first lane", first.Name())
	}
	if s, err := a.sinks.Resolve(sink.KindRules); err != nil || s != a.Rules.Engine().Sink() {
		t.Fatalf("rules sink %v %v", s, err)
	}
	var repub message.Sink = env.Republish()
	if s, _ := a.sinks.Resolve("republish"); s != repub {
		t.Fatal("the rule engine's republish sink is not the registry's")
	}
	for _, bad := range []func() error{
		func() error { _, err := env.Uplink("nope"); return err },
		func() error { _, err := env.File("nope"); return err },
		func() error { _, err := a.sinks.Resolve("file:nope"); return err },
	} {
		if err := bad(); !errors.Is(err, rules.ErrUnknownTarget) || !errors.Is(err, sink.ErrUnknown) {
			t.Fatalf("unknown target: %v, want rules.ErrUnknownTarget and sink.ErrUnknown", err)
		}
	}
}
