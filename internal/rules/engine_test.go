package rules

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/rules/jsonpath"
	"github.com/outpost-edge/outpost/internal/rules/parser"
)

func runRules(t *testing.T, src, samples string) string {
	t.Helper()
	var out bytes.Buffer
	if err := RunTest(context.Background(), "t.sql", src, strings.NewReader(samples), &out, TestOptions{Stats: true}); err != nil {
		t.Fatalf("RunTest: %v", err)
	}
	return out.String()
}

func TestCompileErrors(t *testing.T) {
	env := &MemEnv{LaneNames: []string{"alarms", "bulk"}, FileNames: []string{"audit"}, FuncNames: []string{"enrich"}}
	tests := []struct{ src, want string }{
		{`CREATE RULE r AS SELECT nosuch(a) FROM 'x' DO FILE 'audit'`, `t.sql:1:25: rule r: unknown function nosuch()`},
		{`CREATE RULE r AS SELECT uper(a) FROM 'x' DO FILE 'audit'`, `t.sql:1:25: rule r: unknown function uper() (did you mean upper()?)`},
		{`CREATE RULE r AS SELECT abs(a, b) FROM 'x' DO FILE 'audit'`, `t.sql:1:25: rule r: abs() takes 1 argument(s), got 2 argument(s): abs(x)`},
		{`CREATE RULE r AS SELECT avg(a) FROM 'x' DO FILE 'audit'`, `t.sql:1:25: rule r: aggregate avg() needs a window: add GROUP BY ..., TUMBLINGWINDOW(ss, 10) (or another window)`},
		{`CREATE RULE r AS SELECT a FROM 'x' WHERE avg(a) > 1 GROUP BY TUMBLINGWINDOW(ss, 1) DO FILE 'audit'`, `t.sql:1:42: rule r: aggregate avg() is not allowed in WHERE; use HAVING`},
		{`CREATE RULE r AS SELECT avg(max(a)) AS x FROM 'x' GROUP BY TUMBLINGWINDOW(ss, 1) DO FILE 'audit'`, `t.sql:1:29: rule r: aggregate max() cannot be nested in another aggregate`},
		{`CREATE RULE r AS SELECT a FROM 'x' DO UPLINK LANE 'nope' TOPIC 't'`, `t.sql:1:51: rule r: unknown lane 'nope' (lanes: alarms, bulk)`},
		{`CREATE RULE r AS SELECT a FROM 'x' DO FUNCTION 'nope'`, `t.sql:1:48: rule r: unknown function 'nope' (known: enrich)`},
		{`CREATE RULE r AS SELECT a FROM 'x' DO FILE 'nope'`, `t.sql:1:44: rule r: unknown file 'nope' (known: audit)`},
		{`CREATE RULE r AS SELECT a FROM 'x/#' DO REPUBLISH 'x/y'`, `t.sql:1:51: rule r: REPUBLISH topic 'x/y' matches this rule's own FROM 'x/#' (a loop)`},
		{`CREATE RULE r AS SELECT a FROM 'x' GROUP BY a DO FILE 'audit'`, `t.sql:1:45: rule r: GROUP BY needs a window: add TUMBLINGWINDOW, HOPPINGWINDOW, SLIDINGWINDOW, SESSIONWINDOW or COUNTWINDOW`},
		{`CREATE RULE r AS SELECT * FROM 'x' GROUP BY TUMBLINGWINDOW(ss, 1) DO FILE 'audit'`, `t.sql:1:25: rule r: SELECT * is not allowed in a windowed rule (name the columns)`},
		{`CREATE RULE r AS SELECT regexp_match(a, b) FROM 'x' DO FILE 'audit'`, `t.sql:1:41: rule r: regexp_match: the pattern must be a string literal`},
		{`CREATE RULE r AS SELECT regexp_match(a, '(') FROM 'x' DO FILE 'audit'`, "t.sql:1:41: rule r: regexp_match: error parsing regexp: missing closing ): `(`"},
		{`CREATE RULE r FOR DEVICES WHERE temp > 1 AS SELECT a FROM 'x' DO FILE 'audit'`, `t.sql:1:33: rule r: FOR DEVICES WHERE may use labels.KEY and deviceid() only, not payload field temp`},
		{`CREATE RULE r AS SELECT a, b AS a FROM 'x' DO FILE 'audit'`, `t.sql:1:28: rule r: duplicate column name "a" (use AS)`},
		{`CREATE RULE r AS SELECT a FROM 'x' DO REPUBLISH 'o/${nosuch(}'`, `t.sql:1:61: rule r: in template: unexpected end of input, expected expression`},
		{`CREATE RULE r AS SELECT a FROM 'x' DO WEBHOOK 'ftp://x'`, `t.sql:1:47: rule r: WEBHOOK needs an http:// or https:// URL, got 'ftp://x'`},
		{`CREATE RULE r AS SELECT a FROM 'x' DO REPUBLISH 'y' WITH (qos = 3)`, `t.sql:1:59: rule r: qos must be 0, 1 or 2`},
		{`CREATE RULE r AS SELECT a FROM 'x' DO REPUBLISH 'y' WITH (colour = 3)`, `t.sql:1:59: rule r: unknown option colour for REPUBLISH (valid: qos, retain)`},
		{`CREATE RULE r AS SELECT window_start() AS w FROM 'x' DO FILE 'audit'`, `t.sql:1:25: rule r: window_start() is only valid in the SELECT or HAVING of a windowed rule`},
		{`CREATE RULE r AS SELECT percentile(a, 2) AS p FROM 'x' GROUP BY TUMBLINGWINDOW(ss, 1) DO FILE 'audit'`, `t.sql:1:39: rule r: percentile: p must be a number literal between 0 and 1`},
		{`CREATE RULE r AS SELECT a FROM 'x' FORMAT 'xml' DO FILE 'audit'`, `t.sql:1:43: rule r: unknown FORMAT 'xml' (known: json, raw)`},
		{"CREATE RULE r AS SELECT a FROM 'x' DO FILE 'audit';\nCREATE RULE r AS SELECT b FROM 'x' DO FILE 'audit'", `t.sql:2:1: rule r: version 1 defined twice in this file`},
	}
	for _, tt := range tests {
		_, err := Compile("t.sql", tt.src, CompileOptions{Env: env, Webhook: CheckWebhook})
		var el parser.ErrorList
		if !errors.As(err, &el) {
			t.Errorf("%s\n  no error list: %v", tt.src, err)
			continue
		}
		if el[0].Error() != tt.want {
			t.Errorf("%s\n got %s\nwant %s", tt.src, el[0].Error(), tt.want)
		}
	}
}

