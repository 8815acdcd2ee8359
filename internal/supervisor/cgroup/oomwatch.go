package cgroup

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// OOMWatch counts OOM kills in another program's memory cgroup: a
// container's, created and removed by its runtime.
//
// Some runtimes do not report OOM kills (podman 4.3 with cgroupfs on a
// v1 or hybrid host says OOMKilled false), and the container's group, with
// its counter, is removed as soon as the container exits. On cgroup v1 the
// watch registers an eventfd on the group's memory.oom_control
// (cgroup.event_control): the kernel signals it when the group goes out of
// memory, while the group still exists. Its removal signals it too; that
// is told apart by the group being gone.
type OOMWatch struct {
	n    atomic.Uint64
	efd  *os.File
	ctl  *os.File
	done chan struct{}
}

// WatchProcessOOM watches the v1 memory cgroup of a running process (the
// container's init). On a host without a v1 memory hierarchy it returns a
// watch that never counts and an error saying why.
func WatchProcessOOM(pid int) (*OOMWatch, error) {
	w := &OOMWatch{done: make(chan struct{})}
	dir, err := v1MemoryDir(pid)
	if err != nil {
		close(w.done)
		return w, err
	}
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		close(w.done)
		return w, fmt.Errorf("cgroup: eventfd: %w", err)
	}
	w.efd = os.NewFile(uintptr(fd), "oom-eventfd")
	w.ctl, err = os.Open(filepath.Join(dir, "memory.oom_control"))
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "cgroup.event_control"), fmt.Appendf(nil, "%d %d", fd, w.ctl.Fd()), 0)
	}
	if err != nil {
		w.efd.Close()
		if w.ctl != nil {
			w.ctl.Close()
		}
		w.efd, w.ctl = nil, nil
		close(w.done)
		return w, fmt.Errorf("cgroup: register OOM notification for %s: %w", dir, err)
	}
	go func() {
		defer close(w.done)
		var b [8]byte
		for {
			if _, err := w.efd.Read(b[:]); err != nil {
				return // closed
			}
			if _, err := os.Stat(dir); err == nil {
				w.n.Add(1)
			}
		}
	}()
	return w, nil
}

// v1MemoryDir returns the directory of a process's v1 memory cgroup.
func v1MemoryDir(pid int) (string, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", fmt.Errorf("cgroup: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	rel := ""
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) == 3 && hasWord(strings.ReplaceAll(parts[1], ",", " "), "memory") {
			rel = parts[2]
		}
	}
	if rel == "" {
		return "", fmt.Errorf("cgroup: process %d has no v1 memory cgroup", pid)
	}
	ms, err := mounts()
	if err != nil {
		return "", fmt.Errorf("cgroup: %w", err)
	}
	for _, m := range ms {
		if m.fs == "cgroup" && m.opts["memory"] {
			return filepath.Join(m.dir, rel), nil
		}
	}
	return "", fmt.Errorf("cgroup: no v1 memory hierarchy mounted")
}

// Count returns the OOM kills seen since the watch started.
func (w *OOMWatch) Count() uint64 { return w.n.Load() }

// Close stops the watch.
func (w *OOMWatch) Close() {
	if w.efd != nil {
		w.efd.Close()
		w.ctl.Close()
	}
	<-w.done
}
