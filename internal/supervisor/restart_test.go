package supervisor

import (
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/supervisor/recipe"
)

func TestBackoff(t *testing.T) {
	p := recipe.Restart{InitialBackoff: 100 * time.Millisecond, MaxBackoff: time.Second, Multiplier: 2, Jitter: 0.5}
	for _, c := range []struct {
		n    int
		rnd  float64
		want time.Duration
	}{
		{0, 0.5, 100 * time.Millisecond}, // no jitter at the midpoint
		{1, 0.5, 200 * time.Millisecond},
		{3, 0.5, 800 * time.Millisecond},
		{4, 0.5, time.Second}, // capped
		{60, 0.5, time.Second},
		{0, 0, 50 * time.Millisecond}, // -50%
		{0, 0.99, 149 * time.Millisecond},
	} {
		if got := backoff(p, c.n, c.rnd).Round(time.Microsecond); got != c.want {
			t.Errorf("backoff(n=%d, rnd=%g) = %s, want %s", c.n, c.rnd, got, c.want)
		}
	}
}

func TestRestartTrackerBroken(t *testing.T) {
	tr := restartTracker{policy: recipe.Restart{InitialBackoff: time.Second, MaxBackoff: 8 * time.Second, Multiplier: 2, MaxRestarts: 3, Window: time.Minute}}
	now := time.Unix(1000, 0)
	var delays []time.Duration
	for i := 0; i < 3; i++ {
		d, broken := tr.next(now, 100*time.Millisecond, 0.5)
		if broken {
			t.Fatalf("broken after %d restarts", i)
		}
		delays = append(delays, d)
		now = now.Add(d + 100*time.Millisecond)
	}
	if delays[0] != time.Second || delays[1] != 2*time.Second || delays[2] != 4*time.Second {
		t.Fatalf("delays %v", delays)
	}
	if _, broken := tr.next(now, 100*time.Millisecond, 0.5); !broken {
		t.Fatal("not broken after MaxRestarts within the window")
	}
	// Outside the window the old restarts no longer count.
	tr.reset()
	now = time.Unix(5000, 0)
	for i := 0; i < 10; i++ {
		if _, broken := tr.next(now, 100*time.Millisecond, 0.5); broken {
			t.Fatalf("broken at %d though restarts are spread over hours", i)
		}
		now = now.Add(30 * time.Minute)
	}
	// A stable run resets the backoff streak.
	tr.reset()
	tr.next(now, 0, 0.5)
	tr.next(now, 0, 0.5)
	if d, _ := tr.next(now.Add(time.Hour), time.Hour, 0.5); d != time.Second {
		t.Fatalf("delay after a stable run %s, want the initial backoff", d)
	}
}

func TestShouldRestart(t *testing.T) {
	for _, c := range []struct {
		p       recipe.Policy
		success bool
		want    bool
	}{
		{recipe.Always, true, true}, {recipe.Always, false, true},
		{recipe.OnFailure, true, false}, {recipe.OnFailure, false, true},
		{recipe.Never, false, false},
	} {
		if got := shouldRestart(c.p, c.success); got != c.want {
			t.Errorf("%s success=%v: %v", c.p, c.success, got)
		}
	}
}
