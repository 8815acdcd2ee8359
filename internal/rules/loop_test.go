package rules

import (
	"context"
	"strings"
	"testing"

	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/topic"
)

func hopsOf(m *message.Message) string {
	for _, u := range m.Props.User {
		if u.Key == HopsProperty {
			return u.Value
		}
	}
	return ""
}

// TestHopCounterStopsLoop: two rules republish into each other's FROM and a
// forwarder (as an external bridge would) feeds every republished message
// back, keeping its user properties. The hop counter ends the loop after
// MaxHops republishes and counts it as reason "loop".
func TestHopCounterStopsLoop(t *testing.T) {
	env := NewMemEnv()
	e := New(Options{Env: env, MaxHops: 5})
	rs, err := e.Compile("loop.sql", `CREATE RULE ping AS SELECT n FROM 'loop/a' DO REPUBLISH 'loop/b';
CREATE RULE pong AS SELECT n FROM 'loop/b' DO REPUBLISH 'loop/a';`)
	if err != nil {
		t.Fatal(err)
	}
	e.Apply(rs)
	ctx := context.Background()
	sink := env.Sink("republish")
	queue := []*message.Message{{Topic: "loop/a", DeviceID: "d", Payload: []byte(`{"n":1}`)}}
	for i := 0; len(queue) > 0; i++ {
		if i > 100 {
			t.Fatal("the loop did not stop")
		}
		m := queue[0]
		queue = queue[1:]
		before := sink.Count()
		if err := e.Process(ctx, m); err != nil {
			t.Fatal(err)
		}
		queue = append(queue, sink.Messages()[before:]...)
	}
	out := sink.Messages()
	if len(out) != 5 {
		t.Fatalf("%d republishes, want 5 (MaxHops)", len(out))
	}
	for i, m := range out {
		if want := hopString(i + 1); hopsOf(m) != want {
			t.Fatalf("republish %d carries %s=%q, want %q", i, HopsProperty, hopsOf(m), want)
		}
	}
	loops := 0
	for _, r := range e.Rules() {
		loops += int(r.ErrorCounts()["loop"])
	}
	if loops != 1 {
		t.Fatalf("loop counted %d times, want 1", loops)
	}
}

// TestHopCounterWindowAndOtherActions: a window output carries the most
// hops of its messages plus one; UPLINK outputs are not stamped.
func TestHopCounterWindowAndOtherActions(t *testing.T) {
	env := NewMemEnv()
	env.LaneNames = []string{"default"}
	e := New(Options{Env: env})
	rs, err := e.Compile("w.sql", `CREATE RULE w AS SELECT count(*) AS n FROM 'w' GROUP BY TUMBLINGWINDOW(ss, 10) DO REPUBLISH 'w/out', UPLINK TOPIC 'up';`)
	if err != nil {
		t.Fatal(err)
	}
	e.Apply(rs)
	ctx := context.Background()
	for _, h := range []string{"2", "", "x"} {
		m := &message.Message{Topic: "w", DeviceID: "d", Payload: []byte(`{}`)}
		if h != "" {
			m.Props.User = []message.UserProperty{{Key: "other", Value: "1"}, {Key: HopsProperty, Value: h}}
		}
		e.Process(ctx, m)
	}
	e.Flush(ctx)
	rp := env.Sink("republish").Messages()
	if len(rp) != 1 || hopsOf(rp[0]) != "3" {
		t.Fatalf("window republish: %v", rp)
	}
	up := env.Sink("uplink:default").Messages()
	if len(up) != 1 || len(up[0].Props.User) != 0 {
		t.Fatalf("uplink output: %+v", up)
	}
}

