package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// serverBin and agentBin are built once for the process-level tests.
var serverBin, agentBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "outpost-server-bin")
	if err != nil {
		panic(err)
	}
	serverBin, agentBin = filepath.Join(dir, "outpost-server"), filepath.Join(dir, "outpost")
	for bin, pkg := range map[string]string{serverBin: ".", agentBin: "../outpost"} {
		build := exec.Command("go", "build", "-o", bin, pkg)
		build.Stderr = os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building", pkg, err)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func run(t *testing.T, env []string, bin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return o.String(), e.String(), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), 0
}

func TestEveryCommandHasHelpWithExamples(t *testing.T) {
	for name := range program.Commands {
		t.Run(name, func(t *testing.T) {
			out, errOut, code := run(t, nil, serverBin, name, "--help")
			text := out + errOut
			if code != 0 || !strings.Contains(text, "Usage:") || !strings.Contains(text, "Examples:") {
				t.Fatalf("%s --help: exit %d\n%s", name, code, text)
			}
		})
	}
	if _, _, code := run(t, nil, serverBin, "nope"); code != exitUsage {
		t.Fatalf("unknown command exit %d", code)
	}
}
