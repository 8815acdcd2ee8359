package ota

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"time"
)

// BootOptions configures Boot.
type BootOptions struct {
	Log *slog.Logger
	// Poll is how often Gate samples ready; default 250ms.
	Poll time.Duration
}

// Trial is an uncommitted version on probation, returned by Boot. Run Gate
// once the agent's modules are started.
type Trial struct {
	e       *engine
	st      *State
	started time.Time
	poll    time.Duration
	Version string // the version on trial
	Attempt int    // this start's attempt number, from 1
}

// RestartError is returned by Gate when the agent must restart: into the
// previous version after a rollback (Rollback true), or into the same trial
// version for another attempt. Stop the modules, then call Restart.
type RestartError struct {
	Rollback bool
	Reason   string
}

func (e *RestartError) Error() string {
	if e.Rollback {
		return "ota: rolled back, restart required: " + e.Reason
	}
	return "ota: trial attempt failed, restart required: " + e.Reason
}

// Boot must be the first thing `outpost run` does. It reads the state file
// and settles any update that a restart, crash or power cut interrupted:
//
//   - idle, downloading: nothing to do now (the updater resumes downloads);
//   - installing: the installed binary's hash tells whether the swap
//     happened; if it did, the new version goes on trial, else the update
//     resumes from its download;
//   - trial: one more start attempt is counted (written before anything
//     else runs; not after a graceful stop, see Trial.Stopped). Past
//     max_attempts the previous binary is restored, the version marked
//     bad, and the agent restarts into the previous version. Otherwise
//     Boot returns a *Trial whose Gate commits or rolls back the version.
//     In restart mode exec (no service manager), the process first hands
//     the trial to the watchdog (it execs <binary>.prev, which runs this
//     version as its child; see watchdog.go);
//   - rolling_back: the rollback is finished and the agent restarts.
//
// In the watchdog process ($OUTPOST_OTA_WATCHDOG) Boot supervises the trial
// and ends by exec'ing the installed binary or exiting; it never returns
// to run the agent. When Boot restarts the process (exec or exit, see
// Restart) it does not return. It returns (nil, nil) when there is nothing to gate, and an error
// only when the state cannot be written (the agent should still run).
func Boot(ctx context.Context, cfg Config, opt BootOptions) (t *Trial, err error) {
	defer func() {
		// An updater bug must not keep the agent from starting.
		if r := recover(); r != nil {
			t, err = nil, fmt.Errorf("%w: boot: %v", ErrPanic, r)
			if opt.Log != nil {
				opt.Log.Error("updater panicked at boot; starting without it", "module", "ota", "err", err, "stack", string(debug.Stack()))
			}
		}
	}()
	if !cfg.Enabled {
		return nil, nil
	}
	e, err := newEngine(cfg, opt.Log)
	if err != nil {
		return nil, err
	}
	poll := opt.Poll
	if poll <= 0 {
		poll = 250 * time.Millisecond
	}
	if isWatchdog() {
		// This process is the previous binary, exec'd to supervise the
		// version on trial (see watchdog.go). It returns only if it
		// cannot exec.
		return nil, e.watchdog(4 * poll)
	}
	var next int
	t, next, err = e.boot()
	switch next {
	case nextRestart:
		if rerr := e.restart(); rerr != nil {
			return nil, errors.Join(err, rerr)
		}
	case nextWatchdog:
		if err != nil {
			// The state cannot be written, so the watchdog could not
			// count attempts either: run unsupervised (and ungated)
			// rather than exec back and forth.
			return nil, err
		}
		if rerr := e.execWatchdog(); rerr != nil {
			return nil, rerr
		}
	}
	if t != nil {
		t.poll = poll
	}
	return t, err
}

// What the process does after boot.
const (
	nextRun      = iota // run the agent (gate the trial if there is one)
	nextRestart         // restart into the (restored) installed binary
	nextWatchdog        // exec the previous binary as the trial watchdog
)

