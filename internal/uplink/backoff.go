package uplink

import (
	"math/rand/v2"
	"time"
)

// backoff is a jittered exponential backoff: attempt n waits a uniformly
// random time in [d/2, d] where d = min(max, min·2ⁿ). Deterministic given
// its random source.
type backoff struct {
	min, max time.Duration
	n        int
	rnd      func() float64 // [0,1)
}

func newBackoff(min, max time.Duration, rnd func() float64) *backoff {
	if rnd == nil {
		rnd = rand.Float64
	}
	return &backoff{min: min, max: max, rnd: rnd}
}

// Next returns the delay before the next attempt and advances.
func (b *backoff) Next() time.Duration {
	d := b.min
	for i := 0; i < b.n && d < b.max; i++ {
		d *= 2
	}
	if d > b.max {
		d = b.max
	}
	b.n++
	half := d / 2
	return half + time.Duration(b.rnd()*float64(d-half))
}

// Reset starts over from min.
func (b *backoff) Reset() { b.n = 0 }
