package rules

import (
	"context"
	"errors"
	"fmt"
	"sync"
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
	fail    error
}

func (h *heldLane) Name() string  { return "uplink:l" }
func (h *heldLane) Durable() bool { return true }
func (h *heldLane) Deliver(context.Context, *message.Message) error {
	return errors.New("heldLane: Deliver called; ProcessAsync must use DeliverAsync")
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

	// the second message closes the count window: it waits for both outputs
	send("in/b", 2)
	lane.mu.Lock()
	held := len(lane.pending)
	lane.mu.Unlock()
	if held != 2 {
		t.Fatalf("%d outputs held, want the per-message and the window output (topics %v)", held, lane.topics)
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
