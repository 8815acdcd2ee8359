package supervisor

import (
	"time"

	backoffpkg "github.com/outpost-edge/outpost/internal/backoff"
	"github.com/outpost-edge/outpost/internal/supervisor/recipe"
)

// restartTracker is the deterministic core of the restart policy: given
// the times of failures it decides the next backoff delay and whether the
// component is broken. It holds no clock and no randomness of its own.
type restartTracker struct {
	policy   recipe.Restart
	restarts []time.Time // restarts within the window, oldest first
	streak   int         // consecutive failures without a stable run
}

// shouldRestart applies the policy to an exit (or a failed health check,
// which counts as a failure).
func shouldRestart(p recipe.Policy, success bool) bool {
	switch p {
	case recipe.Always:
		return true
	case recipe.OnFailure:
		return !success
	}
	return false
}

// stableAfter is how long a run must last for the backoff to reset.
func (t *restartTracker) stableAfter() time.Duration {
	return max(t.policy.MaxBackoff, 10*time.Second)
}

// next records a restart at now after a run that lasted runtime. It returns
// the delay before the restart (jitter drawn from rnd, uniform in [0,1)),
// or broken=true when the component restarted MaxRestarts times within
// Window.
func (t *restartTracker) next(now time.Time, runtime time.Duration, rnd float64) (delay time.Duration, broken bool) {
	if runtime >= t.stableAfter() {
		t.streak = 0
	}
	cut := now.Add(-t.policy.Window)
	kept := t.restarts[:0]
	for _, r := range t.restarts {
		if r.After(cut) {
			kept = append(kept, r)
		}
	}
	t.restarts = kept
	if len(t.restarts) >= t.policy.MaxRestarts {
		return 0, true
	}
	t.restarts = append(t.restarts, now)
	d := backoff(t.policy, t.streak, rnd)
	t.streak++
	return d, false
}

// reset forgets the history (manual restart, recipe change).
func (t *restartTracker) reset() {
	t.restarts = nil
	t.streak = 0
}

// backoff returns initial * multiplier^n, capped at max, with jitter: the
// result is uniform within ±jitter of that value (rnd in [0,1)).
func backoff(p recipe.Restart, n int, rnd float64) time.Duration {
	return backoffpkg.Policy{Initial: p.InitialBackoff, Max: p.MaxBackoff, Multiplier: p.Multiplier, Jitter: p.Jitter}.Delay(n, rnd)
}
