package backoff

import (
	"testing"
	"time"
)

func TestDelay(t *testing.T) {
	p := Policy{Initial: 100 * time.Millisecond, Max: time.Second, Multiplier: 2, Jitter: 0.5}
	for _, c := range []struct {
		p    Policy
		n    int
		rnd  float64
		want time.Duration
	}{
		{p, 0, 0.5, 100 * time.Millisecond}, // no jitter at the midpoint
		{p, 1, 0.5, 200 * time.Millisecond},
		{p, 3, 0.5, 800 * time.Millisecond},
		{p, 4, 0.5, time.Second}, // capped
		{p, 1 << 20, 0.5, time.Second},
		{p, 0, 0, 50 * time.Millisecond}, // -50%
		{p, 0, 0.99, 149 * time.Millisecond},
		{Policy{Initial: time.Second, Max: time.Minute}, 3, 0, 8 * time.Second}, // default multiplier 2, no jitter
	} {
		if got := c.p.Delay(c.n, c.rnd).Round(time.Microsecond); got != c.want {
			t.Errorf("%+v Delay(%d, %g) = %s, want %s", c.p, c.n, c.rnd, got, c.want)
		}
	}
}
