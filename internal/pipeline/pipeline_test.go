package pipeline

import (
	"context"
	"errors"
	"fmt"
	"github.com/outpost-edge/outpost/internal/sink"
	"sync"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/message"
)

// memSink records deliveries; optionally slow, durable or failing.
type memSink struct {
	name    string
	mu      sync.Mutex
	got     []*message.Message
	delay   time.Duration
	durable bool
	fail    error
	gate    chan struct{} // when set, Deliver waits for it
}

func (s *memSink) Name() string  { return s.name }
func (s *memSink) Durable() bool { return s.durable }
func (s *memSink) Deliver(_ context.Context, m *message.Message) error {
	if s.gate != nil {
		<-s.gate
	}
	if s.delay > 0 {
		time.Sleep(s.delay)
	}
	if s.fail != nil {
		return s.fail
	}
	s.mu.Lock()
	s.got = append(s.got, m)
	s.mu.Unlock()
	return nil
}
func (s *memSink) count() int { s.mu.Lock(); defer s.mu.Unlock(); return len(s.got) }

func start(t *testing.T, c *Config, sinks ...*memSink) *Pipeline {
	t.Helper()
	var ss []message.Sink
	for _, s := range sinks {
		ss = append(ss, s)
	}
	return startSinks(t, c, ss...)
}

func startSinks(t *testing.T, c *Config, sinks ...message.Sink) *Pipeline {
	t.Helper()
	reg := sink.New(sink.Options{})
	var names []string
	for _, s := range sinks {
		reg.Provide(s.Name(), func(string) (message.Sink, error) { return s, nil })
		names = append(names, s.Name())
	}
	c.SetDefaults()
	if err := c.Validate(names...); err != nil {
		t.Fatal(err)
	}
	p := New(Options{Sinks: reg})
	if err := p.Init(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(context.Background()) })
	return p
}

func TestOrderPerTopicAcrossPartitions(t *testing.T) {
	s := &memSink{name: "s"}
	p := start(t, &Config{Partitions: 8, Routes: []Route{{From: []string{"#"}, To: []string{"s"}}}}, s)
	const topics, per = 20, 500
	var wg sync.WaitGroup
	for i := 0; i < topics; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for j := 0; j < per; j++ {
				if err := p.Submit(&message.Message{Topic: fmt.Sprintf("t/%d", i), ClientID: fmt.Sprintf("c%d", i%7), QoS: 1, Payload: []byte(fmt.Sprint(j))}); err != nil {
					t.Error(err)
				}
			}
		}(i)
	}
	wg.Wait()
	if err := p.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s.count() != topics*per {
		t.Fatalf("delivered %d, want %d", s.count(), topics*per)
	}
	next := map[string]int{}
	for _, m := range s.got {
		if string(m.Payload) != fmt.Sprint(next[m.Topic]) {
			t.Fatalf("topic %s: got seq %s, want %d", m.Topic, m.Payload, next[m.Topic])
		}
		next[m.Topic]++
	}
}