func TestTopicPatternAndOverlap(t *testing.T) {
	for tpl, want := range map[string]string{
		"a/b":                  "a/b",
		"a/${x}/c":             "a/+/c",
		"a/pre-${x}":           "a/+",
		"${concat(a, '/', b)}": "+",
		"x/${a}${b}/y":         "x/+/y",
	} {
		if got := topicPattern(tpl); got != want {
			t.Errorf("topicPattern(%q) = %q, want %q", tpl, got, want)
		}
	}
	for _, c := range []struct {
		a, b string
		want bool
	}{
		{"a/b", "a/b", true}, {"a/b", "a/c", false}, {"a/+", "a/b", true}, {"+/b", "a/+", true},
		{"a/#", "a/b/c", true}, {"a/#", "a", true}, {"a", "a/#", true}, {"a/+", "a", false},
		{"a/+/c", "a/b/d", false}, {"#", "x/y", true}, {"a/b/c", "a/b", false},
	} {
		if got := topic.Intersects(c.a, c.b); got != c.want {
			t.Errorf("Intersects(%q, %q) = %v", c.a, c.b, got)
		}
		if got := topic.Intersects(c.b, c.a); got != c.want {
			t.Errorf("Intersects(%q, %q) = %v (swapped)", c.b, c.a, got)
		}
	}
}

func TestTemplatedSelfLoopRejected(t *testing.T) {
	_, err := Compile("self.sql", `CREATE RULE self AS SELECT d FROM 'sensors/#' DO REPUBLISH 'sensors/${d}/avg';`, CompileOptions{Env: NewMemEnv()})
	want := "self.sql:1:60: rule self: REPUBLISH topic 'sensors/${d}/avg' can match this rule's own FROM 'sensors/#' (a loop: a ${...} level may take any value)"
	if err == nil || err.Error() != want {
		t.Fatalf("got %v\nwant %s", err, want)
	}
	if _, err := Compile("ok.sql", `CREATE RULE ok AS SELECT d FROM 'sensors/+/raw' DO REPUBLISH 'sensors/${d}/avg';`, CompileOptions{Env: NewMemEnv()}); err != nil {
		t.Fatal(err)
	}
}

// TestStoreRejectsCycle: a rule that closes a cycle through another file's
// rules is rejected with the cycle named; the rest loads, and a chain that
// does not come back is fine.
func TestStoreRejectsCycle(t *testing.T) {
	e, _ := newTestEngine(t, "")
	s := NewStore(e, "", 0, nil)
	s.mem["a.sql"] = `CREATE RULE a AS SELECT v FROM 'stage/1/+' DO REPUBLISH 'stage/2';`
	s.mem["b.sql"] = `CREATE RULE b AS SELECT v FROM 'stage/2' DO REPUBLISH 'stage/1/${v}';`
	s.mem["c.sql"] = `CREATE RULE c AS SELECT v FROM 'stage/+' WHERE v = 'x' DO UPLINK TOPIC 'u';
CREATE RULE d AS SELECT v FROM 'other' DO REPUBLISH 'stage/1/x';`
	err := s.Reload()
	// a → b → a: b.sql loads after a.sql, so b is the rule refused
	want := "b.sql:1:55: rule b: REPUBLISH closes a loop: rule b REPUBLISH 'stage/1/${v}' → rule a (FROM 'stage/1/+') REPUBLISH 'stage/2' → rule b (FROM 'stage/2')"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("got %v\nwant %s", err, want)
	}
	if got := ruleVersions(e); got != "a@1,c@1,d@1" {
		t.Fatalf("rules %s, want a@1,c@1,d@1", got)
	}
	// breaking the cycle loads b
	s.mem["b.sql"] = `CREATE RULE b AS SELECT v FROM 'stage/2' DO REPUBLISH 'done/${v}';`
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := ruleVersions(e); got != "a@1,b@1,c@1,d@1" {
		t.Fatalf("rules %s", got)
	}
	// and the HTTP/API path (Put) refuses a cycle before writing
	if _, err := s.Put("z", `CREATE RULE z AS SELECT v FROM 'done/+' DO REPUBLISH 'other';`); err == nil ||
		!strings.Contains(err.Error(), "rule z REPUBLISH 'other' → rule d (FROM 'other') REPUBLISH 'stage/1/x' → rule a (FROM 'stage/1/+') REPUBLISH 'stage/2' → rule b (FROM 'stage/2') REPUBLISH 'done/${v}' → rule z (FROM 'done/+')") {
		t.Fatalf("Put: %v", err)
	}
	if _, ok := s.mem["z.sql"]; ok {
		t.Fatal("the refused rule was stored")
	}
}
