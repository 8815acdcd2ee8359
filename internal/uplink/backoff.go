package uplink

import (
	"math/rand/v2"
	"time"

	backoffpkg "github.com/outpost-edge/outpost/internal/backoff"
)

// backoff is the uplink's reconnect backoff: attempt n waits a uniformly
// random time in [d/2, d] where d = min(max, min·2ⁿ). The delay is
// internal/backoff's Policy with Initial and Max scaled by 3/4 and ±1/3
// jitter (0.75·d·(1 ± 1/3) spans [d/2, d]); this type only keeps the
// attempt counter and the random source. Deterministic given that source.
type backoff struct {
	p   backoffpkg.Policy
	n   int
	rnd func() float64 // [0,1)
}

func newBackoff(min, max time.Duration, rnd func() float64) *backoff {
	if rnd == nil {
		rnd = rand.Float64
	}
	return &backoff{
		p:   backoffpkg.Policy{Initial: min * 3 / 4, Max: max * 3 / 4, Multiplier: 2, Jitter: 1.0 / 3},
		rnd: rnd,
	}
}

// Next returns the delay before the next attempt and advances.
func (b *backoff) Next() time.Duration {
	d := b.p.Delay(b.n, b.rnd())
	if b.n < 62 { // Delay caps at Max long before; keep n from overflowing
		b.n++
	}
	return d
}

// Reset starts over from min.
func (b *backoff) Reset() { b.n = 0 }
