// Package cgroup puts supervised components into their own Linux control
// groups and enforces their resource limits, on cgroup v2 (unified) or v1
// (one hierarchy per controller), whichever the machine provides.
//
// Detect inspects /proc/self/mountinfo once:
//
//   - v2 is used when a cgroup2 mount offers the memory controller;
//   - otherwise v1 is used when the memory controller is mounted as a v1
//     hierarchy (cpu, pids and freezer are used when mounted too). Hybrid
//     systems, where the unified mount has no memory controller, land here;
//   - otherwise, or when the parent group cannot be created (not root,
//     read-only /sys/fs/cgroup), the mode is None and Reason says why:
//     components then run without limits.
//
// Every component gets <hierarchy>/<parent>/<name>. On v2 a process is
// created directly inside its group (clone3 CLONE_INTO_CGROUP via
// syscall.SysProcAttr.UseCgroupFD); on v1 the caller forks it from a thread
// it moved into the group first (EnterThread), so no child escapes.
//
// Limits: memory (v2 memory.max with memory.swap.max=0; v1
// memory.limit_in_bytes and memory.memsw.limit_in_bytes when swap accounting
// exists), CPU as a CFS quota per 100ms period, and pids.max.
// OOM kills are counted from memory.events (v2) or memory.oom_control (v1).
package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Mode is the cgroup flavour in use.
type Mode string

const (
	V2   Mode = "v2"
	V1   Mode = "v1"
	None Mode = "none"
)

// Limits are a group's resource limits; zero means unlimited.
type Limits struct {
	Memory int64   // bytes
	CPU    float64 // cores
	Pids   int64
}

// ErrUnavailable is returned by group operations when the mode is None.
var ErrUnavailable = errors.New("cgroup: unavailable")

const cpuPeriod = 100000 // µs

// Manager owns the parent group of all components.
type Manager struct {
	mode   Mode
	reason string
	v2     string            // <mount>/<parent>
	v1     map[string]string // controller -> <mount>/<parent>
	v1mnt  map[string]mount  // controller -> its mount
	parent string
	self   int // this process's pid, never reported as a member
}

type mount struct {
	dir   string
	fs    string // cgroup or cgroup2
	opts  map[string]bool
	croot string // the mount's root within the hierarchy
}

func mounts() ([]mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mount
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+3 > len(fields) || len(fields) < 5 {
			continue
		}
		fs := fields[sep+1]
		if fs != "cgroup" && fs != "cgroup2" {
			continue
		}
		m := mount{dir: unescape(fields[4]), fs: fs, croot: fields[3], opts: map[string]bool{}}
		for _, o := range strings.Split(fields[sep+3], ",") {
			m.opts[o] = true
		}
		out = append(out, m)
	}
	return out, sc.Err()
}

