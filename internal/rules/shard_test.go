package rules

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/message"
)

// TestShardedWindowsConcurrent feeds windowed rules from several
// goroutines (many groups, windows closing by message, by timer and at the
// end) and checks that every message is counted exactly once.
func TestShardedWindowsConcurrent(t *testing.T) {
	for _, w := range []string{`TUMBLINGWINDOW(ms, 3)`, `SESSIONWINDOW(ms, 2)`, `HOPPINGWINDOW(ms, 4, 2)`} {
		t.Run(w, func(t *testing.T) {
			env := NewMemEnv()
			e := New(Options{Env: env, Tick: time.Millisecond, Partitions: 8})
			rs, err := e.Compile("c.sql", fmt.Sprintf(`CREATE RULE c AS SELECT deviceid() AS d, count(*) AS n, sum(v) AS s
FROM 'c/+' WHERE changed(v) OR true GROUP BY deviceid(), %s DO REPUBLISH 'out';`, w))
			if err != nil {
				t.Fatal(err)
			}
			e.Apply(rs)
			ctx := context.Background()
			e.Start(ctx)
			const workers, perWorker, devices = 4, 3000, 40
			var wg sync.WaitGroup
			for k := 0; k < workers; k++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < perWorker; i++ {
						// each worker owns its devices: per-device order holds
						dev := fmt.Sprintf("d%d", k+workers*(i%(devices/workers)))
						e.Process(ctx, &message.Message{Topic: "c/x", DeviceID: dev, Payload: []byte(`{"v":1}`)})
					}
				}()
			}
			wg.Wait()
			e.Stop(ctx)
			e.Flush(ctx)
			total := 0
			for _, m := range env.Sink("republish").Messages() {
				var d string
				var n, s int
				if _, err := fmt.Sscanf(string(m.Payload), `{"d":%q,"n":%d,"s":%d}`, &d, &n, &s); err != nil {
					t.Fatalf("%s: %v", m.Payload, err)
				}
				if n != s {
					t.Fatalf("count %d != sum %d in %s", n, s, m.Payload)
				}
				total += n
			}
			want := workers * perWorker
			if w == `HOPPINGWINDOW(ms, 4, 2)` {
				want *= 2 // every message is in two windows
			}
			if total != want {
				t.Fatalf("counted %d, want %d", total, want)
			}
			if n := rs[0].state.openGroups(); n != 0 {
				t.Fatalf("%d groups open after flush", n)
			}
		})
	}
}

// TestShardedSnapshotOrder: many groups spread over the shards keep their
// arrival order through a snapshot and restore.
func TestShardedSnapshotOrder(t *testing.T) {
	now := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	src := `CREATE RULE o AS SELECT deviceid() AS d, count(*) AS n FROM 'o' GROUP BY deviceid(), SESSIONWINDOW(ss, 5) DO REPUBLISH 'out';
CREATE RULE p AS SELECT deviceid() AS d, count(*) AS n FROM 'o' GROUP BY deviceid(), TUMBLINGWINDOW(ss, 10) DO REPUBLISH 'out';`
	ctx := context.Background()
	run := func(snap bool) []string {
		env := NewMemEnv()
		e := New(Options{Env: env, Now: func() time.Time { return now }})
		rs, _ := e.Compile("o.sql", src)
		e.Apply(rs)
		for i := 0; i < 50; i++ {
			e.Process(ctx, &message.Message{Topic: "o", DeviceID: fmt.Sprintf("dev-%02d", (i*7)%50)})
		}
		if snap {
			var buf bytes.Buffer
			if err := e.Snapshot(&buf); err != nil {
				t.Fatal(err)
			}
			env = NewMemEnv()
			e = New(Options{Env: env, Now: func() time.Time { return now }})
			if err := e.Restore(&buf); err != nil {
				t.Fatal(err)
			}
			rs, _ := e.Compile("o.sql", src)
			e.Apply(rs)
		}
		e.Flush(ctx)
		var out []string
		for _, m := range env.Sink("republish").Messages() {
			out = append(out, string(m.Payload))
		}
		return out
	}
	a, b := run(false), run(true)
	if len(a) != 100 || fmt.Sprint(a) != fmt.Sprint(b) {
		t.Fatalf("without snapshot %d outputs, with %d; differ:\n%v\n%v", len(a), len(b), a, b)
	}
	if a[0] != `{"d":"dev-00","n":1}` || a[1] != `{"d":"dev-07","n":1}` {
		t.Fatalf("not in arrival order: %v", a[:2])
	}
}
