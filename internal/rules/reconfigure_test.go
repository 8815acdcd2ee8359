package rules

import (
	"context"
	"fmt"
	"github.com/outpost-edge/outpost/internal/module"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/config"
	"github.com/outpost-edge/outpost/internal/message"
)

// TestModuleReconfigureInPlace: every key of the rules section changes on
// the engine the pipeline already holds; an open window keeps counting
// through every change (also a move to another directory holding the same
// rule), and the timer and the directory watch keep running.
func TestModuleReconfigureInPlace(t *testing.T) {
	dir1, dir2 := t.TempDir(), t.TempDir()
	src := `CREATE RULE w AS SELECT count(*) AS n, labels.site AS site FROM 't' GROUP BY TUMBLINGWINDOW(hh, 1) DO REPUBLISH 'o';
CREATE RULE v VERSION 1 AS SELECT 1 AS v FROM 'p' DO REPUBLISH 'pv';
CREATE RULE v VERSION 2 AS SELECT 2 AS v FROM 'p' DO REPUBLISH 'pv';`
	for _, d := range []string{dir1, dir2} {
		os.WriteFile(filepath.Join(d, "w.sql"), []byte(src), 0o644)
	}
	cfg := Config{Dir: dir1, Devices: []Device{{ID: "d1", Labels: map[string]string{"site": "a"}}},
		Rollouts: []Rollout{{Rule: "v", Version: 2, Devices: "deviceid() = 'nobody'"}}}
	env := NewMemEnv()
	ctx := context.Background()
	m := NewModule(env, nil, nil)
	if err := module.Of[Config](m).Init(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer m.Stop(ctx)
	eng := m.Engine()
	sink := eng.Sink() // what the pipeline holds
	fed := 0
	feed := func() {
		t.Helper()
		for i := 0; i < 3; i++ {
			if err := sink.Deliver(ctx, &message.Message{Topic: "t", DeviceID: "d1", Payload: []byte(`{}`)}); err != nil {
				t.Fatal(err)
			}
			fed++
		}
	}
	lastV := func() string {
		env.Sink("republish").Reset()
		sink.Deliver(ctx, &message.Message{Topic: "p", DeviceID: "d1", Payload: []byte(`{}`)})
		ms := env.Sink("republish").Messages()
		if len(ms) != 1 {
			t.Fatalf("outputs of p: %v", ms)
		}
		return string(ms[0].Payload)
	}
	feed()
	if got := lastV(); got != `{"v":1}` {
		t.Fatalf("before the rollout: %s", got)
	}
	steps := []struct {
		name   string
		change func(*Config)
	}{
		{"devices", func(c *Config) { c.Devices[0].Labels = map[string]string{"site": "b"} }},
		{"rollouts", func(c *Config) { c.Rollouts[0].Devices = "labels.site = 'b'" }},
		{"window_tick", func(c *Config) { c.WindowTick = config.Duration(7 * time.Millisecond) }},
		{"idle_timeout", func(c *Config) { c.IdleTimeout = config.Duration(time.Second) }},
		{"max_hops", func(c *Config) { c.MaxHops = 3 }},
		{"device_id_from", func(c *Config) { c.DeviceIDFrom = "topic_level:1" }},
		{"partitions", func(c *Config) { c.Partitions = 3 }},
		{"debounce", func(c *Config) { c.Debounce = config.Duration(5 * time.Millisecond) }},
		{"state_dir", func(c *Config) { c.StateDir = t.TempDir() }},
		{"dir", func(c *Config) { c.Dir = dir2 }},
	}
	for _, st := range steps {
		st.change(&cfg)
		if err := module.Of[Config](m).Reconfigure(ctx, cfg); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if m.Engine() != eng {
			t.Fatalf("%s: the engine was replaced; the pipeline would keep feeding the old one", st.name)
		}
		feed()
	}
	if got := lastV(); got != `{"v":2}` {
		t.Errorf("after the rollout: %s", got)
	}
	if eng.idle.Load() != int64(time.Second) || eng.maxHops.Load() != 3 || len(*eng.parts.Load()) != 3 {
		t.Errorf("settings not applied: idle %v max_hops %d partitions %d", time.Duration(eng.idle.Load()), eng.maxHops.Load(), len(*eng.parts.Load()))
	}
	if d := (*eng.devID.Load())(&message.Message{Topic: "x/y", ClientID: "c"}); d != "x" {
		t.Errorf("device_id_from not applied: %q", d)
	}
	// the watch follows the new directory
	os.WriteFile(filepath.Join(dir2, "extra.sql"), []byte(`CREATE RULE extra AS SELECT 1 AS x FROM 'e' DO REPUBLISH 'eo';`), 0o644)
	waitFor(t, 10*time.Second, "file added to the new directory loaded", func() bool { return len(eng.Rules()) == 4 })
	// the open window kept counting through every change
	env.Sink("republish").Reset()
	eng.Flush(ctx)
	ms := env.Sink("republish").Messages()
	if want := fmt.Sprintf(`{"n":%d,"site":"b"}`, fed); len(ms) != 1 || string(ms[0].Payload) != want {
		t.Fatalf("window after reconfiguring: %v, want %s", ms, want)
	}
	// an unreadable new directory is refused and the old one stays
	bad := cfg
	bad.Dir = filepath.Join(dir2, "w.sql", "sub")
	if err := module.Of[Config](m).Reconfigure(ctx, bad); err == nil {
		t.Error("a directory below a file was accepted")
	}
	if m.Store().Dir() != dir2 || len(eng.Rules()) != 4 {
		t.Errorf("after a refused dir: store %s, %d rules", m.Store().Dir(), len(eng.Rules()))
	}
}

// TestSetPartitionsUnderLoad changes the number of lock stripes while
// devices are evaluated concurrently: every message is counted exactly once
// and per-device state stays consistent.
func TestSetPartitionsUnderLoad(t *testing.T) {
	env := NewMemEnv()
	e := New(Options{Env: env, Partitions: 8})
	rs, err := e.Compile("c.sql", `CREATE RULE c AS SELECT deviceid() AS d, count(*) AS n
FROM 'c/+' GROUP BY deviceid(), TUMBLINGWINDOW(hh, 1) DO REPUBLISH 'out';
CREATE RULE s AS SELECT v FROM 'c/+' WHERE v != lag(v) + 1 AND lag(v) IS NOT NULL DO REPUBLISH 'gap';`)
	if err != nil {
		t.Fatal(err)
	}
	e.Apply(rs)
	ctx := context.Background()
	const workers, perWorker = 4, 2000
	var wg sync.WaitGroup
	for k := 0; k < workers; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perWorker; i++ {
				e.Process(ctx, &message.Message{Topic: "c/x", DeviceID: fmt.Sprintf("d%d", k), Payload: []byte(fmt.Sprintf(`{"v":%d}`, i))})
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for i := 0; ; i++ {
		select {
		case <-done:
		default:
			e.SetPartitions(1 + i%7)
			continue
		}
		break
	}
	if n := env.Sink("republish").Count(); n != 0 {
		for _, m := range env.Sink("republish").Messages() {
			t.Logf("%s %s", m.Topic, m.Payload)
		}
		t.Fatalf("%d per-device sequence breaks", n)
	}
	e.Flush(ctx)
	total := 0
	for _, m := range env.Sink("republish").Messages() {
		var d string
		var n int
		fmt.Sscanf(string(m.Payload), `{"d":%q,"n":%d}`, &d, &n)
		total += n
	}
	if total != workers*perWorker {
		t.Fatalf("counted %d, want %d", total, workers*perWorker)
	}
}
