package rules

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/message"
)

// payload200 is a typical 200-byte sensor document.
var payload200 = []byte(`{"device_id":"sensor-0042","site":"plant-2","temp":81.25,"humidity":40.5,"quality":"good","ts":1732580000000,"fw":"1.4.2","tags":["a","b"],"pos":{"lat":48.1,"lon":11.5},"battery":97,"rssi":-61}`)

func benchEngine(tb testing.TB, src string) (*Engine, *MemEnv) {
	env := NewMemEnv()
	env.Sink("republish").Discard = true
	e := New(Options{Env: env})
	rules, err := e.Compile("bench.sql", src)
	if err != nil {
		tb.Fatal(err)
	}
	e.Apply(rules)
	return e, env
}

const filterProjection = `CREATE RULE hot AS SELECT device_id, temp, humidity FROM 'factory/+/telemetry' WHERE temp > 80 AND quality = 'good' DO REPUBLISH 'alerts/hot';`

func TestFilterProjectionAllocs(t *testing.T) {
	e, env := benchEngine(t, filterProjection)
	m := &message.Message{Topic: "factory/l1/telemetry", Payload: payload200, DeviceID: "sensor-0042", Received: time.Now()}
	ctx := context.Background()
	allocs := testing.AllocsPerRun(1000, func() {
		if err := e.Process(ctx, m); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 2 {
		t.Errorf("%.1f allocations per message, want <= 2", allocs)
	}
	if n := env.Sink("republish").Count(); n < 1000 {
		t.Errorf("emitted %d", n)
	}
}

func BenchmarkFilterProjection(b *testing.B) {
	e, env := benchEngine(b, filterProjection)
	m := &message.Message{Topic: "factory/l1/telemetry", Payload: payload200, DeviceID: "sensor-0042", Received: time.Now()}
	ctx := context.Background()
	b.ReportAllocs()
	b.SetBytes(int64(len(payload200)))
	for b.Loop() {
		e.Process(ctx, m)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msg/s")
	_ = env
}

func BenchmarkFilterProjectionParallel(b *testing.B) {
	e, _ := benchEngine(b, filterProjection)
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			m := &message.Message{Topic: "factory/l1/telemetry", Payload: payload200, DeviceID: fmt.Sprint("d", i%64)}
			e.Process(ctx, m)
		}
	})
}

func BenchmarkTumblingAvg(b *testing.B) {
	e, _ := benchEngine(b, `CREATE RULE avg AS SELECT deviceid() AS d, avg(temp) AS t, count(*) AS n FROM 'factory/+/telemetry' GROUP BY deviceid(), TUMBLINGWINDOW(ss, 10) DO REPUBLISH 'agg';`)
	m := &message.Message{Topic: "factory/l1/telemetry", Payload: payload200, DeviceID: "sensor-0042"}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		e.Process(ctx, m)
	}
}

func BenchmarkDeadband(b *testing.B) {
	e, _ := benchEngine(b, `CREATE RULE db AS SELECT temp FROM 'factory/+/telemetry' WHERE deadband(temp, 0.5) DO REPUBLISH 'db';`)
	m := &message.Message{Topic: "factory/l1/telemetry", Payload: payload200, DeviceID: "sensor-0042"}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		e.Process(ctx, m)
	}
}

// BenchmarkRules1000 has 1,000 rules with distinct topic filters; each
// message matches one of them.
func BenchmarkRules1000(b *testing.B) {
	env := NewMemEnv()
	env.Sink("republish").Discard = true
	e := New(Options{Env: env})
	var all []*Rule
	for i := 0; i < 1000; i++ {
		rs, err := e.Compile("r.sql", fmt.Sprintf(`CREATE RULE r%d AS SELECT temp, humidity FROM 'site/%d/+/telemetry' WHERE temp > 80 DO REPUBLISH 'out/%d';`, i, i, i))
		if err != nil {
			b.Fatal(err)
		}
		all = append(all, rs...)
	}
	e.Apply(all)
	msgs := make([]*message.Message, 1000)
	for i := range msgs {
		msgs[i] = &message.Message{Topic: fmt.Sprintf("site/%d/dev-%d/telemetry", i, i%7), Payload: payload200, DeviceID: fmt.Sprint("dev-", i)}
	}
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		e.Process(ctx, msgs[i%1000])
		i++
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msg/s")
}

// parallelDevices runs e.Process from GOMAXPROCS goroutines over 64
// devices (messages built up front).
func parallelDevices(b *testing.B, e *Engine) {
	msgs := make([]*message.Message, 64)
	for i := range msgs {
		msgs[i] = &message.Message{Topic: "factory/l1/telemetry", Payload: payload200, DeviceID: fmt.Sprint("d", i)}
	}
	ctx := context.Background()
	var next atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := int(next.Add(7))
		for pb.Next() {
			i++
			e.Process(ctx, msgs[i%64])
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msg/s")
}

// BenchmarkTumblingAvgParallel: the windowed rule of BenchmarkTumblingAvg
// fed by every core, 64 devices (64 groups).
func BenchmarkTumblingAvgParallel(b *testing.B) {
	e, _ := benchEngine(b, `CREATE RULE avg AS SELECT deviceid() AS d, avg(temp) AS t, count(*) AS n FROM 'factory/+/telemetry' GROUP BY deviceid(), TUMBLINGWINDOW(ss, 10) DO REPUBLISH 'agg';`)
	parallelDevices(b, e)
}

// BenchmarkDeadbandParallel: per-device state fed by every core.
func BenchmarkDeadbandParallel(b *testing.B) {
	e, _ := benchEngine(b, `CREATE RULE db AS SELECT temp FROM 'factory/+/telemetry' WHERE deadband(temp, 0.5) DO REPUBLISH 'db';`)
	parallelDevices(b, e)
}
