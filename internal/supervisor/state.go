package supervisor

import (
	"encoding/json"
	"sync"
	"time"

	"github.com/outpost-edge/outpost/internal/supervisor/recipe"
)

var validName = recipe.ValidName

// State is a component's lifecycle state.
type State string

// Component states.
const (
	StateInvalid       State = "invalid"        // recipe rejected; nothing runs
	StateWaiting       State = "waiting"        // waiting for hard dependencies to be healthy
	StateInstalling    State = "installing"     // fetching artifacts, running install
	StateInstallFailed State = "install_failed" // install failed; output kept
	StateStarting      State = "starting"       // started, health not passed yet
	StateRunning       State = "running"        // running, no health check configured
	StateHealthy       State = "healthy"        // running, health check passing
	StateUnhealthy     State = "unhealthy"      // running, health check failing
	StateStopping      State = "stopping"
	StateStopped       State = "stopped"  // stopped on request (or disabled)
	StateFinished      State = "finished" // exited and the policy says not to restart
	StateBackoff       State = "backoff"  // exited, waiting to restart
	StateBroken        State = "broken"   // restarted too often; left stopped
)

// up reports whether a process of the component is (meant to be) running.
func (s State) up() bool {
	switch s {
	case StateStarting, StateRunning, StateHealthy, StateUnhealthy:
		return true
	}
	return false
}

// Status is a component's observable state, as listed by the CLI and HTTP
// API and published (JSON) on outpost/local/components/<name>/state.
type Status struct {
	Name      string        `json:"name"`
	Version   string        `json:"version,omitempty"`
	State     State         `json:"state"`
	Since     time.Time     `json:"since"`
	Reason    string        `json:"reason,omitempty"`
	PID       int           `json:"pid,omitempty"`
	Restarts  int           `json:"restarts"`
	Health    string        `json:"health,omitempty"` // none, starting, passing, failing
	LastExit  *ExitStatus   `json:"last_exit,omitempty"`
	Output    string        `json:"output,omitempty"` // last output lines (install_failed)
	Recipe    string        `json:"recipe,omitempty"`
	DependsOn []string      `json:"depends_on,omitempty"`
	Limits    *LimitsStatus `json:"limits,omitempty"`
	Memory    int64         `json:"memory_bytes,omitempty"`
	Error     string        `json:"error,omitempty"` // recipe problem
	// Container is set for kind: container components.
	Container *ContainerStatus `json:"container,omitempty"`
}

// ExitStatus is how the last process ended.
type ExitStatus struct {
	Code        int       `json:"code"`
	Signal      string    `json:"signal,omitempty"`
	OOMKilled   bool      `json:"oom_killed,omitempty"`
	At          time.Time `json:"at"`
	Description string    `json:"description"`
}

// LimitsStatus shows the component's limits and whether they are enforced.
type LimitsStatus struct {
	Memory   int64   `json:"memory_bytes,omitempty"`
	CPU      float64 `json:"cpu,omitempty"`
	Pids     int64   `json:"pids,omitempty"`
	Enforced bool    `json:"enforced"`
	Note     string  `json:"note,omitempty"`
}

// statePublisher publishes state changes asynchronously, coalescing
// bursts: only the latest state of each component is sent.
type statePublisher struct {
	pub     Publisher
	mu      sync.Mutex
	pending map[string][]byte // topic -> payload (nil payload: clear retained)
	order   []string
	kick    chan struct{}
	done    chan struct{}
	onError func(topic string, err error)
}

func newStatePublisher(p Publisher, onError func(string, error)) *statePublisher {
	sp := &statePublisher{pub: p, pending: map[string][]byte{}, kick: make(chan struct{}, 1), done: make(chan struct{}), onError: onError}
	go sp.run()
	return sp
}

func (sp *statePublisher) send(topic string, st *Status) {
	var payload []byte
	if st != nil {
		payload, _ = json.Marshal(st)
	}
	sp.mu.Lock()
	if _, ok := sp.pending[topic]; !ok {
		sp.order = append(sp.order, topic)
	}
	sp.pending[topic] = payload
	sp.mu.Unlock()
	select {
	case sp.kick <- struct{}{}:
	default:
	}
}

func (sp *statePublisher) run() {
	defer close(sp.done)
	for range sp.kick {
		sp.flush()
	}
	sp.flush()
}

func (sp *statePublisher) flush() {
	for {
		sp.mu.Lock()
		if len(sp.order) == 0 {
			sp.mu.Unlock()
			return
		}
		topic := sp.order[0]
		sp.order = sp.order[1:]
		payload := sp.pending[topic]
		delete(sp.pending, topic)
		sp.mu.Unlock()
		if payload == nil {
			payload = []byte{} // an empty retained message clears the retained state
		}
		if err := sp.pub.Publish(topic, payload, true, 1); err != nil && sp.onError != nil {
			sp.onError(topic, err)
		}
	}
}

func (sp *statePublisher) close() {
	close(sp.kick)
	<-sp.done
}
