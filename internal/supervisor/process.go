package supervisor

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/outpost-edge/outpost/internal/supervisor/cgroup"
)

// credential is a resolved user/group to run as.
type credential struct {
	uid, gid int
	groups   []int
}

// procSpec describes one process to start.
type procSpec struct {
	argv   []string // argv[0] is resolved to a path by spawn
	env    []string
	dir    string
	cred   *credential
	group  *cgroup.Group // nil: no cgroup
	pids   int64         // the group's pids limit (restored after a v1 start)
	stdout *os.File      // write ends, closed by the caller after spawn
	stderr *os.File
	egress *os.File // netpol egress group (cgroup2) to start in; nil: none
}

// proc is a started process, leader of its own process group.
type proc struct {
	cmd        *exec.Cmd
	pid        int
	startTicks uint64 // /proc/<pid>/stat starttime, to recognise it later
	started    time.Time
	group      *cgroup.Group
	oomBase    uint64
	done       chan struct{} // closed when the process has been reaped
	state      *os.ProcessState
}

// lookPath resolves a program name like a shell would, but against the
// component's PATH and working directory instead of the agent's.
func lookPath(name, dir string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		p := name
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		if err := executable(p); err != nil {
			return "", err
		}
		return p, nil
	}
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			path = v
		}
	}
	for _, d := range filepath.SplitList(path) {
		if d == "" {
			d = "."
		}
		p := filepath.Join(d, name)
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		if executable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found in PATH %s", name, path)
}

func executable(p string) error {
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	if st.IsDir() || st.Mode()&0o111 == 0 {
		return fmt.Errorf("%s: not an executable file", p)
	}
	return nil
}

// spawn starts the process in its own process group and, when a group is
// given, inside its cgroup from its first instruction: on v2 with
// CLONE_INTO_CGROUP, on v1 by forking from a thread that was moved into the
// group (startInGroupV1). stdin is /dev/null.
func spawn(s procSpec) (*proc, error) {
	if len(s.argv) == 0 {
		return nil, errors.New("empty command")
	}
	prog, err := lookPath(s.argv[0], s.dir, s.env)
	if err != nil {
		return nil, err
	}
	cmd := &exec.Cmd{
		Path:   prog,
		Args:   s.argv,
		Env:    s.env,
		Dir:    s.dir,
		Stdout: s.stdout,
		Stderr: s.stderr,
		SysProcAttr: &syscall.SysProcAttr{
			Setpgid: true,
		},
	}
	if s.group != nil && !s.group.NeedsEnter() { // v2: create the process inside its group
		fd, err := s.group.OpenDir()
		if err != nil {
			return nil, err
		}
		defer fd.Close()
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = int(fd.Fd())
	}
	if s.egress != nil && !cmd.SysProcAttr.UseCgroupFD {
		// The egress group is in the BPF-only cgroup2 hierarchy; v1
		// groups (NeedsEnter) are independent of it.
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = int(s.egress.Fd())
	}
	if s.cred != nil {
		cmd.SysProcAttr.Credential = &syscall.Credential{
			Uid: uint32(s.cred.uid), Gid: uint32(s.cred.gid), Groups: toU32(s.cred.groups),
		}
	}
	p := &proc{cmd: cmd, group: s.group, done: make(chan struct{})}
	if s.group != nil {
		p.oomBase = s.group.OOMKills()
	}
	var err2 error
	if s.group != nil && s.group.NeedsEnter() {
		err2 = startInGroupV1(cmd, s.group, s.pids)
	} else {
		err2 = cmd.Start()
	}
	if err2 != nil {
		return nil, err2
	}
	p.pid = cmd.Process.Pid
	p.started = time.Now()
	p.startTicks, _ = procStartTicks(p.pid)
	go func() {
		awaitExit(p.pid)
		_ = cmd.Wait()
		p.state = cmd.ProcessState
		close(p.done)
	}()
	return p, nil
}

// awaitExit parks the calling goroutine until the child pid has exited,
// without holding an OS thread: it polls a pidfd through the runtime's
// network poller. cmd.Wait alone blocks a thread in waitid(2) for the
// child's whole life, and each thread costs the agent about 50 KiB (its
// system and signal stacks): 100 components meant 100 parked threads.
// Where pidfds are missing (Linux < 5.3) it returns at once and the caller's
// Wait blocks a thread as before. The pid cannot be reused before Wait reaps
// it, so the pidfd refers to our child.
func awaitExit(pid int) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return
	}
	// A non-blocking fd given to os.NewFile is registered with the poller.
	f := os.NewFile(uintptr(fd), "pidfd")
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Read(func(fd uintptr) bool {
		// Read calls this until it reports true, waiting for the poller
		// in between. It must look for itself: an exit that happened
		// before Read armed the poller produced its only (edge-triggered)
		// event already. A zero-timeout poll(2) says whether the pidfd is
		// readable (the child has exited); on an error Wait takes over.
		pf := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(pf, 0)
		return err != nil || n > 0
	})
}

