package uplink

import (
	"bytes"
	"context"
	"fmt"
	"github.com/outpost-edge/outpost/internal/module"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/config"
	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/queue"
	"github.com/outpost-edge/outpost/internal/testutil/mosq"
)

// harness is an uplink wired to in-memory lane queues.
type harness struct {
	t      testing.TB
	u      *Uplink
	queues map[string]testQueue
	logs   *syncBuf
}

// testQueue is a lane queue the test can append to.
type testQueue interface {
	Queue
	Append(ctx context.Context, data []byte) (uint64, error)
	Len() int
}

// memQueue is an in-memory lane queue with amortised O(1) acknowledgement.
// queue.Mem copies its whole remaining slice on every acknowledgement that
// advances its head (O(backlog) per ack), which makes a 100k-record drain
// take tens of seconds; tests with big backlogs and the benchmark use this.
type memQueue struct {
	mu     sync.Mutex
	cond   chan struct{}
	recs   []queue.Record // recs[head:] are unacknowledged
	head   int
	cursor int // index in recs of the next record Next returns
	acked  map[uint64]bool
	next   uint64
	bytes  int64
}

func newMemQueue() *memQueue {
	return &memQueue{cond: make(chan struct{}), acked: map[uint64]bool{}, next: 1}
}

func (q *memQueue) Append(_ context.Context, data []byte) (uint64, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	r := queue.Record{Seq: q.next, Time: time.Now(), Data: append([]byte(nil), data...)}
	q.next++
	q.recs = append(q.recs, r)
	q.bytes += int64(len(data))
	close(q.cond)
	q.cond = make(chan struct{})
	return r.Seq, nil
}

func (q *memQueue) Next(ctx context.Context) (queue.Record, error) {
	for {
		q.mu.Lock()
		if q.cursor < len(q.recs) {
			r := q.recs[q.cursor]
			q.cursor++
			q.mu.Unlock()
			return r, nil
		}
		wait := q.cond
		q.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return queue.Record{}, ctx.Err()
		}
	}
}

func (q *memQueue) Ack(seq uint64) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.acked[seq] = true
	for q.head < len(q.recs) && q.acked[q.recs[q.head].Seq] {
		delete(q.acked, q.recs[q.head].Seq)
		q.bytes -= int64(len(q.recs[q.head].Data))
		q.recs[q.head] = queue.Record{}
		q.head++
	}
	if q.head > 4096 && q.head > len(q.recs)/2 {
		n := copy(q.recs, q.recs[q.head:])
		q.recs = q.recs[:n]
		q.cursor -= q.head
		q.head = 0
	}
	return nil
}

func (q *memQueue) Rewind() {
	q.mu.Lock()
	q.cursor = q.head
	q.mu.Unlock()
}

func (q *memQueue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.recs) - q.head
}