func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Detect chooses the cgroup mode and creates the parent group (a path
// relative to each hierarchy's root, e.g. "outpost"). want is "auto" (or
// ""), "v2", "v1" or "none". Only hierarchies mounted under root are used
// ("" means /sys/fs/cgroup).
func Detect(parent, want string) *Manager { return DetectUnder("/sys/fs/cgroup", parent, want) }

// DetectUnder is Detect with an explicit mount root.
func DetectUnder(root, parent, want string) *Manager {
	if root == "" {
		root = "/sys/fs/cgroup"
	}
	root = filepath.Clean(root)
	m := &Manager{mode: None, parent: parent, self: os.Getpid()}
	if want == "none" {
		m.reason = "cgroups disabled by configuration"
		return m
	}
	if parent == "" || strings.Contains(parent, "..") {
		m.reason = fmt.Sprintf("invalid cgroup parent %q", parent)
		return m
	}
	all, err := mounts()
	if err != nil {
		m.reason = "cannot read mountinfo: " + err.Error()
		return m
	}
	var ms []mount
	for _, mt := range all {
		if mt.dir == root || strings.HasPrefix(mt.dir, root+"/") {
			ms = append(ms, mt)
		}
	}
	var problems []string
	if want == "" || want == "auto" || want == "v2" {
		for _, mt := range ms {
			if mt.fs != "cgroup2" {
				continue
			}
			ctrl, err := os.ReadFile(filepath.Join(mt.dir, "cgroup.controllers"))
			if err != nil || !hasWord(string(ctrl), "memory") {
				problems = append(problems, fmt.Sprintf("cgroup v2 at %s has no memory controller", mt.dir))
				continue
			}
			dir := filepath.Join(mt.dir, parent)
			if err := setupV2Parent(mt.dir, dir); err != nil {
				problems = append(problems, fmt.Sprintf("cgroup v2 at %s: %v", mt.dir, err))
				continue
			}
			m.mode, m.v2 = V2, dir
			return m
		}
	}
	if want == "" || want == "auto" || want == "v1" {
		v1 := map[string]string{}
		v1mnt := map[string]mount{}
		for _, mt := range ms {
			if mt.fs != "cgroup" {
				continue
			}
			for _, c := range []string{"memory", "cpu", "pids", "freezer"} {
				if mt.opts[c] && v1[c] == "" {
					v1[c] = filepath.Join(mt.dir, parent)
					v1mnt[c] = mt
				}
			}
		}
		if v1["memory"] == "" {
			problems = append(problems, "no cgroup v1 memory hierarchy mounted")
		} else {
			var err error
			for _, dir := range v1 {
				if err = os.MkdirAll(dir, 0o755); err != nil {
					break
				}
			}
			if err == nil {
				m.mode, m.v1, m.v1mnt = V1, v1, v1mnt
				return m
			}
			problems = append(problems, fmt.Sprintf("cgroup v1: %v", err))
		}
	}
	if len(problems) == 0 {
		problems = append(problems, "no usable cgroup hierarchy")
	}
	m.reason = strings.Join(problems, "; ")
	return m
}

func hasWord(s, w string) bool {
	for _, f := range strings.Fields(s) {
		if f == w {
			return true
		}
	}
	return false
}

func setupV2Parent(mnt, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	// Enable controllers from the mount down to the parent, so that the
	// components' groups below it get them. Missing ones are skipped.
	rel, _ := filepath.Rel(mnt, dir)
	cur := mnt
	for _, part := range append([]string{""}, strings.Split(rel, string(filepath.Separator))...) {
		if part != "" {
			cur = filepath.Join(cur, part)
		}
		for _, c := range []string{"memory", "cpu", "pids"} {
			_ = os.WriteFile(filepath.Join(cur, "cgroup.subtree_control"), []byte("+"+c), 0)
		}
	}
	sc, err := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
	if err != nil {
		return err
	}
	if !hasWord(string(sc), "memory") {
		return fmt.Errorf("cannot enable the memory controller below %s (a v2 group with processes cannot delegate controllers: run the agent in a leaf group)", dir)
	}
	return nil
}

// Mode returns the mode in use.
func (m *Manager) Mode() Mode { return m.mode }

// Reason says why the mode is None, or which controllers are missing.
func (m *Manager) Reason() string {
	if m.mode == V1 {
		var missing []string
		for _, c := range []string{"cpu", "pids"} {
			if m.v1[c] == "" {
				missing = append(missing, c)
			}
		}
		if len(missing) > 0 {
			return "cgroup v1 without " + strings.Join(missing, ", ") + " controller"
		}
	}
	return m.reason
}

// Supports reports whether a limit kind ("memory", "cpu", "pids") can be
// enforced.
func (m *Manager) Supports(ctrl string) bool {
	switch m.mode {
	case V2:
		b, err := os.ReadFile(filepath.Join(m.v2, "cgroup.subtree_control"))
		return err == nil && hasWord(string(b), ctrl)
	case V1:
		return m.v1[ctrl] != ""
	}
	return false
}

// Names lists the component groups that exist under the parent (left over
// from a previous agent run, for example).
func (m *Manager) Names() ([]string, error) {
	var dir string
	switch m.mode {
	case V2:
		dir = m.v2
	case V1:
		dir = m.v1["memory"]
	default:
		return nil, nil
	}
	es, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("cgroup: list %s: %w", dir, err)
	}
	var out []string
	for _, e := range es {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// RemoveParent removes the (empty) parent group; used by tests.
func (m *Manager) RemoveParent() error {
	var errs []error
	switch m.mode {
	case V2:
		errs = append(errs, os.Remove(m.v2))
	case V1:
		for _, d := range m.v1 {
			errs = append(errs, os.Remove(d))
		}
	}
	return errors.Join(errs...)
}

// Group returns the handle of a component's group (not created yet).
func (m *Manager) Group(name string) *Group {
	g := &Group{m: m, name: name}
	switch m.mode {
	case V2:
		g.dirs = map[string]string{"": filepath.Join(m.v2, name)}
	case V1:
		g.dirs = map[string]string{}
		for c, d := range m.v1 {
			g.dirs[c] = filepath.Join(d, name)
		}
	}
	return g
}

// Group is one component's control group (one directory per hierarchy).
type Group struct {
	m    *Manager
	name string
	dirs map[string]string // controller (v1) or "" (v2) -> directory
}

// Mode returns the manager's mode.
func (g *Group) Mode() Mode { return g.m.mode }

// Path returns the group's directory for a controller ("" on v2, or
// "memory", "cpu", ... on v1).
func (g *Group) Path(ctrl string) string { return g.dirs[ctrl] }

func (g *Group) dir(ctrl string) string {
	if g.m.mode == V2 {
		return g.dirs[""]
	}
	return g.dirs[ctrl]
}

// Create makes the group's directories (if missing) and sets its limits;
// zero limits are written as "unlimited", so a group reused after a recipe
// change loses its old limits.
func (g *Group) Create(l Limits) error {
	if g.m.mode == None {
		return ErrUnavailable
	}
	for _, d := range g.dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("cgroup: create %s: %w", d, err)
		}
	}
	var errs []error
	w := func(ctrl, file, val string) {
		d := g.dir(ctrl)
		if d == "" {
			return
		}
		p := filepath.Join(d, file)
		if err := os.WriteFile(p, []byte(val), 0); err != nil {
			errs = append(errs, fmt.Errorf("cgroup: write %s=%s: %w", p, val, err))
		}
	}
	exists := func(ctrl, file string) bool {
		d := g.dir(ctrl)
		if d == "" {
			return false
		}
		_, err := os.Stat(filepath.Join(d, file))
		return err == nil
	}
	switch g.m.mode {
	case V2:
		mem := "max"
		if l.Memory > 0 {
			mem = strconv.FormatInt(l.Memory, 10)
		}
		if exists("", "memory.max") {
			w("", "memory.max", mem)
			if exists("", "memory.swap.max") {
				swap := "max"
				if l.Memory > 0 {
					swap = "0"
				}
				w("", "memory.swap.max", swap)
			}
		} else if l.Memory > 0 {
			errs = append(errs, fmt.Errorf("cgroup: memory controller not enabled for %s", g.dir("")))
		}
		cpu := fmt.Sprintf("max %d", cpuPeriod)
		if l.CPU > 0 {
			cpu = fmt.Sprintf("%d %d", int64(l.CPU*cpuPeriod), cpuPeriod)
		}
		if exists("", "cpu.max") {
			w("", "cpu.max", cpu)
		}
		pids := "max"
		if l.Pids > 0 {
			pids = strconv.FormatInt(l.Pids, 10)
		}
		if exists("", "pids.max") {
			w("", "pids.max", pids)
		}
	case V1:
		mem := "-1"
		if l.Memory > 0 {
			mem = strconv.FormatInt(l.Memory, 10)
		}
		// memsw must stay >= limit: lift it before changing the limit.
		if exists("memory", "memory.memsw.limit_in_bytes") {
			w("memory", "memory.memsw.limit_in_bytes", "-1")
		}
		w("memory", "memory.limit_in_bytes", mem)
		if l.Memory > 0 && exists("memory", "memory.memsw.limit_in_bytes") {
			w("memory", "memory.memsw.limit_in_bytes", mem)
		}
		quota := "-1"
		if l.CPU > 0 {
			quota = strconv.FormatInt(int64(l.CPU*cpuPeriod), 10)
		}
		if g.dir("cpu") != "" {
			w("cpu", "cpu.cfs_period_us", strconv.Itoa(cpuPeriod))
			w("cpu", "cpu.cfs_quota_us", quota)
		}
		pids := "max"
		if l.Pids > 0 {
			pids = strconv.FormatInt(l.Pids, 10)
		}
		if g.dir("pids") != "" {
			w("pids", "pids.max", pids)
		}
	}
	return errors.Join(errs...)
}

