package function

import (
	"context"
	"os"
	"runtime"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/message"
)

// Benchmarks for docs/BENCHMARKS.md (Functions). Run:
//
//	flock /tmp/outpost-bench.lock go test -run XXX -bench . -benchtime 2s ./internal/function/

var payload200 = []byte(`{"device":"press-17","temp":21.5,"vibration":0.93,"rpm":1480,"status":"running","ts":1733250000123,"site":"plant-2","line":"L4","pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}`)

func tinyGuest() []byte { return guest(i32c(0), bodyResult, num42) }

// Cold start: Load of an already-compiled module (compilation cache hit)
// plus its first invocation (instantiate + call).
func BenchmarkColdStart(b *testing.B) {
	for _, c := range []struct {
		name string
		wasm func(b *testing.B) []byte
	}{
		{"tiny", func(*testing.B) []byte { return tinyGuest() }},
		{"go-anomaly", func(b *testing.B) []byte {
			w, err := os.ReadFile(buildExample(b, "anomaly"))
			if err != nil {
				b.Fatal(err)
			}
			return w
		}},
	} {
		wasm := c.wasm(b)
		b.Run(c.name+"/compiled", func(b *testing.B) {
			rt := newRT(b)
			man := testManifest("cold")
			ctx := context.Background()
			m, err := rt.Load(ctx, man, wasm, LoadOptions{}) // warms the cache
			if err != nil {
				b.Fatal(err)
			}
			_ = m.Close(ctx)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				m, err := rt.Load(ctx, man, wasm, LoadOptions{})
				if err != nil {
					b.Fatal(err)
				}
				if err := m.OnMessage(ctx, &Input{Topic: "in/x", Payload: payload200}, nil); err != nil && c.name == "tiny" {
					b.Fatal(err)
				}
				_ = m.Close(ctx)
			}
		})
		b.Run(c.name+"/with-compile", func(b *testing.B) {
			ctx := context.Background()
			for i := 0; i < b.N; i++ {
				rt, err := NewRuntime(RuntimeOptions{})
				if err != nil {
					b.Fatal(err)
				}
				m, err := rt.Load(ctx, testManifest("cold"), wasm, LoadOptions{})
				if err != nil {
					b.Fatal(err)
				}
				_ = m.OnMessage(ctx, &Input{Topic: "in/x", Payload: payload200}, nil)
				_ = m.Close(ctx)
				_ = rt.Close(ctx)
			}
		})
	}
}

