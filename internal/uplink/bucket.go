package uplink

import "time"

// bucket is a token bucket in bytes. A send is allowed while the bucket is
// not in debt (tokens >= 0) and may take it into debt by one packet, so a
// packet larger than the burst still passes and the long-run rate stays at
// rate. Not safe for concurrent use; time is passed in (deterministic).
type bucket struct {
	rate   float64 // bytes per second
	burst  float64
	tokens float64
	last   time.Time
}

func newBucket(rate, burst float64, now time.Time) *bucket {
	return &bucket{rate: rate, burst: burst, tokens: burst, last: now}
}

func (b *bucket) refill(now time.Time) {
	if dt := now.Sub(b.last); dt > 0 {
		b.tokens += dt.Seconds() * b.rate
		if b.tokens > b.burst {
			b.tokens = b.burst
		}
		b.last = now
	}
}

// ready reports whether a send is allowed now.
func (b *bucket) ready(now time.Time) bool {
	b.refill(now)
	return b.tokens >= 0
}

// take charges n bytes.
func (b *bucket) take(n int) { b.tokens -= float64(n) }

// wait returns how long until ready (0 if ready now).
func (b *bucket) wait(now time.Time) time.Duration {
	b.refill(now)
	if b.tokens >= 0 {
		return 0
	}
	return time.Duration(-b.tokens / b.rate * float64(time.Second))
}
