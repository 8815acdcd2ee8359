package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A newcomer's first commands: init creates the config's directory, points
// data_dir where asked, refuses to overwrite with the command that gets
// around it, and run without a config says how to make one.
func TestInitAndRunFirstSteps(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "etc", "outpost", "outpost.yaml")
	data := filepath.Join(dir, "var", "lib", "outpost")

	_, stderr, code := outpost(t, "init", "-o", cfg, "--data-dir", data)
	if code != 0 {
		t.Fatalf("init: exit %d: %s", code, stderr)
	}
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	if !strings.Contains(text, "\ndata_dir: "+data+"\n") || !strings.Contains(text, "path: "+data+"/archive/") {
		t.Errorf("data_dir and the file sink are not under %s:\n%s", data, text)
	}
	if strings.Contains(text, "path: data/") {
		t.Errorf("a relative data/ path is left:\n%s", text)
	}
	if _, stderr, code := outpost(t, "config", "check", cfg); code != 0 {
		t.Fatalf("config check of the fresh file: exit %d: %s", code, stderr)
	}

	_, stderr, code = outpost(t, "init", "-o", cfg)
	if code == 0 || !strings.Contains(stderr, "already exists") || !strings.Contains(stderr, "mv "+cfg) {
		t.Errorf("second init: exit %d, want a refusal that says how to start over: %s", code, stderr)
	}

	missing := filepath.Join(dir, "none.yaml")
	_, stderr, code = outpost(t, "run", "--config", missing)
	if code != exitUsage || !strings.Contains(stderr, "outpost init -o "+missing) {
		t.Errorf("run without config: exit %d, want %d and the init command: %s", code, exitUsage, stderr)
	}
}
