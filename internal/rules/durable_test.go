package rules

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/outpost-edge/outpost/internal/message"
)

// heldLane is an AsyncDurable sink whose acceptances complete only when
// the test releases them: it stands for an uplink lane whose fsync has not
// happened yet (the real lane is tested end to end by the kill -9 test in
// cmd/outpost).
type heldLane struct {
	mu      sync.Mutex
	pending []func(error)
	topics  []string
	sync    []string // payloads delivered synchronously (window outputs)
	fail    error
}

func (h *heldLane) Name() string  { return "uplink:l" }
func (h *heldLane) Durable() bool { return true }
func (h *heldLane) Deliver(_ context.Context, m *message.Message) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.sync = append(h.sync, string(m.Payload))
	return h.fail
}
func (h *heldLane) DeliverAsync(m *message.Message, done func(error)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.topics = append(h.topics, m.Topic)
	h.pending = append(h.pending, done)
}

// release completes every held acceptance.
func (h *heldLane) release() int {
	h.mu.Lock()
	p := h.pending
	h.pending = nil
	err := h.fail
	h.mu.Unlock()
	for _, d := range p {
		d(err)
	}
	return len(p)
}

type laneEnv struct {
	*MemEnv
	lane *heldLane
}

func (e laneEnv) Uplink(string) (message.Sink, error) { return e.lane, nil }
func (e laneEnv) Lanes() []string                     { return []string{"l"} }

// TestProcessAsyncWaitsForDurableOutputs: a message's completion (what the
// broker's PUBACK waits for) comes only after every durable output it
// caused, including a window it closed, has been accepted durably; a
// refused output fails it; a message without durable outputs completes at
// once.
func TestProcessAsyncWaitsForDurableOutputs(t *testing.T) {
	lane := &heldLane{}
	env := laneEnv{MemEnv: NewMemEnv(), lane: lane}
	e := New(Options{Env: env})
	rs, err := e.Compile("d.sql", `CREATE RULE fwd AS SELECT v FROM 'in/+' DO UPLINK LANE 'l' TOPIC 'up/${topic(2)}', REPUBLISH 'local/v';
CREATE RULE pairs AS SELECT sum(v) AS s FROM 'in/+' GROUP BY COUNTWINDOW(2) DO UPLINK LANE 'l' TOPIC 'up/pairs';
CREATE RULE local AS SELECT v FROM 'other' DO REPUBLISH 'local/other';`)
	if err != nil {
		t.Fatal(err)
	}
	e.Apply(rs)
	sink, ok := e.Sink().(message.AsyncDurable)
	if !ok || !sink.Durable() {
		t.Fatal("the engine's sink is not durable although the Env has lanes")
	}
	type result struct {
		called bool
		err    error
	}
	var mu sync.Mutex
	results := map[string]*result{}
	send := func(topic string, v int) {
		r := &result{}
		mu.Lock()
		results[fmt.Sprint(topic, v)] = r
		mu.Unlock()
		sink.DeliverAsync(&message.Message{Topic: topic, QoS: 1, DeviceID: "d", Payload: []byte(fmt.Sprintf(`{"v":%d}`, v))}, func(err error) {
			mu.Lock()
			r.called, r.err = true, err
			mu.Unlock()
		})
	}
	state := func(k string) (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		return results[k].called, results[k].err
	}

	send("in/a", 1)
	if called, _ := state("in/a1"); called {
		t.Fatal("completed before its UPLINK output was durable")
	}
	if n := env.Sink("republish").Count(); n != 1 {
		t.Fatalf("republish outputs: %d (the message must be evaluated before DeliverAsync returns)", n)
	}
	lane.release()
	if called, err := state("in/a1"); !called || err != nil {
		t.Fatalf("after the fsync: called %v err %v", called, err)
	}

	// the second message closes the count window: the window output is
	// durable before the window leaves the state (synchronous), the
	// per-message output is waited for
	send("in/b", 2)
	lane.mu.Lock()
	held, synced := len(lane.pending), lane.sync
	lane.mu.Unlock()
	if held != 1 || len(synced) != 1 || synced[0] != `{"s":3}` {
		t.Fatalf("%d outputs held, window outputs %v", held, synced)
	}
	if called, _ := state("in/b2"); called {
		t.Fatal("completed before its outputs were durable")
	}
	lane.release()
	if called, err := state("in/b2"); !called || err != nil {
		t.Fatalf("after the fsync: called %v err %v", called, err)
	}

	// a refused durable output refuses the input
	lane.fail = fmt.Errorf("lane full: %w", message.ErrRejected)
	send("in/c", 3)
	lane.release()
	if called, err := state("in/c3"); !called || !errors.Is(err, message.ErrRejected) {
		t.Fatalf("refused output: called %v err %v", called, err)
	}

	// no durable output: done at once
	send("other", 4)
	if called, err := state("other4"); !called || err != nil {
		t.Fatalf("no durable output: called %v err %v", called, err)
	}
	if got := env.Sink("republish").Count(); got != 4 {
		t.Fatalf("republish outputs: %d", got)
	}

	// without lanes the sink is not durable: QoS 1 is not held for rules
	e2 := New(Options{Env: NewMemEnv()})
	if d := e2.Sink().(message.Durable); d.Durable() {
		t.Error("the engine's sink claims durability with no durable target")
	}
}

