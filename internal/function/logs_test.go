package function

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// logGuest logs "tick" (level info) on every message and emits nothing.
func logGuest() []byte {
	return guest(cat(i32c(0), i32c(0), i32c(4), call(fnLog), i32c(0)), cat(i32c(0)), []byte("tick"))
}

// syncBuf is a goroutine-safe log sink.
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

// Every line is in the ring (the last LogRingSize), but the agent log gets
// at most LogBurst lines at once plus LogRate per second, and then one
// note saying how many were held back.
func TestFunctionLogsRingAndRateLimit(t *testing.T) {
	var agentLog syncBuf
	set := metrics.NewSet()
	rt, err := NewRuntime(RuntimeOptions{Log: slog.New(slog.NewTextHandler(&agentLog, nil)), Metrics: set})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close(context.Background())
	m := load(t, rt, testManifest("chatty"), logGuest())
	ctx := context.Background()
	const n = LogRingSize + 200
	start := time.Now()
	for i := range n {
		if err := m.OnMessage(ctx, &Input{Topic: "in/x", DeviceID: fmt.Sprint("d", i%3)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	inLog := strings.Count(agentLog.String(), "msg=tick")
	if max := LogBurst + int(elapsed.Seconds()*LogRate) + 1; inLog > max || inLog < LogBurst {
		t.Errorf("agent log got %d of %d lines in %v, want %d..%d", inLog, n, elapsed, LogBurst, max)
	}
	var buf bytes.Buffer
	set.WritePrometheus(&buf)
	if want := fmt.Sprintf(`outpost_function_log_suppressed_total{function="chatty"} %d`, n-inLog); !strings.Contains(buf.String(), want) {
		t.Errorf("metrics lack %q:\n%s", want, buf.String())
	}
	if want := fmt.Sprintf(`outpost_function_log_lines_total{function="chatty"} %d`, n); !strings.Contains(buf.String(), want) {
		t.Errorf("metrics lack %q", want)
	}

	// The ring: the oldest 200 are gone (reported as lost), the rest in order.
	page, err := rt.Logs(ctx, "chatty", 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Lines) != LogRingSize || page.Lost != 200 || page.Lines[0].Seq != 201 || page.Next != n {
		t.Fatalf("page: %d lines, lost %d, first %d, next %d", len(page.Lines), page.Lost, page.Lines[0].Seq, page.Next)
	}
	for i, l := range page.Lines {
		if l.Seq != uint64(201+i) || l.Msg != "tick" || l.Level != "INFO" || l.Version != 1 || l.Device != fmt.Sprint("d", (200+i)%3) {
			t.Fatalf("line %d: %+v", i, l)
		}
	}
	page, err = rt.Logs(ctx, "chatty", n-5, 2, 0)
	if err != nil || len(page.Lines) != 2 || page.Lines[0].Seq != n-4 || page.Next != n-3 || page.Lost != 0 {
		t.Fatalf("after %d max 2: %+v, %v", n-5, page, err)
	}

	// Follow: a waiting request returns with the next line.
	got := make(chan Logs, 1)
	go func() {
		p, err := rt.Logs(ctx, "chatty", n, 0, time.Minute)
		if err != nil {
			t.Error(err)
		}
		got <- p
	}()
	select {
	case p := <-got:
		t.Fatalf("returned before a new line: %+v", p)
	case <-time.After(50 * time.Millisecond): // it must still be waiting
	}
	if err := m.OnMessage(ctx, &Input{Topic: "in/x", DeviceID: "late"}, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-got:
		if len(p.Lines) != 1 || p.Lines[0].Device != "late" || p.Next != n+1 {
			t.Fatalf("follow: %+v", p)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("follow did not return after a new line")
	}
	// Nothing new: the wait ends empty.
	if p, err := rt.Logs(ctx, "chatty", n+1, 0, 20*time.Millisecond); err != nil || len(p.Lines) != 0 || p.Next != n+1 {
		t.Fatalf("empty wait: %+v %v", p, err)
	}
	if _, err := rt.Logs(ctx, "nope", 0, 0, 0); err == nil {
		t.Fatal("unknown function: no error")
	}
}
