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

// A bad rollout file is refused before any request, naming file:line:col
// or the field; exit 2.
func TestRolloutsCreateBadFile(t *testing.T) {
	dir := t.TempDir()
	tests := []struct{ name, body, want string }{
		{"syntax", "{\"name\": \"r\",\n \"waves\": [}\n", "bad.json:2:13: invalid character '}'"},
		{"type", "{\"name\": \"r\",\n \"soak\": 5}\n", "bad.json:2:11: field soak: number is not allowed here (want string)"},
		{"unknown field", "{\"name\": \"r\", \"wavez\": []}", `unknown field "wavez"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := filepath.Join(dir, "bad.json")
			os.WriteFile(f, []byte(tt.body), 0o600)
			_, errOut, code := run(t, []string{"OUTPOST_SERVER_TOKEN=x"}, serverBin, "rollouts", "create", "-f", f)
			if code != exitUsage || !strings.Contains(errOut, tt.want) {
				t.Fatalf("exit %d: %s, want %q", code, errOut, tt.want)
			}
		})
	}
	if _, errOut, code := run(t, nil, serverBin, "rollouts", "create"); code != exitUsage || !strings.Contains(errOut, "-f FILE is required") {
		t.Fatalf("no file: exit %d %s", code, errOut)
	}
}