// NeedsEnter reports whether processes must be placed with Enter or
// EnterThread (v1); on v2 they are created inside the group with the FD
// from OpenDir.
func (g *Group) NeedsEnter() bool { return g.m.mode == V1 }

// Enter moves a process into the group in every hierarchy (v1).
func (g *Group) Enter(pid int) error {
	var errs []error
	for c, d := range g.dirs {
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
			errs = append(errs, fmt.Errorf("cgroup: enter %s (%s): %w", d, c, err))
		}
	}
	return errors.Join(errs...)
}

// EnterThread moves one thread of this process (by thread id) into the
// group in every hierarchy (v1 only, where threads are placed
// individually), so that a process it forks is born inside the group.
// restore moves the thread back where it was; call it right after the fork,
// before anything lists the group's members.
func (g *Group) EnterThread(tid int) (restore func() error, err error) {
	if g.m.mode != V1 {
		return nil, ErrUnavailable
	}
	orig, err := threadGroups(tid)
	if err != nil {
		return nil, err
	}
	var back []string // tasks files to write tid to on restore
	for c := range g.dirs {
		mt := g.m.v1mnt[c]
		rel, ok := orig[c]
		if !ok {
			return nil, fmt.Errorf("cgroup: thread %d has no %s group", tid, c)
		}
		rel = strings.TrimPrefix(rel, strings.TrimSuffix(mt.croot, "/"))
		back = append(back, filepath.Join(mt.dir, rel, "tasks"))
	}
	restore = func() error {
		var errs []error
		for _, f := range back {
			if err := os.WriteFile(f, []byte(strconv.Itoa(tid)), 0); err != nil {
				errs = append(errs, fmt.Errorf("cgroup: restore thread %d to %s: %w", tid, f, err))
			}
		}
		return errors.Join(errs...)
	}
	for c, d := range g.dirs {
		if err := os.WriteFile(filepath.Join(d, "tasks"), []byte(strconv.Itoa(tid)), 0); err != nil {
			_ = restore()
			return nil, fmt.Errorf("cgroup: enter thread %s (%s): %w", d, c, err)
		}
	}
	return restore, nil
}

