package supervisor

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/module"
	"github.com/outpost-edge/outpost/internal/supervisor/cgroup"
	"github.com/outpost-edge/outpost/internal/supervisor/recipe"
)

func pids(e *testEnv, names ...string) map[string]int {
	out := map[string]int{}
	for _, n := range names {
		out[n] = e.status(n).PID
	}
	return out
}

// Changing a recipe restarts only that component and its hard dependents;
// removing one stops it; an invalid change is rejected and the running
// version stays; unchanged components keep running.
func TestReloadRestartsOnlyAffected(t *testing.T) {
	e := newEnv(t)
	e.write("base", helperRecipe("base", "sleep", ""))
	e.write("dep", helperRecipe("dep", "sleep", "depends_on: [base]\n"))
	e.write("other", helperRecipe("other", "sleep", ""))
	e.write("gone", helperRecipe("gone", "sleep", ""))
	e.start()
	all := []string{"base", "dep", "other", "gone"}
	for _, n := range all {
		e.waitState(n, 10*time.Second, StateRunning)
	}
	before := pids(e, all...)

	// Change dep only: dep restarts, the rest keep their processes.
	e.write("dep", helperRecipe("dep", "sleep", "depends_on: [base]\n", "CHANGED=1"))
	waitFor(t, 10*time.Second, "dep restarted", func() bool {
		st := e.status("dep")
		return st.State == StateRunning && st.PID != before["dep"]
	})
	now := pids(e, "base", "other", "gone")
	for _, n := range []string{"base", "other", "gone"} {
		if now[n] != before[n] {
			t.Errorf("%s restarted though unchanged", n)
		}
	}

	// Change base: base and its hard dependent restart; other does not.
	before = pids(e, all...)
	e.write("base", helperRecipe("base", "sleep", "", "CHANGED=1"))
	waitFor(t, 10*time.Second, "base and dep restarted", func() bool {
		b, d := e.status("base"), e.status("dep")
		return b.State == StateRunning && b.PID != before["base"] && d.State == StateRunning && d.PID != before["dep"]
	})
	if e.status("other").PID != before["other"] {
		t.Error("other restarted")
	}

	// Remove a recipe: its component stops and disappears.
	if err := os.Remove(filepath.Join(e.recipes, "gone.yaml")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "gone removed", func() bool {
		_, err := e.s.Component("gone")
		return errors.Is(err, ErrNotFound)
	})
	if alive(before["gone"]) {
		t.Error("removed component's process still alive")
	}

	// An invalid change: rejected with file:line, the old version keeps running.
	before = pids(e, "base", "dep", "other")
	e.write("other", "name: other\nversion: 1.0\nlifecycle:\n  run: x\n")
	waitFor(t, 10*time.Second, "error reported", func() bool { return e.status("other").Error != "" })
	st := e.status("other")
	if !strings.Contains(st.Error, "other.yaml:2:10: version") || st.PID != before["other"] || st.State != StateRunning {
		t.Fatalf("invalid change: %+v", st)
	}
	if h := e.s.Health(); h.State != module.StateDegraded || !strings.Contains(h.Detail, "other.yaml") {
		t.Fatalf("health %+v", h)
	}
	// A cycle introduced by a change is rejected, naming the cycle.
	e.write("base", helperRecipe("base", "sleep", "depends_on: [dep]\n", "CHANGED=1"))
	waitFor(t, 10*time.Second, "cycle reported", func() bool {
		return strings.Contains(e.status("base").Error, "base -> dep -> base")
	})
	if p := pids(e, "base", "dep"); p["base"] != before["base"] || p["dep"] != before["dep"] {
		t.Fatalf("cycle change restarted components: %v vs %v", p, before)
	}
	// A new recipe with an unknown dependency is invalid; others unaffected.
	e.write("lonely", helperRecipe("lonely", "sleep", "depends_on: [ghost]\n"))
	waitFor(t, 10*time.Second, "lonely invalid", func() bool {
		st, err := e.s.Component("lonely")
		return err == nil && st.State == StateInvalid && strings.Contains(st.Error, "unknown dependency")
	})
}

