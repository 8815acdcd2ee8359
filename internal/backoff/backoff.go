// Package backoff is Outpost's one retry-delay policy: exponential growth
// from an initial delay, capped, with optional symmetric jitter. The
// supervisor's restarts (recipe-configured), OTA's download retries and the
// uplink's reconnects use it.
package backoff

import (
	"math"
	"time"
)

// Policy is an exponential backoff: attempt n (from 0) waits
// Initial·Multiplier^n, at most Max, then spread uniformly within ±Jitter of
// that value (Jitter 0.2 = ±20%).
type Policy struct {
	Initial    time.Duration
	Max        time.Duration
	Multiplier float64 // 0 means 2
	Jitter     float64 // 0 to 1
}

// Delay returns the wait before attempt n; rnd is a random number in [0,1)
// (0.5 gives the value without jitter), so callers and tests choose the
// source.
func (p Policy) Delay(n int, rnd float64) time.Duration {
	m := p.Multiplier
	if m == 0 {
		m = 2
	}
	d := float64(p.Initial) * math.Pow(m, float64(n))
	if d > float64(p.Max) || math.IsInf(d, 0) || math.IsNaN(d) {
		d = float64(p.Max)
	}
	d *= 1 + p.Jitter*(2*rnd-1)
	if d < 0 {
		d = 0
	}
	return time.Duration(d)
}
