package uplink

import (
	"bytes"
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/queue"
	"github.com/outpost-edge/outpost/internal/testutil/mosq"
)

// BenchmarkDrain measures how fast a backlog of b.N records (200-byte
// payload) drains to a local Mosquitto, from Start to the last PUBACK. Run
// it with an exact count, under the bench lock:
//
//	flock /tmp/outpost-bench.lock go test -run '^$' -bench BenchmarkDrain -benchtime 1000000x ./internal/uplink/
//
// The lane queue is the tests' amortised in-memory queue, and queue.Disk
// (fsync never: only the drain is timed; records are read back from the
// page cache). Sub-benchmarks vary Mosquitto's max_inflight_messages, which is also the
// Receive Maximum it announces (the uplink's window); Mosquitto has no
// subscriber, so it acknowledges and discards (max_queued_messages does not
// apply). The drain is bounded (30 s + 100 µs per record): go test's
// -timeout does not apply to benchmarks. Reported: msg/s, MB/s of PUBLISH bytes, and the CPU used by this
// process (uplink + queue) and by Mosquitto, in % of one core.
func BenchmarkDrain(b *testing.B) {
	type run struct {
		inflight int
		disk     bool
	}
	for _, r := range []run{{20, false}, {100, false}, {1000, false}, {1000, true}} {
		name := fmt.Sprintf("max_inflight=%d", r.inflight)
		if r.disk {
			name += "/queue=disk"
		}
		inflight := r.inflight
		b.Run(name, func(b *testing.B) {
			mk := fastQueue
			if r.disk {
				mk = func() testQueue { return openDiskQueue(b) }
			}
			br := mosq.Start(b, mosq.Options{MaxInflight: inflight})
			cfg := testConfig(br.URL(), LaneConfig{Name: "bulk"})
			h := newHarness(b, cfg, Options{}, mk)
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

// diskQueue is queue.Disk with Len for the harness.
type diskQueue struct{ *queue.Disk }

func (d diskQueue) Len() int { return int(d.Stats().Depth) }

// openDiskQueue opens a queue.Disk in a temp dir with fsync never (the
// benchmark measures the drain, not the appends).
func openDiskQueue(b *testing.B) testQueue {
	q, err := queue.Open(queue.Config{Dir: b.TempDir(), Fsync: "never", MaxBytes: 4 << 30}, queue.Options{Name: "bulk"})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { q.Close() })
	return diskQueue{q}
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkBridgePeer is the peer named in issue 3: a local Mosquitto with
// persistence holding a backlog of b.N records (200-byte payload) for a
// bridge (MQTT v5, QoS 1, cleansession false) to a cloud Mosquitto that is
// down; the cloud starts and the bridge drains. The backlog is loaded by
// the uplink itself while the cloud is down, followed by one marker record.
// The drain is timed from the bridge's connection (seen in the cloud's log)
// to the marker's arrival at a subscriber on the cloud (it subscribes to
// the marker topic only, so it does not slow the drain). Run beside
// BenchmarkDrain with the same -benchtime.
func BenchmarkBridgePeer(b *testing.B) {
	for _, inflight := range []int{20, 1000} {
		b.Run(fmt.Sprintf("max_inflight=%d", inflight), func(b *testing.B) {
			cloud := mosq.Start(b, mosq.Options{MaxInflight: inflight})
			cloud.Stop()
			local := mosq.Start(b, mosq.Options{Persistence: true, MaxQueued: -1, MaxInflight: inflight, Extra: fmt.Sprintf(
				"connection cloud\naddress %s\nremote_clientid bridge-local\ntopic # out 1\ncleansession false\n"+
					"bridge_protocol_version mqttv50\nnotifications false\nrestart_timeout 1\nstart_type automatic\n", cloud.Addr)})
			h := newHarness(b, testConfig(local.URL(), LaneConfig{Name: "bulk"}), Options{}, fastQueue)
			q := h.queues["bulk"]
			rec := message.Encode(&message.Message{Topic: "sensors/line1/t1", Payload: bytes.Repeat([]byte("x"), 200),
				QoS: 1, DeviceID: "t1", ClientID: "dev-1", Received: time.Now()})
			for range b.N {
				if _, err := q.Append(context.Background(), rec); err != nil {
					b.Fatal(err)
				}
			}
			q.Append(context.Background(), message.Encode(&message.Message{Topic: "marker", Payload: []byte("end"), QoS: 1}))
			h.start()
			fill := time.Now().Add(30*time.Second + time.Duration(b.N)*100*time.Microsecond)
			for q.Len() > 0 {
				if time.Now().After(fill) {
					b.Fatalf("loading the local broker: %s", describe(h.u.Status()))
				}
				time.Sleep(time.Millisecond)
			}
			h.stop()

			b.ResetTimer()
			lcpu0 := local.CPUTime()
			cloud.Start()
			ccpu0 := cloud.CPUTime()
			sub := mosq.Subscribe(b, cloud, "outpost/n1/marker")
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := cloud.WaitLog(ctx, " as bridge-local "); err != nil {
				b.Fatal(err)
			}
			t0 := time.Now()
			sub.WaitN(b, 1, 30*time.Second+time.Duration(b.N)*100*time.Microsecond)
			el := sub.Messages()[0].At.Sub(t0)
			b.StopTimer()
			lcpu, ccpu := local.CPUTime()-lcpu0, cloud.CPUTime()-ccpu0
			b.ReportMetric(float64(b.N+1)/el.Seconds(), "msg/s")
			b.ReportMetric(100*lcpu.Seconds()/el.Seconds(), "local-mosquitto-cpu-%")
			b.ReportMetric(100*ccpu.Seconds()/el.Seconds(), "cloud-mosquitto-cpu-%")
		})
	}
}
