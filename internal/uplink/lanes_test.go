package uplink

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/module"
	"github.com/outpost-edge/outpost/internal/queue"
)

// The lanes module opens a real disk queue per lane; a lane's sink returns
// from Deliver (and runs DeliverAsync's done) once the record is in the
// queue, refuses a record a full queue rejects as message.ErrRejected, and
// the queues survive a Stop/Start with their records.
func TestLanesSinkQueueAndRestart(t *testing.T) {
	dir := t.TempDir()
	ls := []LaneConfig{{Name: "telemetry"}, {Name: "tiny", Queue: queue.Config{MaxBytes: 256 << 10}}}
	SetLaneDefaults(dir, ls) // on_full: reject_new by default
	if err := ValidateLaneQueues(ls); err != nil {
		t.Fatal(err)
	}
	if got, want := ls[0].Queue.Dir, filepath.Join(dir, "queue", "telemetry"); got != want {
		t.Fatalf("queue dir %s, want %s", got, want)
	}
	l := NewLanes(nil, nil)
	m := module.Of[[]LaneConfig](l)
	ctx := context.Background()
	if err := m.Init(ctx, &ls); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Queue(ls[0]); !errors.Is(err, ErrNoQueue) {
		t.Fatalf("queue before start: %v, want ErrNoQueue", err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	s, ok := l.Sink("telemetry")
	if !ok || s.Name() != SinkPrefix+"telemetry" || !s.Durable() {
		t.Fatalf("sink %v %v", s, ok)
	}
	if _, ok := l.Sinks()[SinkPrefix+"tiny"]; !ok {
		t.Fatalf("sinks %v", l.Sinks())
	}
	if err := s.Deliver(ctx, &message.Message{Topic: "a/b", Payload: []byte("1"), QoS: 1}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	s.DeliverAsync(&message.Message{Topic: "a/b", Payload: []byte("2"), QoS: 1}, func(err error) { done <- err })
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if d := l.Stats()["telemetry"].Depth; d != 2 {
		t.Fatalf("depth %d after two deliveries, want 2", d)
	}
	tiny, _ := l.Sink("tiny")
	var err error
	for i := 0; i < 100 && err == nil; i++ {
		err = tiny.Deliver(ctx, &message.Message{Topic: "a/b", Payload: make([]byte, 16<<10), QoS: 1})
	}
	if !errors.Is(err, message.ErrRejected) || !errors.Is(err, queue.ErrFull) {
		t.Fatalf("full lane: %v, want ErrRejected wrapping queue.ErrFull", err)
	}
	if h := m.Health(); !h.Ready() {
		t.Fatalf("health %+v", h)
	}
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer m.Stop(ctx)
	q, err := l.Queue(ls[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"1", "2"} {
		rec, err := q.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got, err := message.Decode(rec.Data)
		if err != nil || string(got.Payload) != want {
			t.Fatalf("record %q %v, want payload %s", got.Payload, err, want)
		}
	}
}
