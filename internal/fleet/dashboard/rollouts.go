package dashboard

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
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

// RolloutCaller calls the rollout API in-process (server.Server has it):
// name "" lists, action "" gets one, else it POSTs the action with body.
type RolloutCaller interface {
	RolloutAPI(ctx context.Context, name, action string, body []byte) (int, []byte)
}

// APIRollouts reads and drives the server's rollout controller through
// its API (the JSON contract above), so the pages show exactly what
// GET /api/v1/rollouts answers.
func APIRollouts(c RolloutCaller) Rollouts { return apiRollouts{c} }

type apiRollouts struct{ c RolloutCaller }

func apiError(code int, body []byte, what string) error {
	var e struct {
		Error string `json:"error"`
	}
	_ = json.Unmarshal(body, &e)
	switch code {
	case http.StatusNotFound:
		return fmt.Errorf("%w: %s: %s", ErrNotFound, what, e.Error)
	case http.StatusConflict:
		return fmt.Errorf("%w: %s", ErrConflict, e.Error)
	}
	return fmt.Errorf("%s (%d)", e.Error, code)
}

func (a apiRollouts) List(ctx context.Context) ([]Rollout, error) {
	code, body := a.c.RolloutAPI(ctx, "", "", nil)
	if code != http.StatusOK {
		return nil, apiError(code, body, "rollouts")
	}
	var l struct {
		Items []Rollout `json:"items"`
	}
	if err := json.Unmarshal(body, &l); err != nil {
		return nil, fmt.Errorf("dashboard: rollouts: %w", err)
	}
	return l.Items, nil
}

func (a apiRollouts) Get(ctx context.Context, name string) (Rollout, error) {
	code, body := a.c.RolloutAPI(ctx, name, "", nil)
	var r Rollout
	if code != http.StatusOK {
		return r, apiError(code, body, "rollout "+name)
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return r, fmt.Errorf("dashboard: rollout %s: %w", name, err)
	}
	return r, nil
}

func (a apiRollouts) Act(ctx context.Context, name, action string, rv int64) (Rollout, error) {
	code, body := a.c.RolloutAPI(ctx, name, action, []byte(`{"resourceVersion":`+strconv.FormatInt(rv, 10)+`}`))
	var r Rollout
	if code != http.StatusOK {
		return r, apiError(code, body, "rollout "+name)
	}
	err := json.Unmarshal(body, &r)
	return r, err
}