// boot settles the state and says what the process does next.
func (e *engine) boot() (t *Trial, next int, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	st := e.loadState()
	// A staged binary left over from an interrupted staging is rebuilt.
	if st.Phase != PhaseInstalling {
		os.Remove(e.newPath)
	}
	switch st.Phase {
	case PhaseIdle, PhaseDownloading:
		return nil, nextRun, nil
	case PhaseRollingBack:
		if err := e.rollback(st, st.Reason); err != nil {
			return nil, nextRun, err
		}
		return nil, nextRestart, nil
	case PhaseInstalling:
		sum, _, herr := fileSHA256(e.bin)
		switch {
		case herr == nil && sum == st.Target.SHA256:
			e.log.Info("install was interrupted after the swap; starting the trial", "version", st.Target.Version)
			st.Phase, st.Attempts = PhaseTrial, 0
		default:
			e.log.Warn("install was interrupted before the swap; resuming the update", "version", st.Target.Version)
			os.Remove(e.newPath)
			st.Phase = PhaseDownloading
			return nil, nextRun, e.saveState(st)
		}
	}
	// PhaseTrial.
	sum, _, herr := fileSHA256(e.bin)
	if herr != nil {
		return nil, nextRun, fmt.Errorf("ota: hash %s: %w", e.bin, herr)
	}
	if sum != st.Target.SHA256 {
		// Someone put another binary in place (manual rollback): that is
		// what runs; the trial is over.
		e.log.Warn("trial binary replaced outside the updater; abandoning the trial", "version", st.Target.Version)
		st.Last = &Outcome{Version: st.Target.Version, From: st.Target.FromVersion, Result: "failed", Reason: "binary replaced during trial", Time: time.Now().UTC()}
		st.Phase, st.Target, st.Attempts, st.PrestartCounted, st.CleanStop = PhaseIdle, nil, 0, false, false
		return nil, nextRun, e.saveState(st)
	}
	if RestartMode(e.cfg) == "exec" && e.prevIs(st.Target.FromSHA256) {
		// No service manager restarts us: the previous binary supervises
		// the trial (it counts the attempts, not this start).
		e.log.Info("version on trial without a service manager; handing over to the trial watchdog", "version", st.Target.Version, "watchdog", e.prev)
		return nil, nextWatchdog, e.saveState(st)
	}
	switch {
	case st.PrestartCounted:
		st.PrestartCounted = false // this start was counted by Prestart or the watchdog
	case st.CleanStop:
		// The previous start was stopped gracefully (an operator's
		// restart): not a failed attempt.
		st.CleanStop = false
		st.Attempts = max(st.Attempts, 1)
		e.log.Info("trial version was stopped gracefully last time; this start is not counted", "version", st.Target.Version)
	default:
		st.Attempts++
	}
	if st.Attempts > e.cfg.MaxAttempts {
		reason := fmt.Sprintf("did not pass the health gate in %d attempts (crashed, exited or never ready)", e.cfg.MaxAttempts)
		if st.Reason != "" {
			reason += "; last: " + st.Reason
		}
		if err := e.rollback(st, reason); err != nil {
			return nil, nextRun, err
		}
		return nil, nextRestart, nil
	}
	if err := e.saveState(st); err != nil {
		return nil, nextRun, err
	}
	e.log.Info("version on trial", "version", st.Target.Version, "attempt", st.Attempts, "max_attempts", e.cfg.MaxAttempts)
	failpoint("trial-start") // the tests' crashing new version
	return &Trial{e: e, st: st, started: time.Now(), Version: st.Target.Version, Attempt: st.Attempts}, nextRun, nil
}

// Gate watches ready until the trial version is committed (ready within
// start_deadline, then ready without interruption for stability_window) or
// fails. It returns nil once committed. On failure it records the reason
// and returns a *RestartError: when this was the last attempt the previous
// binary has been restored (Rollback); either way the caller stops its
// modules and calls Restart. A cancelled ctx returns ctx.Err() (the attempt
// stays counted).
func (t *Trial) Gate(ctx context.Context, ready func() bool) error {
	cfg := t.e.cfg
	deadline := t.started.Add(cfg.StartDeadline.D())
	tk := time.NewTicker(t.poll)
	defer tk.Stop()
	var readySince time.Time
	var reason string
	for reason == "" {
		now := time.Now()
		ok := ready()
		switch {
		case ok && readySince.IsZero():
			readySince = now
			t.e.log.Info("trial version ready; stability window started", "version", t.Version, "window", cfg.StabilityWindow)
		case !ok && !readySince.IsZero():
			reason = fmt.Sprintf("became unready %v into the stability window", now.Sub(readySince).Round(time.Millisecond))
		case !ok && now.After(deadline):
			reason = fmt.Sprintf("not ready within start_deadline %v", cfg.StartDeadline)
		}
		if reason != "" {
			break
		}
		if ok && now.Sub(readySince) >= cfg.StabilityWindow.D() {
			failpoint("before-commit")
			t.e.mu.Lock()
			defer t.e.mu.Unlock()
			st, err := t.current()
			if err != nil {
				return err
			}
			return t.e.commit(st)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tk.C:
		}
	}
	t.e.mu.Lock()
	defer t.e.mu.Unlock()
	t.e.log.Error("trial attempt failed", "version", t.Version, "attempt", t.Attempt, "reason", reason)
	st, err := t.current()
	if err != nil {
		return err
	}
	if t.Attempt >= cfg.MaxAttempts {
		if err := t.e.rollback(st, reason); err != nil {
			return err
		}
		return &RestartError{Rollback: true, Reason: reason}
	}
	st.Reason, st.CleanStop = reason, false
	if err := t.e.saveState(st); err != nil {
		return err
	}
	return &RestartError{Reason: reason}
}