// SetPids sets pids.max (0: unlimited). No-op without a pids controller.
func (g *Group) SetPids(n int64) error {
	d := g.dir("pids")
	if d == "" {
		return nil
	}
	v := "max"
	if n > 0 {
		v = strconv.FormatInt(n, 10)
	}
	return os.WriteFile(filepath.Join(d, "pids.max"), []byte(v), 0)
}

// threadGroups reads /proc/self/task/<tid>/cgroup: controller -> path.
func threadGroups(tid int) (map[string]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/cgroup", tid))
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		for _, c := range strings.Split(f[1], ",") {
			out[c] = f[2]
		}
	}
	return out, nil
}

// OpenDir opens the group directory for CLONE_INTO_CGROUP (v2 only).
func (g *Group) OpenDir() (*os.File, error) {
	if g.m.mode != V2 {
		return nil, ErrUnavailable
	}
	return os.OpenFile(g.dirs[""], os.O_RDONLY|syscall.O_DIRECTORY, 0)
}

// Pids returns the processes in the group (union over hierarchies).
func (g *Group) Pids() ([]int, error) {
	seen := map[int]bool{}
	var out []int
	var firstErr error
	for _, d := range g.dirs {
		b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) && firstErr == nil {
				firstErr = err
			}
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil && !seen[pid] && pid != g.m.self {
				seen[pid] = true
				out = append(out, pid)
			}
		}
	}
	return out, firstErr
}

