package dashboard

import (
	"context"
	"time"
)

// Rollout is what the dashboard shows of a rollout: the JSON contract of
// GET /api/v1/rollouts/{name} (issue 13).
type Rollout struct {
	Name            string     `json:"name"`
	Object          RolloutRef `json:"object"`
	FromRevision    int64      `json:"fromRevision"`
	ToRevision      int64      `json:"toRevision"`
	Selector        string     `json:"selector"`
	State           string     `json:"state"` // running|paused|halted|aborted|rolledback|done
	Reason          string     `json:"reason"`
	Failing         []Failing  `json:"failing"`
	Waves           []Wave     `json:"waves"`
	ResourceVersion int64      `json:"resourceVersion"`
	Created         time.Time  `json:"created"`
	Updated         time.Time  `json:"updated"`
}

// RolloutRef names the object a rollout changes.
type RolloutRef struct {
	Kind string `json:"kind"`
	Name string `json:"name"`
}

// Failing is one gateway that breached a health gate.
type Failing struct {
	Gateway string `json:"gateway"`
	Signal  string `json:"signal"`
	Detail  string `json:"detail"`
}

// Wave is one wave's progress.
type Wave struct {
	Name    string `json:"name"`
	State   string `json:"state"` // pending|running|soaking|done|halted
	Targets int    `json:"targets"`
	Applied int    `json:"applied"`
	Failed  int    `json:"failed"`
	Stuck   int    `json:"stuck"`
}

// Rollout actions an operator can take.
var Actions = []string{"pause", "resume", "abort", "rollback"}

func validAction(a string) bool {
	for _, x := range Actions {
		if a == x {
			return true
		}
	}
	return false
}

// Rollouts is the rollout controller as the dashboard sees it.
type Rollouts interface {
	List(ctx context.Context) ([]Rollout, error)
	// Get returns one rollout (ErrNotFound).
	Get(ctx context.Context, name string) (Rollout, error)
	// Act pauses, resumes, aborts or rolls back a rollout that is still at
	// resourceVersion rv (ErrConflict otherwise, ErrNotFound).
	Act(ctx context.Context, name, action string, rv int64) (Rollout, error)
}

// available lists the actions that make sense in a state (the controller
// decides; this only hides buttons that cannot work).
func available(state string) []string {
	switch state {
	case "running":
		return []string{"pause", "abort", "rollback"}
	case "paused", "halted":
		return []string{"resume", "abort", "rollback"}
	case "done", "aborted":
		return []string{"rollback"}
	}
	return nil
}