// ErrTrialOver is returned by Gate when the state file no longer holds this
// trial (it was settled by another process, or the state was reset).
var ErrTrialOver = errors.New("ota: the trial was settled elsewhere")

// current re-reads the state (under e.mu): other writers (the update API's
// forget-bad, a clean stop) may have changed it since Boot.
func (t *Trial) current() (*State, error) {
	st := t.e.loadState()
	if st.Phase != PhaseTrial || st.Target == nil || st.Target.SHA256 != t.st.Target.SHA256 {
		return nil, fmt.Errorf("%w: phase %s", ErrTrialOver, st.Phase)
	}
	t.st = st
	return st, nil
}

// Stopped records that this start of the trial version ends with a
// graceful stop asked from outside (SIGTERM or SIGINT: an operator's
// restart, a shutdown) before its gate decided. The next start is then not
// counted as an attempt, and the version gets a fresh start deadline and
// stability window. Call it after the agent's modules stopped cleanly on
// such a signal; never after a crash, a failed module or a restart that
// Gate asked for. It does nothing once the trial is settled.
func (t *Trial) Stopped() error {
	t.e.mu.Lock()
	defer t.e.mu.Unlock()
	st, err := t.current()
	if err != nil || st.Attempts != t.Attempt {
		return nil
	}
	st.CleanStop = true
	if err := t.e.saveState(st); err != nil {
		return err
	}
	t.e.log.Info("trial version stopped gracefully; the next start is not counted as an attempt", "version", t.Version, "attempt", t.Attempt)
	return nil
}

// Prestart is the service manager's pre-start hook (systemd ExecStartPre),
// run from the previous binary (<binary>.prev, known good) before every
// start of the agent. It counts the coming start of a trial version and
// rolls back when attempts are exhausted, so that a new version that dies
// before it reaches Boot (a panic during package initialisation, a binary
// the kernel cannot run) is still rolled back. Boot does not count a start
// that Prestart counted. It reports whether it rolled back.
func Prestart(cfg Config, log *slog.Logger) (rolledBack bool, err error) {
	if !cfg.Enabled {
		return false, nil
	}
	e, err := newEngine(cfg, log)
	if err != nil {
		return false, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	_, rolledBack, _, err = e.countStart()
	return rolledBack, err
}

// countStart counts the coming start of a version on trial from outside
// that version (Prestart, the watchdog), so that a start that dies before
// Boot still counts. trial reports that the installed binary is on trial
// and should be started (st is the state written); rolledBack that the
// attempts were exhausted (or a rollback was pending) and the previous
// binary is back in place. Neither: nothing to supervise. Hold e.mu.
func (e *engine) countStart() (trial, rolledBack bool, st *State, err error) {
	st = e.loadState()
	switch st.Phase {
	case PhaseRollingBack:
		return false, true, st, e.rollback(st, st.Reason)
	case PhaseInstalling:
		if sum, _, err := fileSHA256(e.bin); err != nil || sum != st.Target.SHA256 {
			return false, false, st, nil // Boot resumes the update
		}
		st.Phase, st.Attempts = PhaseTrial, 0
	case PhaseTrial:
	default:
		return false, false, st, nil
	}
	if sum, _, err := fileSHA256(e.bin); err != nil || sum != st.Target.SHA256 {
		return false, false, st, nil // Boot sorts out a replaced binary
	}
	switch {
	case st.PrestartCounted:
		// The previous start never reached Boot: it died early.
		if st.Reason == "" {
			st.Reason = "exited before initialisation finished"
		}
		st.Attempts++
	case st.CleanStop:
		// The previous start was stopped gracefully: not an attempt.
		st.CleanStop = false
		st.Attempts = max(st.Attempts, 1)
	default:
		st.Attempts++
	}
	st.PrestartCounted = true
	if st.Attempts > e.cfg.MaxAttempts {
		reason := fmt.Sprintf("did not pass the health gate in %d attempts (crashed, exited or never ready)", e.cfg.MaxAttempts)
		if st.Reason != "" {
			reason += "; last: " + st.Reason
		}
		return false, true, st, e.rollback(st, reason)
	}
	return true, false, st, e.saveState(st)
}
