package rules

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/message"
)

// FuzzCompileAndRun compiles arbitrary rule text and, when it compiles,
// evaluates it against a few payloads: no input may panic or hang the
// compiler or the evaluator.
func FuzzCompileAndRun(f *testing.F) {
	if b, err := os.ReadFile(docPath); err == nil {
		for _, ex := range parseDocExamples(&testing.T{}, string(b)) {
			f.Add(ex.sql, `{"temp":81,"quality":"good","a":{"b":[1,"x"]},"s":"a,b"}`)
		}
	}
	f.Add(filterProjection, string(payload200))
	f.Fuzz(func(t *testing.T, src, payload string) {
		now := time.Unix(1700000000, 0)
		env := NewMemEnv()
		e := New(Options{Env: env, Partitions: 1, Now: func() time.Time { return now },
			Webhook: CheckWebhook})
		rules, err := e.Compile("f.sql", src)
		if err != nil || len(rules) == 0 {
			return
		}
		e.Apply(rules)
		ctx := context.Background()
		for _, r := range rules {
			for _, topic := range r.Filters {
				m := &message.Message{Topic: concreteTopic(topic), DeviceID: "d", Payload: []byte(payload)}
				e.Process(ctx, m)
				now = now.Add(time.Second)
				e.Process(ctx, m)
				e.Tick(ctx)
			}
		}
		e.Flush(ctx)
	})
}

// concreteTopic turns a filter into a topic it matches.
func concreteTopic(f string) string {
	b := []byte(f)
	for i, c := range b {
		if c == '+' || c == '#' {
			b[i] = 'x'
		}
	}
	return string(b)
}