// Install runs once per version; a failing install is install_failed with
// its output kept; artifacts are copied, unpacked, downloaded and verified.
func TestInstallAndArtifacts(t *testing.T) {
	e := newEnv(t)
	// Artifacts: a plain file, a zip, a tar.gz and a download.
	art := filepath.Join(e.recipes, "files")
	_ = os.MkdirAll(art, 0o755)
	if err := os.WriteFile(filepath.Join(art, "tool.sh"), []byte("#!/bin/sh\necho tool-ran\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var zb bytes.Buffer
	zw := zip.NewWriter(&zb)
	w, _ := zw.Create("conf/app.conf")
	w.Write([]byte("zip-content"))
	zw.Close()
	os.WriteFile(filepath.Join(art, "bundle.zip"), zb.Bytes(), 0o644)
	var tb bytes.Buffer
	gz := gzip.NewWriter(&tb)
	tw := tar.NewWriter(gz)
	tw.WriteHeader(&tar.Header{Name: "lib/data.txt", Mode: 0o644, Size: 3, Typeflag: tar.TypeReg})
	tw.Write([]byte("tar"))
	tw.Close()
	gz.Close()
	remote := []byte("downloaded")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/data.tar.gz" {
			w.Write(tb.Bytes())
			return
		}
		w.Write(remote)
	}))
	defer srv.Close()
	sum := func(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }
	counter := filepath.Join(e.dir, "installs")
	e.write("app", helperRecipe("app", "sleep",
		"artifacts:\n  - {path: files/tool.sh, executable: true}\n  - {path: files/bundle.zip, unpack: true}\n"+
			"  - {url: "+srv.URL+"/data.tar.gz, sha256: "+sum(tb.Bytes())+", unpack: true}\n"+
			"  - {url: "+srv.URL+"/blob.bin, sha256: "+sum(remote)+"}\n"+
			"lifecycle:\n  install: {script: 'echo installing; ./tool.sh; echo x >> "+counter+"', timeout: 10s}\n  run: {exec: [\""+selfExe()+"\"]}\n",
	))
	e.write("bad", helperRecipe("bad", "sleep", "lifecycle:\n  install: 'echo preparing; echo disk full >&2; exit 4'\n  run: {exec: [\""+selfExe()+"\"]}\n"))
	e.write("tampered", helperRecipe("tampered", "sleep", "artifacts:\n  - {url: "+srv.URL+"/blob.bin, sha256: "+strings.Repeat("ab", 32)+"}\n"))
	// helperRecipe already has a lifecycle; the second lifecycle key is a
	// duplicate, so build these recipes without it.
	e.write("app", strings.Replace(readRecipe(t, e, "app"), "lifecycle:\n  run:\n    exec: [\""+selfExe()+"\"]\n", "", 1))
	e.write("bad", strings.Replace(readRecipe(t, e, "bad"), "lifecycle:\n  run:\n    exec: [\""+selfExe()+"\"]\n", "", 1))
	e.start()

	st := e.waitState("app", 20*time.Second, StateRunning)
	_, artDir, _ := e.s.comps["app"].dirs(e.s.comps["app"].recipe)
	for f, want := range map[string]string{"conf/app.conf": "zip-content", "lib/data.txt": "tar", "blob.bin": "downloaded"} {
		b, err := os.ReadFile(filepath.Join(artDir, f))
		if err != nil || string(b) != want {
			t.Errorf("artifact %s: %q, %v", f, b, err)
		}
	}
	if fi, err := os.Stat(filepath.Join(artDir, "tool.sh")); err != nil || fi.Mode()&0o100 == 0 {
		t.Errorf("tool.sh not executable: %v", err)
	}
	logs, _ := e.s.Logs("app", 50)
	if !strings.Contains(strings.Join(logs, "\n"), "install tool-ran") {
		t.Errorf("install output not in log: %q", logs)
	}

	bad := e.waitState("bad", 20*time.Second, StateInstallFailed)
	if !strings.Contains(bad.Reason, "exited with code 4") || !strings.Contains(bad.Output, "disk full") || !strings.Contains(bad.Output, "preparing") {
		t.Fatalf("install_failed status %+v", bad)
	}
	tam := e.waitState("tampered", 20*time.Second, StateInstallFailed)
	if !strings.Contains(tam.Reason, "hash mismatch") || !strings.Contains(tam.Reason, "tampered.yaml:") {
		t.Fatalf("tampered: %+v", tam)
	}

	// Install runs once per version: a restart does not run it again...
	if err := e.s.Restart("app"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "app restarted", func() bool { s := e.status("app"); return s.State == StateRunning && s.PID != st.PID })
	if b, _ := os.ReadFile(counter); strings.Count(string(b), "x") != 1 {
		t.Fatalf("install ran %d times for one version", strings.Count(string(b), "x"))
	}
	// ...a new version does.
	e.write("app", strings.Replace(readRecipe(t, e, "app"), "version: 1.0.0", "version: 1.1.0", 1))
	waitFor(t, 20*time.Second, "second install", func() bool {
		b, _ := os.ReadFile(counter)
		return strings.Count(string(b), "x") == 2 && e.status("app").State == StateRunning
	})
	if _, err := os.Stat(artDir); !os.IsNotExist(err) {
		t.Errorf("old version's artifacts kept: %v", err)
	}
}

