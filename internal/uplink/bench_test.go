package uplink

import (
	"bytes"
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/testutil/mosq"
)

// BenchmarkDrain measures how fast a backlog of b.N records (200-byte
// payload) drains to a local Mosquitto, from Start to the last PUBACK. Run
// it with an exact count, under the bench lock:
//
//	flock /tmp/outpost-bench.lock go test -run '^$' -bench BenchmarkDrain -benchtime 1000000x ./internal/uplink/
//
// Sub-benchmarks vary Mosquitto's max_inflight_messages, which is also the
// Receive Maximum it announces (the uplink's window); Mosquitto has no
// subscriber, so it acknowledges and discards (max_queued_messages does not
// apply). The drain is bounded (30 s + 100 µs per record): go test's
// -timeout does not apply to benchmarks. Reported: msg/s, MB/s of PUBLISH bytes, and the CPU used by this
// process (uplink + queue) and by Mosquitto, in % of one core.
func BenchmarkDrain(b *testing.B) {
	for _, inflight := range []int{20, 100, 1000} {
		b.Run(fmt.Sprintf("max_inflight=%d", inflight), func(b *testing.B) {
			br := mosq.Start(b, mosq.Options{MaxInflight: inflight})
			cfg := testConfig(br.URL(), LaneConfig{Name: "bulk"})
			h := newHarness(b, cfg, Options{}, fastQueue)
			q := h.queues["bulk"]
			rec := message.Encode(&message.Message{Topic: "sensors/line1/t1", Payload: bytes.Repeat([]byte("x"), 200),
				QoS: 1, DeviceID: "t1", ClientID: "dev-1", Received: time.Now()})
			for range b.N {
				if _, err := q.Append(context.Background(), rec); err != nil {
					b.Fatal(err)
				}
			}
			cpu0, mcpu0 := selfCPU(), br.CPUTime()
			b.ResetTimer()
			t0 := time.Now()
			h.start()
			// go test's -timeout does not cover benchmarks: bound the drain.
			limit := t0.Add(30*time.Second + time.Duration(b.N)*100*time.Microsecond)
			for q.Len() > 0 {
				if time.Now().After(limit) {
					b.Fatalf("drain of %d records not done by %v: %s", b.N, time.Since(t0), describe(h.u.Status()))
				}
				time.Sleep(time.Millisecond)
			}
			el := time.Since(t0)
			b.StopTimer()
			cpu, mcpu := selfCPU()-cpu0, br.CPUTime()-mcpu0
			ls := h.lane("bulk")
			b.ReportMetric(float64(b.N)/el.Seconds(), "msg/s")
			b.ReportMetric(float64(ls.AckedBytes)/el.Seconds()/1e6, "MB/s")
			b.ReportMetric(100*cpu.Seconds()/el.Seconds(), "uplink-cpu-%")
			b.ReportMetric(100*mcpu.Seconds()/el.Seconds(), "mosquitto-cpu-%")
			b.ReportMetric(float64(h.u.Status().Window), "window")
			if ls.Acked != uint64(b.N) || ls.Resent != 0 {
				b.Fatalf("acked %d of %d, resent %d", ls.Acked, b.N, ls.Resent)
			}
		})
	}
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
