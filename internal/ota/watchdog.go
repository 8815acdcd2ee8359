package ota

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

// The trial watchdog: rollback without a service manager.
//
// Under systemd (or any manager that restarts the agent), a trial version
// that crashes is started again, and the pre-start hook and Boot count its
// attempts until it is rolled back. With nobody to restart it (restart
// "exec": a gateway whose init script starts outpost once, a container
// without a restart policy), a crash would end the agent on the bad
// version. So in exec mode a version on trial never runs on its own:
//
//	pid P: outpost (old) ── installs new ──▶ exec <binary>.prev (old code) as the watchdog
//	        watchdog (pid P)                  child: <binary> (new), same arguments
//	        count the attempt (state file)  ─▶ start child ─▶ wait
//	          child exits or crashes        ─▶ record how; count the next attempt;
//	                                           past max_attempts: roll back, exec <binary> (old)
//	          state says committed          ─▶ SIGTERM the child (graceful), exec <binary> (new)
//	          SIGTERM/SIGINT/SIGHUP to P    ─▶ forwarded; exit with the child's status
//
// The watchdog is the previous, known-good binary (hard link kept by the
// install), so a version that dies before main is supervised too. It keeps
// the pid (exec), so whoever started outpost still waits on the same
// process. The child runs with restart mode "exit": its own restarts (a
// failed gate, a rollback) are exits that the watchdog handles. The child
// gets SIGKILL if the watchdog dies (Pdeathsig), so a kill -9 of pid P
// ends both, as it ends a plain agent; the next start of outpost resumes
// from the state file like any restart. After the commit the agent is a
// single process again, at the cost of one more graceful restart.

const (
	// envWatchdog, set to the installed binary's path, makes `outpost run`
	// (started from <binary>.prev) the trial watchdog.
	envWatchdog = "OUTPOST_OTA_WATCHDOG"
	// envTrialChild marks the version on trial run by the watchdog.
	envTrialChild = "OUTPOST_OTA_TRIAL_CHILD"
)

// Read once and removed from the environment, so that processes the agent
// starts (components) do not inherit them.
var (
	watchdogBin = os.Getenv(envWatchdog)
	trialChild  = os.Getenv(envTrialChild) != ""
)

func init() {
	os.Unsetenv(envWatchdog)
	os.Unsetenv(envTrialChild)
}

func isWatchdog() bool   { return watchdogBin != "" && !trialChild }
func isTrialChild() bool { return trialChild }

// withoutEnv returns env without the named variables.
func withoutEnv(env []string, names ...string) []string {
	return slices.DeleteFunc(slices.Clone(env), func(kv string) bool {
		name, _, _ := strings.Cut(kv, "=")
		return slices.Contains(names, name)
	})
}

// prevIs reports whether <binary>.prev is the binary with this hash (the
// version the update started from), so it can supervise a trial.
func (e *engine) prevIs(sha string) bool {
	if sha == "" {
		return false
	}
	sum, _, err := fileSHA256(e.prev)
	return err == nil && sum == sha
}

// execWatchdog replaces this process with <binary>.prev as the watchdog.
func (e *engine) execWatchdog() error {
	args := append([]string{e.prev}, os.Args[1:]...)
	env := append(withoutEnv(os.Environ(), envWatchdog, envTrialChild), envWatchdog+"="+e.bin)
	e.log.Info("re-executing the previous binary as the trial watchdog", "binary", e.prev)
	err := syscall.Exec(e.prev, args, env)
	return fmt.Errorf("ota: exec %s: %w", e.prev, err)
}

// watchdog supervises the version on trial until it is committed or rolled
// back, then execs the installed binary. It returns only if that exec
// fails; a stop signal ends the process with the child's exit status.
func (e *engine) watchdog(poll time.Duration) error {
	// Pdeathsig fires when the thread that started the child exits: keep
	// this goroutine on its thread.
	runtime.LockOSThread()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	supervised := ""
	for {
		select {
		case sig := <-sigs:
			// Stopped between two starts: nothing runs, nothing to count.
			e.log.Info("trial watchdog: stopped", "signal", sig.String())
			os.Exit(128 + int(sig.(syscall.Signal)))
		default:
		}
		e.mu.Lock()
		trial, rolledBack, st, err := e.countStart()
		e.mu.Unlock()
		if err != nil {
			e.log.Error("trial watchdog: state", "err", err)
		}
		if !trial || err != nil {
			if l := st.Last; rolledBack || (l != nil && l.Result == "rolled_back" && l.Version == supervised) {
				e.log.Info("trial watchdog: rolled back; starting the previous version", "binary", e.bin)
			} else {
				e.log.Info("trial watchdog: nothing on trial; handing over", "binary", e.bin, "phase", st.Phase)
			}
			failpoint("watchdog-handover")
			return e.execBin()
		}
		version := st.Target.Version
		supervised = version
		e.log.Info("trial watchdog: starting the version on trial", "version", version,
			"attempt", st.Attempts, "max_attempts", e.cfg.MaxAttempts, "watchdog_pid", os.Getpid())
		cmd := exec.Command(e.bin, os.Args[1:]...)
		cmd.Env = append(withoutEnv(os.Environ(), envWatchdog, envTrialChild), envTrialChild+"=1")
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			e.recordExit(version, fmt.Sprintf("could not be started: %v", err))
			time.Sleep(poll)
			continue
		}
		failpoint("watchdog-started")
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		tk := time.NewTicker(poll)
		stopping, handover := false, false
	wait:
		for {
			select {
			case <-done:
				break wait
			case sig := <-sigs:
				stopping = true
				cmd.Process.Signal(sig)
			case <-tk.C:
				if !handover && e.committed(version) {
					handover = true
					e.log.Info("trial watchdog: version committed; restarting it as a single process", "version", version)
					cmd.Process.Signal(syscall.SIGTERM)
				}
			}
		}
		tk.Stop()
		code, how := exitStatus(cmd.ProcessState)
		switch {
		case stopping:
			e.log.Info("trial watchdog: stopped", "version", version, "child", how)
			os.Exit(code)
		case handover:
			// The next countStart finds the version committed: exec it.
		default:
			e.log.Warn("trial watchdog: version on trial ended", "version", version, "how", how)
			if code != ExitRestart {
				e.recordExit(version, how)
			}
			time.Sleep(poll)
		}
	}
}

// committed reports whether the state file says version was committed.
func (e *engine) committed(version string) bool {
	st, err := LoadState(e.cfg.StateFile)
	return err == nil && st.Phase != PhaseTrial && st.Last != nil &&
		st.Last.Version == version && st.Last.Result == "committed"
}

// recordExit notes how a trial start ended, as the reason the next
// rollback reports. A clean stop or a reason the version gave itself (a
// failed gate) stays.
func (e *engine) recordExit(version, how string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	st := e.loadState()
	if st.Phase != PhaseTrial || st.Target == nil || st.Target.Version != version || st.CleanStop {
		return
	}
	st.Reason = how
	if st.PrestartCounted {
		st.Reason += " before initialisation finished"
	}
	if err := e.saveState(st); err != nil {
		e.log.Error("trial watchdog: state", "err", err)
	}
}

// exitStatus returns the status to exit with and a description.
func exitStatus(ps *os.ProcessState) (int, string) {
	if ps == nil {
		return 1, "lost"
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal()), "killed by signal " + ws.Signal().String()
	}
	return ps.ExitCode(), fmt.Sprintf("exited with status %d", ps.ExitCode())
}
