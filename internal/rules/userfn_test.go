package rules

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/outpost-edge/outpost/internal/message"
)

// fnEnv adds user functions to a MemEnv.
type fnEnv struct {
	*MemEnv
	funcs map[string]ScalarFunc
}

func (e fnEnv) ScalarFunc(name string) (ScalarFunc, error) {
	if f := e.funcs[name]; f != nil {
		return f, nil
	}
	return nil, fmt.Errorf("%w: function '%s'", ErrUnknownTarget, name)
}

func TestUserFunctions(t *testing.T) {
	var calls []string
	env := fnEnv{NewMemEnv(), map[string]ScalarFunc{
		"anomaly": func(_ context.Context, dev string, a []Value) (Value, error) {
			calls = append(calls, fmt.Sprintf("%s%v", dev, a))
			if len(a) != 2 || a[0].K != KNum || a[1].K != KNum {
				return null, errors.New("want two numbers")
			}
			return boolean(a[0].N*a[1].N > 100), nil
		},
	}}
	e := New(Options{Env: env, Partitions: 2})
	rs, err := e.Compile("t.sql", `CREATE RULE r AS SELECT fn('anomaly', temp, vibration) AS hot FROM 'x/+' WHERE fn('anomaly', temp, vibration) DO REPUBLISH 'alert/${deviceid()}';`)
	if err != nil {
		t.Fatal(err)
	}
	e.Apply(rs)
	for _, p := range []string{`{"temp":20,"vibration":1}`, `{"temp":50,"vibration":3}`, `{"temp":"hot","vibration":3}`} {
		if err := e.Process(context.Background(), &message.Message{Topic: "x/d1", DeviceID: "d1", Payload: []byte(p)}); err != nil {
			t.Fatal(err)
		}
	}
	got := env.Sink("republish").Messages()
	if len(got) != 1 || got[0].Topic != "alert/d1" || string(got[0].Payload) != `{"hot":true}` {
		t.Fatalf("outputs %v", got)
	}
	if n := e.Rules()[0].ErrorCounts()["function_failed"]; n != 1 {
		t.Fatalf("function_failed = %d (calls %v)", n, calls)
	}
	if calls[0] != "d1[{number 20 } {number 1 }]" {
		t.Fatalf("first call %q", calls[0])
	}
}

func TestUserFunctionWindow(t *testing.T) {
	env := fnEnv{NewMemEnv(), map[string]ScalarFunc{
		"double": func(_ context.Context, _ string, a []Value) (Value, error) { return num(2 * a[0].N), nil },
	}}
	e := New(Options{Env: env, Partitions: 2})
	rs, err := e.Compile("t.sql", `CREATE RULE w AS SELECT fn('double', avg(t)) AS d FROM 'x' GROUP BY COUNTWINDOW(2) DO REPUBLISH 'o';`)
	if err != nil {
		t.Fatal(err)
	}
	e.Apply(rs)
	for _, p := range []string{`{"t":1}`, `{"t":3}`} {
		if err := e.Process(context.Background(), &message.Message{Topic: "x", Payload: []byte(p)}); err != nil {
			t.Fatal(err)
		}
	}
	if got := env.Sink("republish").Messages(); len(got) != 1 || string(got[0].Payload) != `{"d":4}` {
		t.Fatalf("outputs %v", got)
	}
}

func TestUserFunctionCompileErrors(t *testing.T) {
	env := fnEnv{NewMemEnv(), map[string]ScalarFunc{"ok": func(context.Context, string, []Value) (Value, error) { return null, nil }}}
	for _, c := range []struct {
		env  Env
		src  string
		want string
	}{
		{env, `CREATE RULE r AS SELECT fn('nope', a) AS x FROM 'x' DO REPUBLISH 'o'`, `t.sql:1:28: rule r: fn('nope'): unknown function 'nope'`},
		{env, `CREATE RULE r AS SELECT fn(a) AS x FROM 'x' DO REPUBLISH 'o'`, `t.sql:1:28: rule r: fn: the function name must be a string literal`},
		{env, `CREATE RULE r AS SELECT fn() AS x FROM 'x' DO REPUBLISH 'o'`, `fn() takes at least 1 argument(s)`},
		{NewMemEnv(), `CREATE RULE r AS SELECT fn('ok') AS x FROM 'x' DO REPUBLISH 'o'`, `fn('ok'): user functions are not available`},
		{withConfigLabels(NewMemEnv(), []Device{{ID: "d"}}), `CREATE RULE r AS SELECT fn('ok') AS x FROM 'x' DO REPUBLISH 'o'`, `fn('ok'): user functions are not available`},
		// rules.devices wraps the Env: its functions stay visible.
		{withConfigLabels(env, []Device{{ID: "d"}}), `CREATE RULE r AS SELECT fn('nope') AS x FROM 'x' DO REPUBLISH 'o'`, `fn('nope'): unknown function 'nope'`},
	} {
		_, err := Compile("t.sql", c.src, CompileOptions{Env: c.env})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s\n got %v\nwant %s", c.src, err, c.want)
		}
	}
}