func TestRuntimeErrorsYieldNull(t *testing.T) {
	out := runRules(t, `CREATE RULE r AS SELECT a / b AS q, a + s AS bad, missing AS m, sqrt(a - 100) AS neg FROM 'x' DO REPUBLISH 'o';`,
		`{"topic":"x","payload":{"a":10,"b":0,"s":"str"}}
{"topic":"x","payload":{"a":10,"b":4,"s":"str"}}`)
	want := `republish o {"q":null,"bad":null,"m":null,"neg":null}
republish o {"q":2.5,"bad":null,"m":null,"neg":null}
# rule r v1: matched=2 emitted=2 bad_argument=2 div_by_zero=1 missing_field=2 type_mismatch=2
`
	if out != want {
		t.Errorf("got\n%s\nwant\n%s", out, want)
	}
}

func TestGrayRollout(t *testing.T) {
	src := `CREATE RULE conv VERSION 3 AS SELECT temp, 'v3' AS v FROM 'dev/+/t' DO REPUBLISH 'out';
CREATE RULE conv VERSION 4 FOR DEVICES WHERE labels.canary = 'true' AND labels.site = 'plant-2'
AS SELECT temp, 'v4' AS v FROM 'dev/+/t' DO REPUBLISH 'out';`
	out := runRules(t, src, `{"device":"a","labels":{"canary":"true","site":"plant-2"}}
{"device":"b","labels":{"canary":"false","site":"plant-2"}}
{"topic":"dev/a/t","device":"a","payload":{"temp":1}}
{"topic":"dev/b/t","device":"b","payload":{"temp":2}}
{"topic":"dev/c/t","device":"c","payload":{"temp":3}}`)
	want := `republish out {"temp":1,"v":"v4"}
republish out {"temp":2,"v":"v3"}
republish out {"temp":3,"v":"v3"}
# rule conv v4: matched=1 emitted=1
# rule conv v3: matched=2 emitted=2
`
	if out != want {
		t.Errorf("got\n%s\nwant\n%s", out, want)
	}
}