// OOMKills returns how many processes the kernel's OOM killer has killed in
// this group since it was created.
func (g *Group) OOMKills() uint64 {
	var file string
	switch g.m.mode {
	case V2:
		file = filepath.Join(g.dirs[""], "memory.events")
	case V1:
		if g.dirs["memory"] == "" {
			return 0
		}
		file = filepath.Join(g.dirs["memory"], "memory.oom_control")
	default:
		return 0
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == "oom_kill" {
			n, _ := strconv.ParseUint(f[1], 10, 64)
			return n
		}
	}
	return 0
}

// MemoryUsage returns the group's current memory use in bytes (0 when
// unknown).
func (g *Group) MemoryUsage() int64 {
	var file string
	switch g.m.mode {
	case V2:
		file = filepath.Join(g.dirs[""], "memory.current")
	case V1:
		file = filepath.Join(g.dirs["memory"], "memory.usage_in_bytes")
	default:
		return 0
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return n
}

// Kill sends SIGKILL to every process in the group until it is empty or
// timeout passes. On v2 it uses cgroup.kill when the kernel has it; on v1
// it freezes the group first (when the freezer is mounted) so that no
// process can fork while the others are being killed. It returns the pids
// it signalled, so the caller can reap those that were re-parented to it.
func (g *Group) Kill(timeout time.Duration) ([]int, error) {
	if g.m.mode == None {
		return nil, ErrUnavailable
	}
	var killed []int
	seen := map[int]bool{}
	deadline := time.Now().Add(timeout)
	for {
		pids, err := g.Pids()
		if err != nil {
			return killed, err
		}
		if len(pids) == 0 {
			return killed, nil
		}
		for _, p := range pids {
			if !seen[p] {
				seen[p] = true
				killed = append(killed, p)
			}
		}
		if g.m.mode == V2 {
			if err := os.WriteFile(filepath.Join(g.dirs[""], "cgroup.kill"), []byte("1"), 0); err != nil {
				for _, p := range pids {
					_ = syscall.Kill(p, syscall.SIGKILL)
				}
			}
		} else {
			frozen := g.freeze(true)
			for _, p := range pids {
				_ = syscall.Kill(p, syscall.SIGKILL)
			}
			if frozen {
				g.freeze(false)
			}
		}
		if time.Now().After(deadline) {
			return killed, fmt.Errorf("cgroup: %s still has processes %v after %s", g.name, pids, timeout)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// freeze freezes (or thaws) the group's v1 freezer; it reports whether the
// freezer is available. SIGKILL is delivered to frozen tasks on thaw.
func (g *Group) freeze(on bool) bool {
	d := g.dirs["freezer"]
	if d == "" {
		return false
	}
	state := "THAWED"
	if on {
		state = "FROZEN"
	}
	if err := os.WriteFile(filepath.Join(d, "freezer.state"), []byte(state), 0); err != nil {
		return false
	}
	if on {
		for i := 0; i < 100; i++ {
			b, err := os.ReadFile(filepath.Join(d, "freezer.state"))
			if err != nil || strings.TrimSpace(string(b)) == "FROZEN" {
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
	return true
}

// Remove deletes the group's directories; they must be empty of processes.
// A group whose last process has just exited can be busy for a moment, so
// EBUSY is retried for up to a second.
func (g *Group) Remove() error {
	var errs []error
	for _, d := range g.dirs {
		var err error
		for i := 0; i < 50; i++ {
			if err = os.Remove(d); !errors.Is(err, syscall.EBUSY) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("cgroup: remove %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}
