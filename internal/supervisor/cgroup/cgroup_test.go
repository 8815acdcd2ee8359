package cgroup

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The v2 file formats, checked on a directory laid out like a v2 group
// (this machine has no v2 memory controller; the real hierarchy is
// exercised by the supervisor's tests on v1).
func TestV2Files(t *testing.T) {
	dir := t.TempDir()
	m := &Manager{mode: V2, v2: dir, self: os.Getpid()}
	g := m.Group("c")
	gd := filepath.Join(dir, "c")
	os.MkdirAll(gd, 0o755)
	for _, f := range []string{"memory.max", "memory.swap.max", "cpu.max", "pids.max", "cgroup.procs"} {
		os.WriteFile(filepath.Join(gd, f), nil, 0o644)
	}
	if err := g.Create(Limits{Memory: 64 << 20, CPU: 0.5, Pids: 32}); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"memory.max": "67108864", "memory.swap.max": "0", "cpu.max": "50000 100000", "pids.max": "32"}
	for f, w := range want {
		if b, _ := os.ReadFile(filepath.Join(gd, f)); string(b) != w {
			t.Errorf("%s = %q, want %q", f, b, w)
		}
	}
	if err := g.Create(Limits{}); err != nil {
		t.Fatal(err)
	}
	for f, w := range map[string]string{"memory.max": "max", "memory.swap.max": "max", "cpu.max": "max 100000", "pids.max": "max"} {
		if b, _ := os.ReadFile(filepath.Join(gd, f)); string(b) != w {
			t.Errorf("reset %s = %q, want %q", f, b, w)
		}
	}
	os.WriteFile(filepath.Join(gd, "memory.events"), []byte("low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n"), 0o644)
	if n := g.OOMKills(); n != 2 {
		t.Errorf("OOMKills = %d", n)
	}
	os.WriteFile(filepath.Join(gd, "cgroup.procs"), []byte("12\n13\n"+strconv.Itoa(os.Getpid())+"\n"), 0o644)
	if pids, _ := g.Pids(); len(pids) != 2 {
		t.Errorf("Pids = %v (the agent's own pid must be filtered)", pids)
	}
}

func TestV1OOMControl(t *testing.T) {
	dir := t.TempDir()
	m := &Manager{mode: V1, v1: map[string]string{"memory": dir}}
	g := m.Group("c")
	os.MkdirAll(filepath.Join(dir, "c"), 0o755)
	os.WriteFile(filepath.Join(dir, "c", "memory.oom_control"), []byte("oom_kill_disable 0\nunder_oom 0\noom_kill 4\n"), 0o644)
	if n := g.OOMKills(); n != 4 {
		t.Fatalf("OOMKills = %d", n)
	}
}

func TestDetectNone(t *testing.T) {
	if m := Detect("outpost-x", "none"); m.Mode() != None || !strings.Contains(m.Reason(), "disabled") {
		t.Fatalf("%v %q", m.Mode(), m.Reason())
	}
	if m := Detect("../escape", "auto"); m.Mode() != None {
		t.Fatal("accepted a parent with ..")
	}
}

func TestUnescape(t *testing.T) {
	if got := unescape(`/sys/fs/cgroup/a\040b`); got != "/sys/fs/cgroup/a b" {
		t.Fatal(got)
	}
}