func newTestEngine(t testing.TB, src string) (*Engine, *MemEnv) {
	env := NewMemEnv()
	e := New(Options{Env: env, Partitions: 8})
	if src != "" {
		rs, err := e.Compile("t.sql", src)
		if err != nil {
			t.Fatal(err)
		}
		e.Apply(rs)
	}
	return e, env
}

func TestActionErrorReturned(t *testing.T) {
	e, env := newTestEngine(t, `CREATE RULE r AS SELECT * FROM 'x' DO UPLINK LANE 'q' TOPIC 'up', REPUBLISH 'y';`)
	env.Sink("uplink:q").Fail = message.ErrRejected
	err := e.Process(context.Background(), &message.Message{Topic: "x", Payload: []byte(`{}`)})
	if !errors.Is(err, message.ErrRejected) {
		t.Fatalf("err = %v", err)
	}
	if n := env.Sink("republish").Count(); n != 1 {
		t.Errorf("other actions still run: republish got %d", n)
	}
	if got := e.Rules()[0].ErrorCounts()["action_failed"]; got != 1 {
		t.Errorf("action_failed = %d", got)
	}
}

func TestPassThroughRawPayload(t *testing.T) {
	e, env := newTestEngine(t, `CREATE RULE r AS SELECT * FROM 'bin/#' FORMAT 'raw' DO REPUBLISH 'copy/${topic(2)}';`)
	p := []byte{0, 1, 2, 0xff}
	e.Process(context.Background(), &message.Message{Topic: "bin/x", Payload: p})
	ms := env.Sink("republish").Messages()
	if len(ms) != 1 || !bytes.Equal(ms[0].Payload, p) || ms[0].Topic != "copy/x" {
		t.Fatalf("got %+v", ms)
	}
}

// TestReloadNoGapsNoDuplicates replaces 100 rules many times while
// messages with sequence numbers flow through 4 concurrent producers, and
// checks that every rule emitted every sequence number exactly once.
func TestReloadNoGapsNoDuplicates(t *testing.T) {
	const nRules, producers, perProducer = 100, 4, 1500
	env := NewMemEnv()
	e := New(Options{Env: env, Partitions: 16})
	compile := func(gen int) []*Rule {
		var all []*Rule
		for i := 0; i < nRules; i++ {
			rs, err := e.Compile("r.sql", fmt.Sprintf(
				`CREATE RULE r%d AS SELECT seq, %d AS gen FROM 'seq/#' WHERE seq %% %d >= 0 DO REPUBLISH 'out/%d';`, i, gen, i+1, i))
			if err != nil {
				t.Fatal(err)
			}
			all = append(all, rs...)
		}
		return all
	}
	e.Apply(compile(0))
	var wg sync.WaitGroup
	var done atomic.Bool
	ctx := context.Background()
	for p := 0; p < producers; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			for i := 0; i < perProducer; i++ {
				e.Process(ctx, &message.Message{Topic: fmt.Sprintf("seq/%d", p), DeviceID: fmt.Sprint("dev", p),
					Payload: []byte(fmt.Sprintf(`{"seq":%d}`, p*perProducer+i))})
			}
		}(p)
	}
	var latencies []time.Duration
	gen := 0
	go func() { wg.Wait(); done.Store(true) }()
	for !done.Load() {
		gen++
		next := compile(gen)
		t0 := time.Now()
		e.Apply(next)
		latencies = append(latencies, time.Since(t0))
	}
	wg.Wait()
	if gen < 2 {
		t.Logf("only %d reloads happened during the flow", gen)
	}
	seen := make([][]int, nRules)
	for i := range seen {
		seen[i] = make([]int, producers*perProducer)
	}
	for _, d := range env.Deliveries() {
		rule, _ := strconv.Atoi(strings.TrimPrefix(d.Msg.Topic, "out/"))
		f, _ := seqPath.Get(d.Msg.Payload).Float()
		seen[rule][int(f)]++
	}
	gaps, dups := 0, 0
	for r := range seen {
		for _, n := range seen[r] {
			switch {
			case n == 0:
				gaps++
			case n > 1:
				dups += n - 1
			}
		}
	}
	if gaps != 0 || dups != 0 {
		t.Fatalf("%d reloads: %d gaps, %d duplicates", gen, gaps, dups)
	}
	t.Logf("%d reloads of %d rules during %d messages: 0 gaps, 0 duplicates; Apply latency %s", gen, nRules, producers*perProducer, distribution(latencies))
	// per-device order: each producer's sequence must be increasing per rule
	last := map[string]int{}
	for _, d := range env.Deliveries() {
		f, _ := seqPath.Get(d.Msg.Payload).Float()
		seq := int(f)
		k := fmt.Sprint(d.Msg.Topic, "/", seq/perProducer)
		if prev, ok := last[k]; ok && seq <= prev {
			t.Fatalf("order broken on %s: %d after %d", k, seq, prev)
		}
		last[k] = seq
	}
}