// Warm invocation overhead: a trivial function on a 200-byte message
// (encode, alloc call, copy in, call, return).
func BenchmarkWarmCall(b *testing.B) {
	rt := newRT(b)
	m := load(b, rt, testManifest("warm"), tinyGuest())
	ctx := context.Background()
	in := &Input{Topic: "sensors/press-17/vibration", DeviceID: "press-17", Payload: payload200}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := m.OnMessage(ctx, in, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// A realistic Go-built function on one core: parse the JSON payload,
// per-device state get/put, compare, emit on anomalies (examples/functions/anomaly).
func BenchmarkRealistic(b *testing.B) {
	rt := exampleRT(b)
	m := loadExample(b, rt, "anomaly", LoadOptions{})
	// The example's 100ms limit is for a gateway; on this shared machine a
	// Go GC cycle inside the guest can take longer (counted, not hidden:
	// see max-ms).
	m.Manifest.Limits.Timeout = 5e9
	ctx := context.Background()
	payloads := [][]byte{[]byte(`{"temp":20.5,"vibration":1.1}`), []byte(`{"temp":21,"vibration":0.9}`), []byte(`{"temp":95,"vibration":4}`)}
	emit := func(context.Context, string, []byte) error { return nil }
	prev := runtime.GOMAXPROCS(1)
	defer runtime.GOMAXPROCS(prev)
	b.Run("on_message", func(b *testing.B) {
		b.ReportAllocs()
		start := time.Now()
		var worst time.Duration
		for i := 0; i < b.N; i++ {
			t0 := time.Now()
			if err := m.OnMessage(ctx, &Input{Topic: "sensors/d/vibration", DeviceID: "d", Payload: payloads[i%3]}, emit); err != nil {
				b.Fatal(err)
			}
			worst = max(worst, time.Since(t0))
		}
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
		b.ReportMetric(worst.Seconds()*1000, "max-ms")
	})
	b.Run("call", func(b *testing.B) {
		args := []Value{{Kind: KindNum, Num: 20}, {Kind: KindNum, Num: 1}}
		b.ReportAllocs()
		start := time.Now()
		for i := 0; i < b.N; i++ {
			if _, err := m.Call(ctx, "anomaly", "d", args); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "calls/s")
	})
}

// Instances: start n instances of one function; report the time and the
// memory per instance (Go heap + linear memory, from runtime.MemStats).
func BenchmarkInstances(b *testing.B) {
	for _, c := range []struct {
		name string
		n    int
		wasm func(b *testing.B) []byte
	}{
		{"tiny-1000", 1000, func(*testing.B) []byte { return tinyGuest() }},
		{"go-anomaly-100", 100, func(b *testing.B) []byte {
			w, err := os.ReadFile(buildExample(b, "anomaly"))
			if err != nil {
				b.Fatal(err)
			}
			return w
		}},
	} {
		wasm := c.wasm(b)
		b.Run(c.name, func(b *testing.B) {
			rt := newRT(b)
			ctx := context.Background()
			man := testManifest("inst")
			man.Limits.Instances = c.n
			for i := 0; i < b.N; i++ {
				m, err := rt.Load(ctx, man, wasm, LoadOptions{})
				if err != nil {
					b.Fatal(err)
				}
				runtime.GC()
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				start := time.Now()
				if err := m.Warm(ctx, c.n); err != nil {
					b.Fatal(err)
				}
				took := time.Since(start)
				runtime.GC()
				runtime.ReadMemStats(&after)
				b.ReportMetric(took.Seconds()*1000, "ms/start-all")
				b.ReportMetric(float64(after.Sys-before.Sys)/float64(c.n)/1024, "sysKiB/instance")
				b.ReportMetric(float64(after.HeapInuse-before.HeapInuse)/float64(c.n)/1024, "heapKiB/instance")
				_ = m.Close(ctx)
			}
		})
	}
}

// The floor of a standard-Go guest: examples/functions/noop returns its
// argument (call) or nothing (on_message); the difference to
// BenchmarkWarmCall is the Go runtime's cost per wasmexport call.
func BenchmarkGoFloor(b *testing.B) {
	rt := exampleRT(b)
	m := loadExample(b, rt, "noop", LoadOptions{})
	ctx := context.Background()
	b.Run("call", func(b *testing.B) {
		args := []Value{{Kind: KindNum, Num: 1}}
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, err := m.Call(ctx, "noop", "d", args); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("on_message", func(b *testing.B) {
		in := &Input{Topic: "noop/x", DeviceID: "d", Payload: payload200}
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if err := m.OnMessage(ctx, in, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// Hot swap under load: one goroutine delivers messages to the tiny tag
// function (each output recorded), p50/p99 latency of Deliver with no swap
// and with a new version swapped in every 100 ms; lost or duplicated
// outputs fail the benchmark.
func BenchmarkHotSwap(b *testing.B) {
	for _, swap := range []bool{false, true} {
		name := "steady"
		if swap {
			name = "swap-every-100ms"
		}
		b.Run(name, func(b *testing.B) {
			dir := b.TempDir()
			fdir := dir + "/tag"
			writeFn(b, fdir, 1, "", tagGuest(1))
			r, sink := newReg(b, dir, nil, nil)
			if err := r.Reload(context.Background()); err != nil {
				b.Fatal(err)
			}
			stop := make(chan struct{})
			swaps := 0
			done := make(chan struct{})
			go func() {
				defer close(done)
				t := time.NewTicker(100 * time.Millisecond)
				defer t.Stop()
				for v := 2; swap; v++ {
					select {
					case <-stop:
						return
					case <-t.C:
					}
					writeFn(b, fdir, v, "", tagGuest(v))
					if err := r.Reload(context.Background()); err != nil {
						b.Error(err)
						return
					}
					swaps++
				}
			}()
			lat := make([]time.Duration, 0, b.N)
			ctx := context.Background()
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				if err := r.Deliver(ctx, &message.Message{Topic: "in/d", DeviceID: "d", Payload: []byte(strconv.Itoa(i))}); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			el := time.Since(start)
			b.StopTimer()
			close(stop)
			<-done
			if got := len(sink.take()); got != b.N {
				b.Fatalf("%d outputs for %d messages", got, b.N)
			}
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			b.ReportMetric(float64(b.N)/el.Seconds(), "msgs/s")
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-us")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-us")
			b.ReportMetric(float64(swaps), "swaps")
		})
	}
}
