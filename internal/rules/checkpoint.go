package rules

import (
	"fmt"
	"sync"
	"time"
)

// Crash-safe rule state.
//
// A QoS 1 input that changes the state of a rule with a durable action (an
// UPLINK window aggregate, a per-device state function feeding an uplink
// lane) is acknowledged only once that state is on disk: ProcessAsync
// registers the input with the checkpointer, which writes a snapshot of
// every rule's state (SaveState: temp file, fsync, rename, fsync dir) that
// was taken after the input changed it, and completes the inputs it covers.
// Inputs that arrive while a snapshot is written wait for the next one, so
// one snapshot covers many inputs (group commit), and the snapshot rate
// adapts to the load.
//
// A window leaves the state only once its output is durable (window outputs
// are delivered synchronously), so after a crash the restored snapshot holds
// every acknowledged input either in an open window or in an output already
// in the lane's queue. A window emitted after the last snapshot is emitted
// again after the restart (a duplicate, like any at-least-once delivery).
//
// Without a checkpoint directory (Engine.SetCheckpointDir "") or while the
// engine is not started, nothing waits: state is then saved only on a
// graceful stop.
type checkpointer struct {
	mu      sync.Mutex
	dir     string
	waiters []func(error)
	kick    chan struct{}
	quit    chan struct{}
	done    chan struct{}
	running bool
	e       *Engine
	n       uint64 // snapshots written
}

// SetCheckpointDir sets where ProcessAsync makes rule state crash-safe
// (rules-state.json, the file SaveState writes and LoadState reads); ""
// turns checkpoints off.
func (e *Engine) SetCheckpointDir(dir string) {
	e.ck.mu.Lock()
	e.ck.dir = dir
	e.ck.mu.Unlock()
}

// Checkpoints returns how many state checkpoints were written.
func (e *Engine) Checkpoints() uint64 {
	e.ck.mu.Lock()
	defer e.ck.mu.Unlock()
	return e.ck.n
}

func (k *checkpointer) start(e *Engine) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.running {
		return
	}
	k.e, k.running = e, true
	k.kick = make(chan struct{}, 1)
	k.quit = make(chan struct{})
	k.done = make(chan struct{})
	ckDur := e.set.GetOrCreateHistogram("outpost_rules_checkpoint_duration_seconds")
	ckErr := e.set.GetOrCreateCounter("outpost_rules_checkpoint_errors_total")
	go func() {
		defer close(k.done)
		for {
			select {
			case <-k.kick:
			case <-k.quit:
				k.flush(ckDur, ckErr) // the last waiters
				return
			}
			k.flush(ckDur, ckErr)
		}
	}()
}

// flush writes one snapshot for the waiters registered so far.
func (k *checkpointer) flush(dur interface{ UpdateDuration(time.Time) }, errs interface{ Inc() }) {
	k.mu.Lock()
	ws, dir := k.waiters, k.dir
	k.waiters = nil
	k.mu.Unlock()
	if len(ws) == 0 {
		return
	}
	var err error
	if dir != "" {
		t0 := time.Now()
		if err = k.e.SaveState(dir); err != nil {
			errs.Inc()
			k.e.log.Warn("rule state checkpoint failed; inputs are refused until it succeeds", "err", err)
			err = fmt.Errorf("rules: checkpoint: %w", err)
		}
		dur.UpdateDuration(t0)
	}
	k.mu.Lock()
	k.n++
	k.mu.Unlock()
	for _, w := range ws {
		w(err)
	}
}

// await calls done once a checkpoint taken after this call is on disk (at
// once when checkpoints are off).
func (k *checkpointer) await(done func(error)) {
	k.mu.Lock()
	if !k.running || k.dir == "" {
		k.mu.Unlock()
		done(nil)
		return
	}
	k.waiters = append(k.waiters, done)
	k.mu.Unlock()
	select {
	case k.kick <- struct{}{}:
	default:
	}
}

func (k *checkpointer) stop() {
	k.mu.Lock()
	if !k.running {
		k.mu.Unlock()
		return
	}
	k.running = false
	quit, done := k.quit, k.done
	k.mu.Unlock()
	close(quit)
	<-done
}