var seqPath = jsonpath.MustCompile("seq")

// distribution renders p50/p90/p99/max of d.
func distribution(d []time.Duration) string {
	if len(d) == 0 {
		return "n/a"
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	q := func(p float64) time.Duration { return s[int(p*float64(len(s)-1))] }
	return fmt.Sprintf("n=%d p50=%v p90=%v p99=%v max=%v", len(s), q(0.5), q(0.9), q(0.99), s[len(s)-1])
}

func TestWindowStateCarryOverAndReset(t *testing.T) {
	now := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	env := NewMemEnv()
	e := New(Options{Env: env, Now: func() time.Time { return now }})
	apply := func(src string) {
		rs, err := e.Compile("t.sql", src)
		if err != nil {
			t.Fatal(err)
		}
		e.Apply(rs)
	}
	ctx := context.Background()
	send := func(v int) {
		e.Process(ctx, &message.Message{Topic: "t", DeviceID: "d", Payload: []byte(fmt.Sprintf(`{"v":%d}`, v))})
	}
	apply(`CREATE RULE w AS SELECT sum(v) AS s FROM 't' GROUP BY TUMBLINGWINDOW(ss, 10) DO REPUBLISH 'o';`)
	send(1)
	send(2)
	// same window and aggregates, new output topic: state carries over
	apply(`CREATE RULE w AS SELECT sum(v) AS s FROM 't' GROUP BY TUMBLINGWINDOW(ss, 10) DO REPUBLISH 'o2';`)
	send(3)
	now = now.Add(11 * time.Second)
	e.Tick(ctx)
	ms := env.Sink("republish").Messages()
	if len(ms) != 1 || string(ms[0].Payload) != `{"s":6}` || ms[0].Topic != "o2" {
		t.Fatalf("carry over: %v", ms)
	}
	env.Sink("republish").Reset()
	send(5)
	// window size changed: state resets
	apply(`CREATE RULE w AS SELECT sum(v) AS s FROM 't' GROUP BY TUMBLINGWINDOW(ss, 20) DO REPUBLISH 'o3';`)
	send(7)
	now = now.Add(30 * time.Second)
	e.Tick(ctx)
	ms = env.Sink("republish").Messages()
	if len(ms) != 1 || string(ms[0].Payload) != `{"s":7}` {
		t.Fatalf("reset: %v", ms)
	}
}

func TestSnapshotRestore(t *testing.T) {
	now := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	src := `CREATE RULE w AS SELECT deviceid() AS d, avg(v) AS a, count(*) AS n FROM 't' GROUP BY deviceid(), TUMBLINGWINDOW(ss, 10) DO REPUBLISH 'o';
CREATE RULE c AS SELECT v, lag(v) AS prev FROM 't' WHERE changed(v) DO REPUBLISH 'c';`
	ctx := context.Background()
	mk := func() (*Engine, *MemEnv) {
		env := NewMemEnv()
		return New(Options{Env: env, Now: func() time.Time { return now }}), env
	}
	e1, _ := mk()
	rs, _ := e1.Compile("t.sql", src)
	e1.Apply(rs)
	for _, v := range []int{2, 4} {
		e1.Process(ctx, &message.Message{Topic: "t", DeviceID: "d1", Payload: []byte(fmt.Sprintf(`{"v":%d}`, v))})
	}
	dir := t.TempDir()
	if err := e1.SaveState(dir); err != nil {
		t.Fatal(err)
	}
	e2, env2 := mk()
	if err := e2.LoadState(dir); err != nil {
		t.Fatal(err)
	}
	rs, _ = e2.Compile("t.sql", src)
	e2.Apply(rs)
	e2.Process(ctx, &message.Message{Topic: "t", DeviceID: "d1", Payload: []byte(`{"v":4}`)}) // unchanged: no 'c' output
	e2.Process(ctx, &message.Message{Topic: "t", DeviceID: "d1", Payload: []byte(`{"v":6}`)})
	now = now.Add(20 * time.Second)
	e2.Tick(ctx)
	var got []string
	for _, d := range env2.Deliveries() {
		got = append(got, d.Msg.Topic+" "+string(d.Msg.Payload))
	}
	want := []string{`c {"v":6,"prev":4}`, `o {"d":"d1","a":4,"n":4}`}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestDeviceIDFromTopicLevel(t *testing.T) {
	c := Config{DeviceIDFrom: "topic_level:2"}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	env := NewMemEnv()
	e := New(Options{Env: env, DeviceID: c.DeviceIDFunc()})
	rs, _ := e.Compile("t.sql", `CREATE RULE r AS SELECT deviceid() AS d FROM 'f/+/t' DO REPUBLISH 'o';`)
	e.Apply(rs)
	m := &message.Message{Topic: "f/pump-7/t", Payload: []byte(`{}`)}
	e.Process(context.Background(), m)
	if ms := env.Sink("republish").Messages(); len(ms) != 1 || string(ms[0].Payload) != `{"d":"pump-7"}` {
		t.Fatalf("got %v", ms)
	}
	if m.DeviceID != "" {
		t.Error("the input message was modified")
	}
	bad := Config{DeviceIDFrom: "topic_level:x", Partitions: -1, Devices: []Device{{ID: "a"}, {ID: "a"}}}
	err := bad.Validate()
	for _, w := range []string{"device_id_from:", "partitions:", "devices[1].id:"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("Validate: %v, want %s", err, w)
		}
	}
}

func TestSessionWindowTemplateKeepsGroupKey(t *testing.T) {
	out := runRules(t, `CREATE RULE s AS SELECT deviceid() AS door, count(*) AS n FROM 'd/+'
GROUP BY deviceid(), SESSIONWINDOW(ss, 30) TIMESTAMP BY ts DO REPUBLISH 'sessions/${door}/${n}';`,
		`{"topic":"d/1","device":"door-1","payload":{"ts":0}}
{"topic":"d/1","device":"door-1","payload":{"ts":1000}}
{"topic":"d/1","device":"door-1","payload":{"ts":100000}}
{"topic":"d/1","device":"door-1","payload":{"ts":200000}}
{"topic":"d/1","device":"door-1","payload":{"ts":200500}}`)
	want := `republish sessions/door-1/2 {"door":"door-1","n":2}
republish sessions/door-1/1 {"door":"door-1","n":1}
republish sessions/door-1/2 {"door":"door-1","n":2}
# rule s v1: matched=5 emitted=3
`
	if out != want {
		t.Errorf("got\n%s\nwant\n%s", out, want)
	}
}

func TestClientIDIsDefaultDevice(t *testing.T) {
	e, env := newTestEngine(t, `CREATE RULE r AS SELECT deviceid() AS d, v FROM 't' WHERE changed(v) DO REPUBLISH 'o';`)
	ctx := context.Background()
	for _, m := range []*message.Message{
		{Topic: "t", ClientID: "a", Payload: []byte(`{"v":1}`)},
		{Topic: "t", ClientID: "b", Payload: []byte(`{"v":1}`)},
		{Topic: "t", ClientID: "a", Payload: []byte(`{"v":1}`)},
	} {
		e.Process(ctx, m)
	}
	var got []string
	for _, m := range env.Sink("republish").Messages() {
		got = append(got, string(m.Payload))
	}
	if strings.Join(got, " ") != `{"d":"a","v":1} {"d":"b","v":1}` {
		t.Errorf("got %v", got)
	}
}

// A rule holds at most maxGroups open window groups: messages that would
// open more are counted as overflow, and the open groups are kept.
func TestWindowGroupsBounded(t *testing.T) {
	e, _ := newTestEngine(t, `CREATE RULE r AS SELECT d, count(*) AS n FROM 'm' GROUP BY d, TUMBLINGWINDOW(ss, 3600) DO REPUBLISH 'out';`)
	ctx := context.Background()
	const extra = 5
	for i := 0; i < maxGroups+extra; i++ {
		e.Process(ctx, &message.Message{Topic: "m", Payload: []byte(`{"d":` + strconv.Itoa(i) + `}`)})
	}
	r := e.Rules()[0]
	if got := r.ErrorCounts()["overflow"]; got != extra {
		t.Errorf("overflow = %d, want %d", got, extra)
	}
	if got := r.state.win.nGroups.Load(); got != maxGroups {
		t.Errorf("open groups = %d, want %d", got, maxGroups)
	}
}
