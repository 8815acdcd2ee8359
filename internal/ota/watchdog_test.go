package ota_test

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/config"
	"github.com/outpost-edge/outpost/internal/ota"
)

// childrenOf lists the live (not zombie) processes whose parent is pid.
func childrenOf(pid int) []int {
	var kids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, ppid := procStat(p); ppid == pid && st != "Z" && st != "X" {
			kids = append(kids, p)
		}
	}
	return kids
}

// procStat returns a process's state letter and parent pid ("" if gone).
func procStat(pid int) (state string, ppid int) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return "", 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return "", 0
	}
	ppid, _ = strconv.Atoi(f[1])
	return f[0], ppid
}

func alive(pid int) bool {
	st, _ := procStat(pid)
	return st != "" && st != "Z" && st != "X"
}

func exeOf(pid int) string {
	p, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	return p
}

// onePid returns the pid of the agent started once, failing if it exited.
func (s *supervisor) onePid(t testing.TB) int {
	t.Helper()
	checkFor(t, 10*time.Second, func() error {
		s.mu.Lock()
		defer s.mu.Unlock()
		if len(s.starts) == 0 {
			return errors.New("not started yet")
		}
		return nil
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.starts) != 1 || len(s.exits) != 0 {
		t.Fatalf("started once: starts %v exits %v", s.starts, s.exits)
	}
	return s.pids[0]
}

// waitSingle waits until the agent started once is a single process (no
// watchdog child) running the installed binary, version want, committed.
func (s *supervisor) waitSingle(t testing.TB, want string) {
	t.Helper()
	pid := s.onePid(t)
	checkFor(t, 20*time.Second, func() error {
		if !alive(pid) {
			return fmt.Errorf("agent pid %d is gone", pid)
		}
		if exe := exeOf(pid); exe != s.g.bin {
			return fmt.Errorf("pid %d runs %s, want %s", pid, exe, s.g.bin)
		}
		if kids := childrenOf(pid); len(kids) > 0 {
			return fmt.Errorf("pid %d still has children %v", pid, kids)
		}
		st, err := s.status()
		if err != nil {
			return err
		}
		if st.Running != want || st.Phase != ota.PhaseIdle {
			return fmt.Errorf("running %s phase %s", st.Running, st.Phase)
		}
		return nil
	})
	s.onePid(t)
}

// trialChild waits for the watchdog (pid) to run the trial version as its
// child and returns the child's pid.
func (s *supervisor) trialChild(t testing.TB, pid int) int {
	t.Helper()
	var kid int
	checkFor(t, 20*time.Second, func() error {
		for _, k := range childrenOf(pid) {
			if exeOf(k) == s.g.bin {
				kid = k
				return nil
			}
		}
		return errors.New("no trial child yet")
	})
	return kid
}

// Without a service manager (the agent started once, restart "exec"), a new
// version that exits, crashes, dies before main or never gets ready is
// still rolled back: the previous binary supervises it as the trial
// watchdog, rolls it back and execs the previous version in the same
// process, which then installs and commits the good version B. The agent is
// never restarted from outside and ends as one process running B.
func TestWatchdogRollbackWithoutServiceManager(t *testing.T) {
	for _, tc := range []struct{ version, what string }{
		{"1.2.0", "exits at start"},
		{"1.3.0", "crash-loops"},
		{"1.5.0", "panics before main"},
		{"1.4.0", "never becomes ready"},
	} {
		t.Run(tc.version+"-"+strings.ReplaceAll(tc.what, " ", "-"), func(t *testing.T) {
			r := newTestRepo(t)
			r.addVersion(t, tc.version, 0)
			srv := newServer(t, r.Dir)
			g := newGateway(t, "1.0.0", srv.URL, r.root)
			g.cfg.Restart = "exec"
			s := g.runOnce(t)
			st := s.waitCommitted(t, "1.1.0", 60*time.Second)
			if !slices.Contains(st.Bad, tc.version) {
				t.Fatalf("bad versions %v, want %s", st.Bad, tc.version)
			}
			s.waitSingle(t, "1.1.0")
			logs := s.logText()
			// The old version ran again after the rollback, before B.
			rolled := strings.Index(logs, "trial watchdog: rolled back; starting the previous version")
			if rolled < 0 {
				t.Fatal("the watchdog did not roll back")
			}
			if !regexp.MustCompile(`msg=started .*version=1\.0\.0|version=1\.0\.0 .*msg=started`).MatchString(logs[rolled:]) {
				t.Fatal("1.0.0 did not start again after the rollback")
			}
			if g.installedVersion(t) != "1.1.0" || sha256File(t, g.bin+".prev") != sha256File(t, fixture.bins["1.0.0"]) {
				t.Fatal("installed or previous binary wrong")
			}
			t.Logf("%s (%s): one process (pid %d) rolled back and committed 1.1.0; last %+v", tc.version, tc.what, s.onePid(t), st.Last)
		})
	}
}

// kill -9 without a service manager: of the trial child (a crash: the
// watchdog counts it and starts the version again, which then commits),
// and of the watchdog itself (the child dies with it; the state stays a
// consistent trial that the next start of outpost, a reboot, resumes).
func TestWatchdogKill9(t *testing.T) {
	setup := func(t *testing.T) (*gateway, *supervisor) {
		r := newTestRepo(t)
		srv := newServer(t, r.Dir)
		g := newGateway(t, "1.0.0", srv.URL, r.root)
		g.cfg.Restart = "exec"
		g.cfg.StabilityWindow = config.Duration(3 * time.Second)
		g.cfg.StartDeadline = config.Duration(10 * time.Second)
		return g, g.runOnce(t)
	}
	t.Run("trial-child", func(t *testing.T) {
		g, s := setup(t)
		pid := s.onePid(t)
		kid := s.trialChild(t, pid)
		if err := syscall.Kill(kid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		st := s.waitCommitted(t, "1.1.0", 60*time.Second)
		if len(st.Bad) != 0 {
			t.Fatalf("bad %v after one crash with max_attempts 2", st.Bad)
		}
		s.waitSingle(t, "1.1.0")
		if !strings.Contains(s.logText(), "killed by signal killed") {
			t.Fatal("the watchdog did not see the child's death")
		}
		if g.installedVersion(t) != "1.1.0" {
			t.Fatal("wrong binary")
		}
	})
	t.Run("watchdog", func(t *testing.T) {
		g, s := setup(t)
		pid := s.onePid(t)
		kid := s.trialChild(t, pid)
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-s.done
		// The trial child dies with its watchdog (no orphan keeps running).
		checkFor(t, 10*time.Second, func() error {
			if alive(kid) {
				return fmt.Errorf("trial child %d outlived its watchdog", kid)
			}
			return nil
		})
		st := g.state(t)
		if st.Phase != ota.PhaseTrial || st.Target == nil || st.Target.Version != "1.1.0" || st.Attempts != 1 {
			t.Fatalf("state after kill -9 of the watchdog: %+v", st)
		}
		if g.installedVersion(t) != "1.1.0" || sha256File(t, g.bin+".prev") != sha256File(t, fixture.bins["1.0.0"]) {
			t.Fatal("binaries inconsistent")
		}
		// Reboot: the init script starts outpost (now 1.1.0) once again.
		s2 := g.runOnce(t)
		if st := s2.waitCommitted(t, "1.1.0", 60*time.Second); len(st.Bad) != 0 {
			t.Fatalf("bad %v", st.Bad)
		}
		s2.waitSingle(t, "1.1.0")
	})
}

// kill -9 (power cut) at the watchdog's own steps and just after install,
// with restarts as a reboot would do them: the agent only ever runs A or B
// and ends committed on B.
func TestWatchdogCrashAtEachStep(t *testing.T) {
	for _, fp := range []string{"after-install", "watchdog-started", "watchdog-handover"} {
		t.Run(fp, func(t *testing.T) {
			r := newTestRepo(t)
			srv := newServer(t, r.Dir)
			g := newGateway(t, "1.0.0", srv.URL, r.root)
			g.cfg.Restart = "exec"
			s := g.supervise(t, fp)
			checkFor(t, 60*time.Second, func() error {
				s.mu.Lock()
				defer s.mu.Unlock()
				if !slices.Contains(s.exits, "killed") {
					return fmt.Errorf("failpoint %s has not fired: exits %v", fp, s.exits)
				}
				return nil
			})
			s.waitCommitted(t, "1.1.0", 60*time.Second)
			s.assertOnlyKnownVersions(t, "1.0.0", "1.1.0")
			if st := g.state(t); len(st.Bad) != 0 {
				t.Fatalf("bad %v", st.Bad)
			}
		})
	}
}

// A graceful stop (SIGTERM) during the trial is not a failed attempt: with
// max_attempts 1, restarting the trial version by SIGTERM, under a service
// manager or without one (the watchdog forwards the signal and exits), does
// not roll it back; it is committed after the restart. A kill -9 instead is.
func TestTrialGracefulStopNotCounted(t *testing.T) {
	setup := func(t *testing.T, restart string) *gateway {
		r := newTestRepo(t)
		srv := newServer(t, r.Dir)
		g := newGateway(t, "1.0.0", srv.URL, r.root)
		g.cfg.Restart = restart
		g.cfg.MaxAttempts = 1
		g.cfg.StabilityWindow = config.Duration(3 * time.Second)
		g.cfg.StartDeadline = config.Duration(10 * time.Second)
		return g
	}
	waitTrial := func(t *testing.T, s *supervisor) {
		checkFor(t, 30*time.Second, func() error {
			st, err := s.status()
			if err != nil {
				return err
			}
			if st.Running != "1.1.0" || st.Phase != ota.PhaseTrial {
				return fmt.Errorf("running %s phase %s", st.Running, st.Phase)
			}
			return nil
		})
	}
	t.Run("service-manager", func(t *testing.T) {
		g := setup(t, "exit")
		g.prestart = true
		s := g.supervise(t, "")
		waitTrial(t, s)
		s.mu.Lock()
		pid := s.cur.Process.Pid
		s.mu.Unlock()
		syscall.Kill(pid, syscall.SIGTERM) // systemctl restart
		st := s.waitCommitted(t, "1.1.0", 60*time.Second)
		if len(st.Bad) != 0 {
			t.Fatalf("a graceful restart counted as a failed attempt: bad %v", st.Bad)
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if !slices.Contains(s.exits, "0") {
			t.Fatalf("no graceful exit: %v", s.exits)
		}
	})
	t.Run("watchdog", func(t *testing.T) {
		g := setup(t, "exec")
		s := g.runOnce(t)
		waitTrial(t, s)
		syscall.Kill(s.onePid(t), syscall.SIGTERM) // the operator stops outpost
		<-s.done
		s.mu.Lock()
		exits := slices.Clone(s.exits)
		s.mu.Unlock()
		if !slices.Equal(exits, []string{"0"}) {
			t.Fatalf("watchdog exit %v, want the child's 0", exits)
		}
		if st := g.state(t); st.Phase != ota.PhaseTrial || !st.CleanStop {
			t.Fatalf("state after a graceful stop: %+v", st)
		}
		s2 := g.runOnce(t)
		st := s2.waitCommitted(t, "1.1.0", 60*time.Second)
		if len(st.Bad) != 0 {
			t.Fatalf("bad %v", st.Bad)
		}
		s2.waitSingle(t, "1.1.0")
	})
	t.Run("kill9-counts", func(t *testing.T) {
		g := setup(t, "exit")
		g.prestart = true
		// Only A and B: after the rollback nothing else is offered.
		s := g.supervise(t, "")
		waitTrial(t, s)
		s.kill9()
		checkFor(t, 30*time.Second, func() error {
			st, err := ota.LoadState(g.cfg.StateFile)
			if err != nil {
				return err
			}
			if !slices.Contains(st.Bad, "1.1.0") {
				return fmt.Errorf("phase %s bad %v", st.Phase, st.Bad)
			}
			return nil
		})
	})
}