func toU32(in []int) []uint32 {
	out := make([]uint32, len(in))
	for i, v := range in {
		out[i] = uint32(v)
	}
	return out
}

// exitInfo describes how a process ended.
type exitInfo struct {
	Code      int    // exit code, or -1 when killed by a signal
	Signal    string // signal name when killed by one
	OOMKilled bool   // the cgroup's OOM killer fired during this run
	Runtime   time.Duration
}

func (e exitInfo) success() bool { return e.Code == 0 && e.Signal == "" && !e.OOMKilled }

func (e exitInfo) String() string {
	switch {
	case e.OOMKilled:
		s := "killed by the kernel OOM killer (memory limit)"
		if e.Signal != "" {
			s += " with " + e.Signal
		}
		return s
	case e.Signal != "":
		return "killed by " + e.Signal
	}
	return fmt.Sprintf("exited with code %d", e.Code)
}

// exit returns the process's exit information; call after done is closed.
func (p *proc) exit() exitInfo {
	e := exitInfo{Code: -1, Runtime: time.Since(p.started)}
	if p.state != nil {
		if ws, ok := p.state.Sys().(syscall.WaitStatus); ok {
			switch {
			case ws.Exited():
				e.Code = ws.ExitStatus()
			case ws.Signaled():
				e.Signal = signalName(ws.Signal())
			}
		}
	}
	if p.group != nil && p.group.OOMKills() > p.oomBase {
		e.OOMKilled = true
	}
	return e
}

func signalName(s syscall.Signal) string {
	names := map[syscall.Signal]string{
		syscall.SIGKILL: "SIGKILL", syscall.SIGTERM: "SIGTERM", syscall.SIGSEGV: "SIGSEGV",
		syscall.SIGABRT: "SIGABRT", syscall.SIGINT: "SIGINT", syscall.SIGHUP: "SIGHUP",
		syscall.SIGBUS: "SIGBUS", syscall.SIGILL: "SIGILL", syscall.SIGFPE: "SIGFPE",
		syscall.SIGPIPE: "SIGPIPE", syscall.SIGQUIT: "SIGQUIT", syscall.SIGUSR1: "SIGUSR1",
		syscall.SIGUSR2: "SIGUSR2", syscall.SIGALRM: "SIGALRM", syscall.SIGXCPU: "SIGXCPU",
	}
	if n, ok := names[s]; ok {
		return n
	}
	return fmt.Sprintf("signal %d", int(s))
}

// members returns the processes belonging to the component: its cgroup's
// members, plus (always) those in its process group.
func (p *proc) members() []int {
	return groupMembers(p.group, p.pid)
}

func groupMembers(g *cgroup.Group, pgid int) []int {
	seen := map[int]bool{}
	var out []int
	if g != nil {
		pids, _ := g.Pids()
		for _, pid := range pids {
			seen[pid] = true
			out = append(out, pid)
		}
	}
	if pgid > 0 {
		for _, pid := range pgroupMembers(pgid) {
			if !seen[pid] {
				out = append(out, pid)
			}
		}
	}
	return out
}

// terminate stops the process tree: SIGTERM (and SIGCONT, so a stopped
// process can act on it) to the process group and every cgroup member, up to
// grace for the leader to exit, then SIGKILL to everything left. It returns
// when the leader has been reaped and no member is left (or after a bounded
// wait), and hands killed descendants to the reaper.
func (p *proc) terminate(grace time.Duration, r *reaper) {
	select {
	case <-p.done:
	default:
		members := p.members()
		for _, m := range members {
			if m != p.pid {
				r.track(m)
			}
		}
		for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGCONT} {
			_ = syscall.Kill(-p.pid, sig)
			for _, m := range members {
				_ = syscall.Kill(m, sig)
			}
		}
		t := time.NewTimer(grace)
		select {
		case <-p.done:
			t.Stop()
		case <-t.C:
		}
	}
	p.killAll(r)
	<-p.done
}

// killAll SIGKILLs the process group and the cgroup until both are empty
// (bounded), and registers the killed pids with the reaper.
func (p *proc) killAll(r *reaper) {
	killTree(p.group, p.pid, p.pid, r)
}

// killTree kills every member of g and of process group pgid. leader is a
// pid that exec.Cmd.Wait reaps (not handed to the reaper); 0 if none.
func killTree(g *cgroup.Group, pgid, leader int, r *reaper) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		ms := groupMembers(g, pgid)
		var live []int
		for _, m := range ms {
			if m != leader {
				r.track(m) // zombies too: they may be re-parented to us
			}
			if st, _ := procState(m); st != 'Z' {
				live = append(live, m)
			}
		}
		if len(live) == 0 {
			break
		}
		if g != nil && g.Mode() != cgroup.None {
			_, _ = g.Kill(time.Second)
		}
		if pgid > 0 {
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
		}
		for _, m := range live {
			_ = syscall.Kill(m, syscall.SIGKILL)
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	if pgid > 0 {
		r.track(zombieChildrenIn(pgid, leader)...)
	}
	r.reapNow()
}

