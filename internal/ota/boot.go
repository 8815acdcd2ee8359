package ota

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
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
//     else runs). Past max_attempts the previous binary is restored, the
//     version marked bad, and the agent restarts into the previous
//     version. Otherwise Boot returns a *Trial whose Gate commits or rolls
//     back the version;
//   - rolling_back: the rollback is finished and the agent restarts.
//
// When Boot restarts the process (exec or exit, see Restart) it does not
// return. It returns (nil, nil) when there is nothing to gate, and an error
// only when the state cannot be written (the agent should still run).
func Boot(ctx context.Context, cfg Config, opt BootOptions) (*Trial, error) {
	if !cfg.Enabled {
		return nil, nil
	}
	e, err := newEngine(cfg, opt.Log)
	if err != nil {
		return nil, err
	}
	t, restart, err := e.boot()
	if restart {
		if rerr := e.restart(); rerr != nil {
			return nil, errors.Join(err, rerr)
		}
	}
	if t != nil {
		t.poll = opt.Poll
		if t.poll <= 0 {
			t.poll = 250 * time.Millisecond
		}
	}
	return t, err
}

// boot settles the state; restart reports that the process must restart
// into the (restored) installed binary.
func (e *engine) boot() (t *Trial, restart bool, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	st := e.loadState()
	// A staged binary left over from an interrupted staging is rebuilt.
	if st.Phase != PhaseInstalling {
		os.Remove(e.newPath)
	}
	switch st.Phase {
	case PhaseIdle, PhaseDownloading:
		return nil, false, nil
	case PhaseRollingBack:
		if err := e.rollback(st, st.Reason); err != nil {
			return nil, false, err
		}
		return nil, true, nil
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
			return nil, false, e.saveState(st)
		}
	}
	// PhaseTrial.
	sum, _, herr := fileSHA256(e.bin)
	if herr != nil {
		return nil, false, fmt.Errorf("ota: hash %s: %w", e.bin, herr)
	}
	if sum != st.Target.SHA256 {
		// Someone put another binary in place (manual rollback): that is
		// what runs; the trial is over.
		e.log.Warn("trial binary replaced outside the updater; abandoning the trial", "version", st.Target.Version)
		st.Last = &Outcome{Version: st.Target.Version, From: st.Target.FromVersion, Result: "failed", Reason: "binary replaced during trial", Time: time.Now().UTC()}
		st.Phase, st.Target, st.Attempts = PhaseIdle, nil, 0
		return nil, false, e.saveState(st)
	}
	if st.PrestartCounted {
		st.PrestartCounted = false // this start was counted by Prestart
	} else {
		st.Attempts++
	}
	if st.Attempts > e.cfg.MaxAttempts {
		reason := fmt.Sprintf("did not pass the health gate in %d attempts (crashed, exited or never ready)", e.cfg.MaxAttempts)
		if st.Reason != "" {
			reason += "; last: " + st.Reason
		}
		if err := e.rollback(st, reason); err != nil {
			return nil, false, err
		}
		return nil, true, nil
	}
	if err := e.saveState(st); err != nil {
		return nil, false, err
	}
	e.log.Info("version on trial", "version", st.Target.Version, "attempt", st.Attempts, "max_attempts", e.cfg.MaxAttempts)
	return &Trial{e: e, st: st, started: time.Now(), Version: st.Target.Version, Attempt: st.Attempts}, false, nil
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
			return t.e.commit(t.st)
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
	if t.Attempt >= cfg.MaxAttempts {
		if err := t.e.rollback(t.st, reason); err != nil {
			return err
		}
		return &RestartError{Rollback: true, Reason: reason}
	}
	t.st.Reason = reason
	if err := t.e.saveState(t.st); err != nil {
		return err
	}
	return &RestartError{Reason: reason}
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
	st := e.loadState()
	switch st.Phase {
	case PhaseRollingBack:
		return true, e.rollback(st, st.Reason)
	case PhaseInstalling:
		if sum, _, err := fileSHA256(e.bin); err != nil || sum != st.Target.SHA256 {
			return false, nil // Boot resumes the update
		}
		st.Phase, st.Attempts = PhaseTrial, 0
	case PhaseTrial:
	default:
		return false, nil
	}
	if sum, _, err := fileSHA256(e.bin); err != nil || sum != st.Target.SHA256 {
		return false, nil // Boot sorts out a replaced binary
	}
	if st.PrestartCounted {
		// The previous start never reached Boot: it died early.
		if st.Reason == "" {
			st.Reason = "exited before initialisation finished"
		}
	}
	st.Attempts++
	st.PrestartCounted = true
	if st.Attempts > e.cfg.MaxAttempts {
		reason := fmt.Sprintf("did not pass the health gate in %d attempts (crashed, exited or never ready)", e.cfg.MaxAttempts)
		if st.Reason != "" {
			reason += "; last: " + st.Reason
		}
		return true, e.rollback(st, reason)
	}
	return false, e.saveState(st)
}