// TestCheckpointBeforeCompletion: an input that changes the window of a
// rule with a durable output completes only once a checkpoint holding it
// is on disk; an engine restored from that checkpoint (as after kill -9)
// emits the window with every completed input.
func TestCheckpointBeforeCompletion(t *testing.T) {
	dir := t.TempDir()
	src := `CREATE RULE agg AS SELECT count(*) AS n, sum(v) AS s FROM 'in/+' GROUP BY TUMBLINGWINDOW(hh, 1) DO UPLINK LANE 'l' TOPIC 'up/agg';`
	lane := &heldLane{}
	env := laneEnv{MemEnv: NewMemEnv(), lane: lane}
	e := New(Options{Env: env})
	rs, err := e.Compile("a.sql", src)
	if err != nil {
		t.Fatal(err)
	}
	e.Apply(rs)
	e.SetCheckpointDir(dir)
	ctx := context.Background()
	e.Start(ctx)
	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 1; i <= n; i++ {
		wg.Add(1)
		e.ProcessAsync(&message.Message{Topic: "in/x", QoS: 1, DeviceID: fmt.Sprint("d", i%4), Payload: []byte(fmt.Sprintf(`{"v":%d}`, i))}, func(err error) {
			errs <- err
			wg.Done()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if c := e.Checkpoints(); c == 0 || c > n {
		t.Fatalf("%d checkpoints for %d inputs", c, n)
	}
	// "kill -9": no Stop, no SaveState; a new engine restores the checkpoint
	e2 := New(Options{Env: env})
	if err := e2.LoadState(dir); err != nil {
		t.Fatal(err)
	}
	rs2, _ := e2.Compile("a.sql", src)
	e2.Apply(rs2)
	e2.Flush(ctx)
	lane.mu.Lock()
	got := lane.sync
	lane.mu.Unlock()
	if want := fmt.Sprintf(`{"n":%d,"s":%d}`, n, n*(n+1)/2); len(got) != 1 || got[0] != want {
		t.Fatalf("restored window emitted %v, want %s", got, want)
	}
	e.Stop(ctx)

	// without a checkpoint directory nothing waits
	e3 := New(Options{Env: env})
	rs3, _ := e3.Compile("a.sql", src)
	e3.Apply(rs3)
	e3.Start(ctx)
	defer e3.Stop(ctx)
	called := false
	e3.ProcessAsync(&message.Message{Topic: "in/x", QoS: 1, DeviceID: "d", Payload: []byte(`{"v":1}`)}, func(error) { called = true })
	if !called {
		t.Fatal("waited for a checkpoint with no checkpoint directory")
	}
}

// instantLane is a durable lane that accepts at once (the fsync cost is
// the lane's, measured in internal/queue; here only the checkpoint's).
type instantLane struct{}

func (instantLane) Name() string                                      { return "uplink:l" }
func (instantLane) Durable() bool                                     { return true }
func (instantLane) Deliver(context.Context, *message.Message) error   { return nil }
func (instantLane) DeliverAsync(_ *message.Message, done func(error)) { done(nil) }

type instantEnv struct{ *MemEnv }

func (instantEnv) Uplink(string) (message.Sink, error) { return instantLane{}, nil }
func (instantEnv) Lanes() []string                     { return []string{"l"} }

// BenchmarkCheckpointedWindowInput: QoS 1 inputs into a windowed UPLINK
// rule with `groups` open groups, each waited for until a checkpoint
// holding it is fsynced, from 64 concurrent publishers (one input in flight
// each, like devices waiting for their PUBACK).
func BenchmarkCheckpointedWindowInput(b *testing.B) {
	for _, groups := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprintf("groups=%d", groups), func(b *testing.B) {
			e := New(Options{Env: instantEnv{NewMemEnv()}})
			rs, err := e.Compile("b.sql", `CREATE RULE agg AS SELECT deviceid() AS d, count(*) AS n, avg(temp) AS t FROM 'factory/+/telemetry'
GROUP BY deviceid(), TUMBLINGWINDOW(hh, 1) DO UPLINK LANE 'l' TOPIC 'agg'`)
			if err != nil {
				b.Fatal(err)
			}
			e.Apply(rs)
			ctx := context.Background()
			for i := 0; i < groups; i++ {
				e.Process(ctx, &message.Message{Topic: "factory/l1/telemetry", DeviceID: fmt.Sprint("d", i), Payload: payload200})
			}
			e.SetCheckpointDir(b.TempDir())
			e.Start(ctx)
			defer e.Stop(ctx)
			var next atomic.Int64
			b.SetParallelism(32) // 64 publishers on 2 cores
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				done := make(chan error, 1)
				for pb.Next() {
					dev := fmt.Sprint("d", next.Add(1)%int64(groups))
					e.ProcessAsync(&message.Message{Topic: "factory/l1/telemetry", QoS: 1, DeviceID: dev, Payload: payload200}, func(err error) { done <- err })
					if err := <-done; err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(b.N)/float64(e.Checkpoints()), "inputs/checkpoint")
		})
	}
}