func selfExe() string { p, _ := os.Executable(); return p }

func readRecipe(t *testing.T, e *testEnv, name string) string {
	b, err := os.ReadFile(filepath.Join(e.recipes, name+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Components run as the recipe's user and group, receive their
// configuration (recipe default merged with the agent override) as a file
// and in the environment.
func TestUserConfigEnv(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("running as another user needs root")
	}
	e := newEnv(t)
	out := filepath.Join(e.dir, "out")
	os.MkdirAll(out, 0o777)
	for _, d := range []string{filepath.Dir(e.dir), e.dir, out} {
		os.Chmod(d, 0o755)
	}
	os.Chmod(out, 0o777)
	e.write("who", "name: who\nversion: 2.0.0\nuser: nobody\ngroup: nogroup\n"+
		"lifecycle:\n  startup: 'echo \"$(id -u) $(id -g) $OUTPOST_CONFIG\" > "+out+"/who; cat \"$OUTPOST_CONFIG_FILE\" > "+out+"/cfg'\n"+
		"configuration:\n  interval: 5\n  keep: true\n  nested: {a: 1, b: 2}\n")
	e.cfg.Overrides = map[string]Override{"who": {Configuration: map[string]any{"interval": 10, "keep": nil, "nested": map[string]any{"b": 3}}}}
	e.start()
	e.waitState("who", 10*time.Second, StateRunning)
	b, err := os.ReadFile(filepath.Join(out, "who"))
	if err != nil {
		t.Fatal(err)
	}
	want := `65534 65534 {"interval":10,"nested":{"a":1,"b":3}}`
	if strings.TrimSpace(string(b)) != want {
		t.Fatalf("got %q, want %q", b, want)
	}
}

// Where no cgroup hierarchy is usable, components run without limits and
// the supervisor says so once, in the log and in its health.
func TestNoCgroups(t *testing.T) {
	e := newEnv(t)
	e.cfg.Cgroup.Mode = "none"
	e.write("a", helperRecipe("a", "sleep", "resources: {memory: 64MiB}\n"))
	e.start()
	st := e.waitState("a", 10*time.Second, StateRunning)
	if st.Limits == nil || st.Limits.Enforced || !strings.Contains(st.Limits.Note, "cgroups unavailable") {
		t.Fatalf("limits %+v", st.Limits)
	}
	h := e.s.Health()
	if h.State != module.StateDegraded || !strings.Contains(h.Detail, "without resource limits") {
		t.Fatalf("health %+v", h)
	}
	if m, _ := e.s.CgroupMode(); m != cgroup.None {
		t.Fatal(m)
	}
}

func TestMergePatch(t *testing.T) {
	r := &recipe.Recipe{Configuration: map[string]any{"a": 1, "b": map[string]any{"c": 1, "d": 2}}}
	got := effectiveConfig(r, Override{Configuration: map[string]any{"a": nil, "b": map[string]any{"c": 5}, "e": "x"}})
	if len(got) != 2 || got["e"] != "x" || got["b"].(map[string]any)["c"] != 5 || got["b"].(map[string]any)["d"] != 2 {
		t.Fatalf("%v", got)
	}
}
