package rules

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/message"
)

// waitFor polls cond until it holds or the (generous) deadline passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestSilentDeviceWindowsClose runs the real clock and timer: after the
// last message, no further traffic arrives, and every kind of time window
// must still emit its last window.
func TestSilentDeviceWindowsClose(t *testing.T) {
	cases := []struct{ name, window string }{
		{"tumbling processing time", `TUMBLINGWINDOW(ms, 200)`},
		{"session processing time", `SESSIONWINDOW(ms, 200)`},
		{"tumbling event time", `TUMBLINGWINDOW(ms, 200) TIMESTAMP BY ts`},
		{"tumbling event time lateness", `TUMBLINGWINDOW(ms, 200) TIMESTAMP BY ts LATENESS(ms, 100)`},
		{"session event time", `SESSIONWINDOW(ms, 200) TIMESTAMP BY ts`},
		{"hopping event time", `HOPPINGWINDOW(ms, 200, 100) TIMESTAMP BY ts`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := NewMemEnv()
			e := New(Options{Env: env, Tick: 10 * time.Millisecond, Idle: 300 * time.Millisecond})
			rs, err := e.Compile("idle.sql", fmt.Sprintf(`CREATE RULE idle AS SELECT deviceid() AS d, count(*) AS n
FROM 'idle/+' GROUP BY deviceid(), %s DO REPUBLISH 'idle-out/${d}';`, tc.window))
			if err != nil {
				t.Fatal(err)
			}
			e.Apply(rs)
			ctx := context.Background()
			e.Start(ctx)
			defer e.Stop(ctx)
			for i := 0; i < 3; i++ {
				ms := time.Now().UnixMilli()
				if err := e.Process(ctx, &message.Message{Topic: "idle/1", DeviceID: "silent",
					Payload: []byte(fmt.Sprintf(`{"ts":%d}`, ms)), Received: time.Now()}); err != nil {
					t.Fatal(err)
				}
			}
			// the device goes silent: its window must be emitted anyway
			sink := env.Sink("republish")
			waitFor(t, 10*time.Second, "window of the silent device emitted", func() bool { return sink.Count() > 0 })
			var total int
			waitFor(t, 10*time.Second, "all 3 messages counted", func() bool {
				total = 0
				for _, m := range sink.Messages() {
					var n int
					if _, err := fmt.Sscanf(string(m.Payload), `{"d":"silent","n":%d}`, &n); err != nil {
						t.Fatalf("output %s: %v", m.Payload, err)
					}
					if strings.HasPrefix(tc.name, "hopping") {
						n = 0 // a message is in two hopping windows
						total = 3
					}
					total += n
				}
				return total >= 3
			})
			if total != 3 {
				t.Fatalf("counted %d messages, want 3", total)
			}
			if n := rs[0].state.openGroups(); n != 0 {
				t.Fatalf("%d groups still open", n)
			}
		})
	}
}

// TestIdleDisabled: with a negative idle timeout an event-time window
// stays open without traffic (the documented opt-out).
func TestIdleDisabled(t *testing.T) {
	now := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	env := NewMemEnv()
	e := New(Options{Env: env, Idle: -1, Now: func() time.Time { return now }})
	rs, err := e.Compile("idle.sql", `CREATE RULE idle AS SELECT count(*) AS n FROM 'i' GROUP BY TUMBLINGWINDOW(ss, 10) TIMESTAMP BY ts DO REPUBLISH 'o';`)
	if err != nil {
		t.Fatal(err)
	}
	e.Apply(rs)
	ctx := context.Background()
	e.Process(ctx, &message.Message{Topic: "i", DeviceID: "d", Payload: []byte(fmt.Sprintf(`{"ts":%d}`, now.UnixMilli()))})
	now = now.Add(time.Hour)
	e.Tick(ctx)
	if n := env.Sink("republish").Count(); n != 0 {
		t.Fatalf("idle disabled: %d outputs", n)
	}
	// and enabled (default 5s), the same tick closes it
	e.SetIdle(DefaultIdle)
	e.Tick(ctx) // starts nothing new: arrival is set, an hour ago
	if n := env.Sink("republish").Count(); n != 1 {
		t.Fatalf("idle enabled: %d outputs", n)
	}
}