func TestQoS0ShedWhenFullQoS1Waits(t *testing.T) {
	s := &memSink{name: "s", gate: make(chan struct{})}
	p := start(t, &Config{Partitions: 1, QueueSize: 4, Routes: []Route{{From: []string{"a/#"}, To: []string{"s"}}}}, s)
	// The worker takes the first message and blocks in the sink.
	p.Submit(&message.Message{Topic: "a/x"})
	for d, _ := p.depth(); d != 0; d, _ = p.depth() {
		time.Sleep(time.Millisecond)
	}
	shed := 0
	for i := 0; i < 10; i++ {
		if err := p.Submit(&message.Message{Topic: "a/x"}); errors.Is(err, ErrOverload) {
			shed++
		}
	}
	if shed != 6 {
		close(s.gate)
		t.Fatalf("shed %d QoS 0 messages with a blocked sink and a 4-slot queue, want 6", shed)
	}
	done := make(chan error)
	go func() { done <- p.Submit(&message.Message{Topic: "a/x", QoS: 1}) }()
	select {
	case <-done:
		close(s.gate)
		t.Fatal("QoS 1 submit returned while the queue was full")
	case <-time.After(100 * time.Millisecond):
	}
	close(s.gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// unrouted topics never wait
	if err := p.Submit(&message.Message{Topic: "b", QoS: 1}); err != nil {
		t.Fatal(err)
	}
}

func TestDurableSinkGatesAndRejects(t *testing.T) {
	d := &memSink{name: "queue", durable: true, delay: 20 * time.Millisecond}
	bad := &memSink{name: "full", durable: true, fail: fmt.Errorf("lane full: %w", message.ErrRejected)}
	p := start(t, &Config{Routes: []Route{
		{From: []string{"ok/#"}, To: []string{"queue"}},
		{From: []string{"no/#"}, To: []string{"full"}},
	}}, d, bad)
	t0 := time.Now()
	if err := p.Submit(&message.Message{Topic: "ok/1", QoS: 1}); err != nil {
		t.Fatal(err)
	}
	if time.Since(t0) < 20*time.Millisecond || d.count() != 1 {
		t.Fatal("QoS 1 submit returned before the durable sink accepted the message")
	}
	if err := p.Submit(&message.Message{Topic: "no/1", QoS: 1}); !errors.Is(err, message.ErrRejected) {
		t.Fatalf("durable refusal not returned: %v", err)
	}
	// QoS 0 never waits for durability
	if err := p.Submit(&message.Message{Topic: "no/1"}); err != nil {
		t.Fatal(err)
	}
}

func TestStopDrainsEverything(t *testing.T) {
	s := &memSink{name: "s", delay: time.Millisecond}
	p := start(t, &Config{Partitions: 2, QueueSize: 1000, Routes: []Route{{From: []string{"#"}, To: []string{"s"}}}}, s)
	for i := 0; i < 200; i++ {
		p.Submit(&message.Message{Topic: fmt.Sprint(i % 7)})
	}
	if err := p.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s.count() != 200 {
		t.Fatalf("drained %d of 200", s.count())
	}
	if err := p.Submit(&message.Message{Topic: "x"}); !errors.Is(err, ErrStopped) {
		t.Fatalf("submit after stop: %v", err)
	}
}

func TestReconfigureSwapsRoutesWithoutLoss(t *testing.T) {
	a, b := &memSink{name: "a"}, &memSink{name: "b"}
	c := &Config{Partitions: 4, Routes: []Route{{From: []string{"#"}, To: []string{"a"}}}}
	p := start(t, c, a, b)
	stop := make(chan struct{})
	var sent int
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := p.Submit(&message.Message{Topic: fmt.Sprint(i % 16), QoS: 1}); err != nil {
				t.Error(err)
				return
			}
			sent++
		}
	}()
	waitCount(t, a, 1) // traffic flows to a before the swap
	c2 := &Config{Partitions: 4, Routes: []Route{{From: []string{"#"}, To: []string{"b"}}}}
	c2.SetDefaults()
	if err := p.Reconfigure(context.Background(), c2); err != nil {
		t.Fatal(err)
	}
	waitCount(t, b, 1) // and to b after it
	close(stop)
	<-done
	p.Stop(context.Background())
	if a.count() == 0 || b.count() == 0 || a.count()+b.count() != sent {
		t.Fatalf("a=%d b=%d sent=%d", a.count(), b.count(), sent)
	}
}

