package rules

import (
	"bytes"
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

// FuzzRestore loads arbitrary bytes as a state snapshot (a damaged
// rules-state.json) and runs windowed and stateful rules on it: no input
// may panic.
func FuzzRestore(f *testing.F) {
	src := `CREATE RULE t AS SELECT deviceid() AS d, avg(v) AS a, percentile(v, 0.5) AS p FROM 't' GROUP BY deviceid(), TUMBLINGWINDOW(ss, 10) DO REPUBLISH 'o';
CREATE RULE s AS SELECT count(*) AS n, first(v) AS f FROM 't' GROUP BY SESSIONWINDOW(ss, 5) DO REPUBLISH 'o';
CREATE RULE c AS SELECT sum(v) AS s FROM 't' GROUP BY deviceid(), COUNTWINDOW(2) DO REPUBLISH 'o';
CREATE RULE d AS SELECT v, lag(v) AS l, rate(v) AS r FROM 't' WHERE changed(v) DO REPUBLISH 'o';`
	now := time.Unix(1700000000, 0)
	ctx := context.Background()
	mk := func() (*Engine, []*Rule) {
		e := New(Options{Env: NewMemEnv(), Partitions: 1, Now: func() time.Time { return now }})
		rs, err := e.Compile("r.sql", src)
		if err != nil {
			f.Fatal(err)
		}
		return e, rs
	}
	{
		e, rs := mk()
		e.Apply(rs)
		for i := 0; i < 4; i++ {
			e.Process(ctx, &message.Message{Topic: "t", DeviceID: "d" + string(rune('0'+i%2)), Payload: []byte(`{"v":3}`)})
		}
		var buf bytes.Buffer
		if err := e.Snapshot(&buf); err != nil {
			f.Fatal(err)
		}
		f.Add(buf.Bytes())
	}
	f.Add([]byte(`{"version":1,"rules":[{"name":"t","version":1,"window":{"panes":[{"start":0,"end":1,"groups":[null,{"key":"x"}]}]}}]}`))
	f.Fuzz(func(t *testing.T, snap []byte) {
		e, rs := mk()
		if e.Restore(bytes.NewReader(snap)) != nil {
			return
		}
		e.Apply(rs)
		e.Process(ctx, &message.Message{Topic: "t", DeviceID: "d0", Payload: []byte(`{"v":4}`)})
		e.Tick(ctx)
		e.Flush(ctx)
		var buf bytes.Buffer
		e.Snapshot(&buf)
	})
}
