package function

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// Function logs: what a guest passes to the log host call is kept in a
// ring per function (all versions together), served by the agent's API
// (outpost functions logs NAME [-f]), and copied to the agent log at a
// bounded rate so a chatty function cannot flood it.
const (
	// LogRingSize is how many lines each function's ring keeps.
	LogRingSize = 1000
	// LogRate and LogBurst bound the lines per second (token bucket) a
	// function writes to the agent log; the rest are only in the ring
	// and counted in outpost_function_log_suppressed_total.
	LogRate  = 10
	LogBurst = 50
	// logLineMax truncates a line (bytes).
	logLineMax = 1024
)

// LogLine is one line a function logged.
type LogLine struct {
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time"`
	Level   string    `json:"level"`
	Version int       `json:"version"`
	Device  string    `json:"device,omitempty"`
	Msg     string    `json:"msg"`
}

type logRing struct {
	lines      *metrics.Counter
	suppressed *metrics.Counter

	mu     sync.Mutex
	buf    []LogLine // ring, len <= LogRingSize
	next   uint64    // seq of the next line; the first line is 1
	wake   chan struct{}
	tokens float64
	last   time.Time
	held   uint64 // suppressed since the last line that reached the agent log
}

func newLogRing(set *metrics.Set, name string) *logRing {
	l := fmt.Sprintf("function=%q", name)
	return &logRing{next: 1, wake: make(chan struct{}), tokens: LogBurst,
		lines:      set.GetOrCreateCounter("outpost_function_log_lines_total{" + l + "}"),
		suppressed: set.GetOrCreateCounter("outpost_function_log_suppressed_total{" + l + "}")}
}

// add appends a line; pass reports whether it may go to the agent log
// too, and held how many lines were suppressed before it.
func (r *logRing) add(now time.Time, level slog.Level, version int, device, msg string) (pass bool, held uint64) {
	r.lines.Inc()
	r.mu.Lock()
	defer r.mu.Unlock()
	line := LogLine{Seq: r.next, Time: now, Level: level.String(), Version: version, Device: device, Msg: msg}
	r.next++
	if len(r.buf) < LogRingSize {
		r.buf = append(r.buf, line)
	} else {
		r.buf[(line.Seq-1)%LogRingSize] = line
	}
	close(r.wake)
	r.wake = make(chan struct{})
	if !r.last.IsZero() {
		r.tokens = min(LogBurst, r.tokens+now.Sub(r.last).Seconds()*LogRate)
	}
	r.last = now
	if r.tokens < 1 {
		r.held++
		r.suppressed.Inc()
		return false, 0
	}
	r.tokens--
	held, r.held = r.held, 0
	return true, held
}

// since returns up to max lines after seq, the seq to ask for next, how
// many lines after seq were overwritten before they were read, and a
// channel closed by the next line.
func (r *logRing) since(after uint64, max int) (out []LogLine, next, lost uint64, wake <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	oldest := r.next - uint64(len(r.buf))
	if after+1 < oldest {
		lost = oldest - after - 1
		after = oldest - 1
	}
	for s := after + 1; s < r.next && len(out) < max; s++ {
		out = append(out, r.buf[(s-1)%LogRingSize])
	}
	next = after + uint64(len(out))
	return out, next, lost, r.wake
}

// Logs is a page of a function's log lines.
type Logs struct {
	Function string    `json:"function"`
	Lines    []LogLine `json:"lines"`
	// Next is the seq to pass as after to continue.
	Next uint64 `json:"next"`
	// Lost counts lines after the requested seq that left the ring
	// before they were read.
	Lost uint64 `json:"lost,omitempty"`
}

// Logs returns the lines function name logged after seq after (0: the
// oldest kept), at most max (1..LogRingSize). With wait > 0 and nothing
// new it waits up to wait (or ctx) for a line (follow mode).
func (rt *Runtime) Logs(ctx context.Context, name string, after uint64, max int, wait time.Duration) (Logs, error) {
	rt.mu.Lock()
	s := rt.stats[name]
	rt.mu.Unlock()
	if s == nil {
		return Logs{}, fmt.Errorf("%w: %q", ErrUnknownFunction, name)
	}
	if max <= 0 || max > LogRingSize {
		max = LogRingSize
	}
	var timer <-chan time.Time
	for {
		lines, next, lost, wake := s.logs.since(after, max)
		if len(lines) > 0 || lost > 0 || wait <= 0 {
			return Logs{Function: name, Lines: lines, Next: next, Lost: lost}, nil
		}
		if timer == nil {
			t := time.NewTimer(wait)
			defer t.Stop()
			timer = t.C
		}
		select {
		case <-wake:
		case <-timer:
			return Logs{Function: name, Lines: []LogLine{}, Next: next}, nil
		case <-ctx.Done():
			return Logs{}, ctx.Err()
		}
	}
}

// guestLog handles the log host call.
func (inv *invocation) guestLog(ctx context.Context, level slog.Level, msg []byte) {
	if len(msg) > logLineMax {
		msg = msg[:logLineMax]
	}
	m := inv.m
	text := string(msg)
	pass, held := m.stats.logs.add(time.Now(), level, m.Manifest.Version, inv.device, text)
	if !pass {
		return
	}
	log := m.rt.log
	if held > 0 {
		log.Warn("function log lines suppressed (rate limit; all are in outpost functions logs)", "module", "function",
			"function", m.Manifest.Name, "lines", held, "limit_per_s", LogRate)
	}
	log.Log(ctx, level, text, "module", "function", "function", m.Manifest.Name, "version", m.Manifest.Version)
}