// waitCount polls until s has received at least n messages.
func waitCount(t *testing.T, s *memSink, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.count() < n {
		if time.Now().After(deadline) {
			t.Fatalf("sink %s received %d messages, want %d", s.name, s.count(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestDeviceIDFromTopicLevel(t *testing.T) {
	s := &memSink{name: "s"}
	p := start(t, &Config{DeviceID: DeviceID{From: DeviceFromTopic, Level: 2}, Routes: []Route{{From: []string{"#"}, To: []string{"s"}}}}, s)
	p.Submit(&message.Message{Topic: "factory/press-7/temp", ClientID: "gw", QoS: 1})
	p.Submit(&message.Message{Topic: "short", ClientID: "gw", QoS: 1})
	p.Stop(context.Background())
	ids := map[string]string{}
	for _, m := range s.got {
		ids[m.Topic] = m.DeviceID
	}
	if ids["factory/press-7/temp"] != "press-7" || ids["short"] != "gw" {
		t.Fatalf("device ids %v", ids)
	}
}

func TestValidate(t *testing.T) {
	c := &Config{Partitions: 0, Routes: []Route{{From: []string{"a/#/b"}, To: []string{"nope"}}},
		Sinks: []Sink{{Name: "f", Type: "ftp"}}}
	c.SetDefaults()
	err := c.Validate()
	for _, want := range []string{"routes[0].from[0]", "routes[0].to[0]: unknown sink \"nope\"", "sinks[0].type"} {
		if err == nil || !contains(err.Error(), want) {
			t.Errorf("missing %q in %v", want, err)
		}
	}
}

func contains(s, sub string) bool {
	return len(s) >= len(sub) && (s == sub || len(sub) == 0 || index(s, sub) >= 0)
}
func index(s, sub string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return i
		}
	}
	return -1
}

func BenchmarkSubmitQoS0(b *testing.B) {
	s := &memSink{name: "s"}
	reg := sink.New(sink.Options{})
	reg.Provide("s", func(string) (message.Sink, error) { return nullSink{}, nil })
	p := New(Options{Sinks: reg})
	c := &Config{Routes: []Route{{From: []string{"factory/+/sensors/#"}, To: []string{"s"}}}}
	c.SetDefaults()
	p.Init(context.Background(), c)
	p.Start(context.Background())
	defer p.Stop(context.Background())
	_ = s
	m := &message.Message{Topic: "factory/l1/sensors/t1", Payload: make([]byte, 200), QoS: 1}
	b.ReportAllocs()
	for b.Loop() {
		p.Submit(m)
	}
}

type nullSink struct{}

func (nullSink) Name() string                                    { return "s" }
func (nullSink) Deliver(context.Context, *message.Message) error { return nil }

// asyncSink is an AsyncDurable sink (like a durable uplink lane) whose
// acceptances the test completes by hand, in call order.
type asyncSink struct {
	name  string
	mu    sync.Mutex
	calls []func(error) // done of each DeliverAsync not yet completed
	seen  int
}

func (s *asyncSink) Name() string  { return s.name }
func (s *asyncSink) Durable() bool { return true }
func (s *asyncSink) Deliver(context.Context, *message.Message) error {
	return errors.New("asyncSink: Deliver called; the pipeline must use DeliverAsync")
}
func (s *asyncSink) DeliverAsync(_ *message.Message, done func(error)) {
	s.mu.Lock()
	s.calls = append(s.calls, done)
	s.seen++
	s.mu.Unlock()
}

// complete completes the oldest pending acceptance with err.
func (s *asyncSink) complete(err error) {
	s.mu.Lock()
	done := s.calls[0]
	s.calls = s.calls[1:]
	s.mu.Unlock()
	done(err)
}

func (s *asyncSink) waitSeen(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.mu.Lock()
		seen := s.seen
		s.mu.Unlock()
		if seen >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("sink saw %d messages, want %d", seen, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestSubmitAsyncQoS1: the asynchronous QoS 1 path (the broker's PUBACK
// callback). done runs once the async durable sink accepted the message,
// not before; carries the sink's refusal; comes in submission order for one
// device; and runs at once for QoS 0 and for unrouted messages.
func TestSubmitAsyncQoS1(t *testing.T) {
	lane := &asyncSink{name: "lane"}
	p := startSinks(t, &Config{Routes: []Route{{From: []string{"dev/#"}, To: []string{"lane"}}}}, lane)

	results := make(chan string, 8)
	submit := func(topic string, qos byte) {
		p.SubmitAsync(&message.Message{Topic: topic, QoS: qos, DeviceID: "d1"}, func(err error) {
			results <- fmt.Sprintf("%s %v", topic, err)
		})
	}
	submit("dev/1", 1)
	submit("dev/2", 1)
	lane.waitSeen(t, 2)
	select {
	case r := <-results:
		t.Fatalf("done before the durable sink accepted: %s", r)
	default:
	}

	lane.complete(nil)
	if r := <-results; r != "dev/1 <nil>" {
		t.Fatalf("first completion %q, want dev/1 <nil>", r)
	}
	lane.complete(fmt.Errorf("lane full: %w", message.ErrRejected))
	if r := <-results; r != "dev/2 lane full: message rejected" {
		t.Fatalf("second completion %q, want the refusal", r)
	}

	// QoS 0 is delivered to the lane but its completion is not waited for.
	submit("dev/3", 0)
	if r := <-results; r != "dev/3 <nil>" {
		t.Fatalf("QoS 0: %q", r)
	}
	// Unrouted: nothing to wait for.
	submit("other/1", 1)
	if r := <-results; r != "other/1 <nil>" {
		t.Fatalf("unrouted: %q", r)
	}
	lane.waitSeen(t, 3)
	lane.complete(nil) // the QoS 0 delivery's callback: no second done
	select {
	case r := <-results:
		t.Fatalf("extra completion %q", r)
	case <-time.After(20 * time.Millisecond):
	}
}