func (q *memQueue) Backlog() (int64, int64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return int64(len(q.recs) - q.head), q.bytes
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testConfig is a config for broker url with fast reconnects.
func testConfig(url string, lanes ...LaneConfig) Config {
	return Config{
		Enabled: true, Broker: url, NodeID: "n1",
		Reconnect:      ReconnectConfig{Min: config.Duration(20 * time.Millisecond), Max: config.Duration(200 * time.Millisecond)},
		ConnectTimeout: config.Duration(3 * time.Second),
		Lanes:          lanes,
	}
}

// newHarness wires cfg to queue.Mem lanes (or to the queues mk makes).
func newHarness(t testing.TB, cfg Config, o Options, mk ...func() testQueue) *harness {
	t.Helper()
	h := &harness{t: t, queues: map[string]testQueue{}, logs: &syncBuf{}}
	newQ := func() testQueue { return queue.NewMem(0) }
	if len(mk) > 0 {
		newQ = mk[0]
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	o.Queues = func(l LaneConfig) (Queue, error) {
		if q, ok := h.queues[l.Name]; ok {
			return q, nil
		}
		q := newQ()
		h.queues[l.Name] = q
		return q, nil
	}
	h.u = New(o)
	if err := module.Of[Config](h.u).Init(context.Background(), cfg); err != nil {
		t.Fatalf("Init: %v", err)
	}
	t.Cleanup(func() {
		h.stop()
		if t.Failed() {
			t.Logf("uplink log:\n%s", tail(h.logs.String(), 32<<10))
		}
	})
	return h
}

func tail(s string, n int) string {
	if len(s) > n {
		return "...\n" + s[len(s)-n:]
	}
	return s
}

func (h *harness) start() {
	h.t.Helper()
	if err := h.u.Start(context.Background()); err != nil {
		h.t.Fatalf("Start: %v", err)
	}
}

func (h *harness) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.u.Stop(ctx); err != nil {
		h.t.Errorf("Stop: %v", err)
	}
}

// appendSeq appends records first..last to a lane; the local topic is
// t/<lane>, the payload the decimal sequence number.
func (h *harness) appendSeq(lane string, first, last int) {
	h.t.Helper()
	q := h.queues[lane]
	for i := first; i <= last; i++ {
		rec := message.Encode(&message.Message{Topic: "t/" + lane, Payload: []byte(strconv.Itoa(i)), QoS: 1, DeviceID: "d1", Received: time.Now()})
		if _, err := q.Append(context.Background(), rec); err != nil {
			h.t.Fatalf("append: %v", err)
		}
	}
}

func (h *harness) lane(name string) LaneStatus {
	for _, l := range h.u.Status().Lanes {
		if l.Name == name {
			return l
		}
	}
	h.t.Fatalf("no lane %q", name)
	return LaneStatus{}
}

// waitFor polls cond every 5 ms until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// laneSeqs extracts the sequence numbers received for a lane's topic.
func laneSeqs(t testing.TB, msgs []mosq.Message, lane string) []int {
	t.Helper()
	topic := "outpost/n1/t/" + lane
	var out []int
	for _, m := range msgs {
		if m.Topic != topic {
			continue
		}
		n, err := strconv.Atoi(string(m.Payload))
		if err != nil {
			t.Fatalf("payload %q on %s", m.Payload, m.Topic)
		}
		out = append(out, n)
	}
	return out
}

// checkLane asserts that seqs holds every record 1..n, that first
// occurrences are in order, and returns the number of duplicates.
func checkLane(t testing.TB, seqs []int, lane string, n int) (dups int) {
	t.Helper()
	seen := make(map[int]bool, n)
	last := 0
	for _, s := range seqs {
		if seen[s] {
			dups++
			continue
		}
		seen[s] = true
		if s != last+1 {
			t.Fatalf("lane %s: first delivery of %d follows %d: order broken or record lost", lane, s, last)
		}
		last = s
	}
	if last != n {
		t.Fatalf("lane %s: %d of %d records delivered", lane, last, n)
	}
	return dups
}

// haveAll returns a Wait condition: every lane has all of 1..n.
func haveAll(n int, lanes ...string) func([]mosq.Message) bool {
	return func(msgs []mosq.Message) bool {
		need := map[string]map[string]bool{}
		for _, l := range lanes {
			need["outpost/n1/t/"+l] = map[string]bool{}
		}
		for _, m := range msgs {
			if s, ok := need[m.Topic]; ok {
				s[string(m.Payload)] = true
			}
		}
		for _, s := range need {
			if len(s) < n {
				return false
			}
		}
		return true
	}
}

func describe(st Status) string {
	var b strings.Builder
	fmt.Fprintf(&b, "state=%s window=%d reconnects=%d err=%q", st.State, st.Window, st.Reconnects, st.LastError)
	for _, l := range st.Lanes {
		fmt.Fprintf(&b, "\n  %s: backlog=%d published=%d acked=%d resent=%d rejected=%d dead=%d", l.Name, l.Backlog, l.Published, l.Acked, l.Resent, l.Rejected, l.DeadLettered)
	}
	return b.String()
}
