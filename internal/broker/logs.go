package broker

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Logging rules for the broker: no payload and no credential ever reaches a
// log line (mochi's log calls were patched to log topics and packet types,
// never packets), and one client cannot flood the log. limitHandler wraps
// the agent's handler for every broker line, Outpost's and mochi's:
//
//   - a line carrying a "client" attribute is allowed if that client still
//     has budget: a burst of clientLogBurst lines, then one every
//     clientLogEvery; the lines suppressed in between are counted and the
//     next allowed line says how many ("suppressed");
//   - every string value is cut to maxLogValue bytes (a topic filter can be
//     64 KiB).
const (
	clientLogBurst   = 10
	clientLogEvery   = 6 * time.Second
	maxLogValue      = 256
	clientLogClients = 4096 // clients remembered; the table restarts when full
)

type limitHandler struct {
	slog.Handler
	lim *clientLogLimiter
}

func (h *limitHandler) Handle(ctx context.Context, r slog.Record) error {
	var client string
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "client" {
			client = a.Value.String()
			return false
		}
		return true
	})
	suppressed := 0
	if client != "" {
		ok, n := h.lim.allow(client, r.Time)
		if !ok {
			return nil
		}
		suppressed = n
	}
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(shorten(a))
		return true
	})
	if suppressed > 0 {
		out.AddAttrs(slog.Int("suppressed", suppressed))
	}
	return h.Handler.Handle(ctx, out)
}

func (h *limitHandler) WithAttrs(as []slog.Attr) slog.Handler {
	short := make([]slog.Attr, len(as))
	for i, a := range as {
		short[i] = shorten(a)
	}
	return &limitHandler{Handler: h.Handler.WithAttrs(short), lim: h.lim}
}

func (h *limitHandler) WithGroup(n string) slog.Handler {
	return &limitHandler{Handler: h.Handler.WithGroup(n), lim: h.lim}
}

// shorten cuts string, error and byte-slice values to maxLogValue bytes.
func shorten(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	var s string
	switch v.Kind() {
	case slog.KindString:
		s = v.String()
	case slog.KindAny:
		switch x := v.Any().(type) {
		case error:
			s = x.Error()
		case []byte:
			s = string(x)
		default:
			return a
		}
	default:
		return a
	}
	if len(s) > maxLogValue {
		s = s[:maxLogValue] + "…(cut)"
	}
	return slog.String(a.Key, s)
}

// clientLogLimiter is a token bucket per client id.
type clientLogLimiter struct {
	mu      sync.Mutex
	clients map[string]*logBucket
}

type logBucket struct {
	tokens     float64
	last       time.Time
	suppressed int
}

func newClientLogLimiter() *clientLogLimiter {
	return &clientLogLimiter{clients: map[string]*logBucket{}}
}

// allow reports whether client may log a line at now, and how many of its
// lines were suppressed since its last allowed one.
func (l *clientLogLimiter) allow(client string, now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.clients[client]
	if !ok {
		if len(l.clients) >= clientLogClients {
			clear(l.clients)
		}
		b = &logBucket{tokens: clientLogBurst, last: now}
		l.clients[client] = b
	}
	b.tokens = min(clientLogBurst, b.tokens+float64(now.Sub(b.last))/float64(clientLogEvery))
	b.last = now
	if b.tokens < 1 {
		b.suppressed++
		return false, 0
	}
	b.tokens--
	n := b.suppressed
	b.suppressed = 0
	return true, n
}