// zombieChildrenIn lists zombies re-parented to this process whose process
// group is pgid (descendants that died before they were ever seen).
func zombieChildrenIn(pgid, leader int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self, want := strconv.Itoa(os.Getpid()), strconv.Itoa(pgid)
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == leader {
			continue
		}
		if f, err := procStat(pid); err == nil && f[0] == "Z" && f[1] == self && f[2] == want {
			out = append(out, pid)
		}
	}
	return out
}

// procStat returns fields of /proc/<pid>/stat after the command name:
// index 0 is the state, 1 ppid, 2 pgrp, ..., 19 starttime.
func procStat(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil, fmt.Errorf("bad stat for %d", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return nil, fmt.Errorf("short stat for %d", pid)
	}
	return f, nil
}

func procStartTicks(pid int) (uint64, error) {
	f, err := procStat(pid)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(f[19], 10, 64)
}

func procState(pid int) (byte, error) {
	f, err := procStat(pid)
	if err != nil {
		return 0, err
	}
	return f[0][0], nil
}

// pgroupMembers lists live processes whose process group is pgid.
func pgroupMembers(pgid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	want := strconv.Itoa(pgid)
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f, err := procStat(pid)
		if err != nil || f[2] != want || f[0] == "Z" {
			continue
		}
		out = append(out, pid)
	}
	return out
}

// reaper reaps descendants of killed components that were re-parented to
// the agent, which marks itself a child subreaper (PR_SET_CHILD_SUBREAPER)
// so that such orphans come to it instead of init. It only waits for pids it
// was told about, identified by pid and start time, so it never steals the
// exit status of another part of the program's children.
type reaper struct {
	mu   sync.Mutex
	pids map[int]reapEntry
}

type reapEntry struct {
	ticks uint64
	added time.Time
}

func newReaper() *reaper { return &reaper{pids: map[int]reapEntry{}} }

const prSetChildSubreaper = 36

// becomeSubreaper marks this process as a child subreaper.
func becomeSubreaper() error {
	_, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0)
	if errno != 0 {
		return errno
	}
	return nil
}

func (r *reaper) track(pids ...int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range pids {
		if _, ok := r.pids[p]; ok {
			continue
		}
		if t, err := procStartTicks(p); err == nil {
			r.pids[p] = reapEntry{ticks: t, added: time.Now()}
		}
	}
}

// reapNow waits (without blocking) for every tracked pid that is now a
// zombie child of this process; entries that vanished or are older than a
// minute are dropped.
func (r *reaper) reapNow() {
	r.mu.Lock()
	defer r.mu.Unlock()
	self := strconv.Itoa(os.Getpid())
	for pid, e := range r.pids {
		f, err := procStat(pid)
		if err != nil {
			delete(r.pids, pid) // gone: reaped by its parent or by us
			continue
		}
		if t, _ := strconv.ParseUint(f[19], 10, 64); t != e.ticks {
			delete(r.pids, pid) // pid reused by another process
			continue
		}
		if f[0] == "Z" && f[1] == self {
			var ws syscall.WaitStatus
			if wpid, _ := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil); wpid == pid {
				delete(r.pids, pid)
				continue
			}
		}
		if time.Since(e.added) > time.Minute {
			delete(r.pids, pid)
		}
	}
}

func (r *reaper) pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pids)
}

func syscallKill(pid, sig int) error { return syscall.Kill(pid, syscall.Signal(sig)) }

// startInGroupV1 starts cmd so that the child is born inside g (cgroup v1,
// which has no CLONE_INTO_CGROUP). A fresh OS thread is locked, moved into
// the group (v1 places threads individually: writing a thread id to
// "tasks"), and forks the child, which inherits the thread's groups. The
// thread is moved back at once (while it is in the group, cgroup.procs
// lists the agent's own pid, which Pids filters out), and the goroutine
// exits still locked, so the Go runtime destroys that thread rather than
// reuse it.
func startInGroupV1(cmd *exec.Cmd, g *cgroup.Group, pidsLimit int64) error {
	if pidsLimit > 0 {
		// The forking thread counts against pids.max while it is inside:
		// lift the limit for the fork, restore it right after.
		_ = g.SetPids(0)
		defer g.SetPids(pidsLimit)
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread dies with this goroutine.
		restore, err := g.EnterThread(syscall.Gettid())
		if err != nil {
			errc <- fmt.Errorf("enter cgroup: %w", err)
			return
		}
		err = cmd.Start()
		if rerr := restore(); rerr != nil && err == nil {
			// The thread dies anyway; the child was born in the group.
			_ = rerr
		}
		errc <- err
	}()
	return <-errc
}
