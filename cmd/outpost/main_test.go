package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// binary is the outpost binary built once for the process-level tests.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "outpost-bin")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "outpost")
	build := exec.Command("go", "build", "-o", binary, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building outpost:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func outpost(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(binary, args...)
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

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestEveryCommandHasHelpWithExamples(t *testing.T) {
	for name := range commands {
		t.Run(name, func(t *testing.T) {
			out, errOut, code := outpost(t, name, "--help")
			text := out + errOut
			if code != 0 {
				t.Fatalf("%s --help: exit %d\n%s", name, code, text)
			}
			if !strings.Contains(text, "Usage:") || !strings.Contains(text, "Examples:") {
				t.Fatalf("%s --help lacks usage or examples:\n%s", name, text)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	out, _, code := outpost(t, "version", "--verbose")
	if code != 0 || !strings.Contains(out, "go:") || !strings.Contains(out, "platform:") || !strings.Contains(out, "github.com/mochi-mqtt/server/v2") {
		t.Fatalf("version --verbose (exit %d):\n%s", code, out)
	}
}

func TestConfigCheckExitCodes(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("broker:\n  limits:\n    max_conections: 5\n"), 0o600)
	_, errOut, code := outpost(t, "config", "check", bad)
	if code != 2 || !strings.Contains(errOut, bad+":3:5: broker.limits: unknown key \"max_conections\"") {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
	// `run` refuses the same file with exit 2 before starting anything.
	_, errOut, code = outpost(t, "run", "--config", bad)
	if code != 2 || !strings.Contains(errOut, ":3:5:") {
		t.Fatalf("run with bad config: exit %d\n%s", code, errOut)
	}
	// init output is a valid config.
	good := filepath.Join(dir, "good.yaml")
	if _, errOut, code := outpost(t, "init", "-o", good); code != 0 || !strings.Contains(errOut, "password:") {
		t.Fatalf("init: exit %d %s", code, errOut)
	}
	if out, errOut, code := outpost(t, "config", "check", good); code != 0 {
		t.Fatalf("config check of init output: exit %d %s %s", code, out, errOut)
	}
}

func TestPasswdHashes(t *testing.T) {
	for _, format := range []string{"bcrypt", "argon2id"} {
		cmd := exec.Command(binary, "passwd", "--format", format)
		cmd.Stdin = strings.NewReader("hunter2\n")
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		h := strings.TrimSpace(string(out))
		if strings.Contains(h, "hunter2") || !strings.HasPrefix(h, map[string]string{"bcrypt": "$2a$", "argon2id": "$argon2id$"}[format]) {
			t.Fatalf("%s hash %q", format, h)
		}
	}
}

// TestRunSIGTERMExitsZero: the agent starts, serves /readyz, and on SIGTERM
// drains and exits 0 (the contract systemd and the OTA health gate rely on).
func TestRunSIGTERMExitsZero(t *testing.T) {
	dir := t.TempDir()
	httpAddr := freePort(t)
	cfg := fmt.Sprintf(`node_id: t
data_dir: %s/data
telemetry: {address: "%s"}
broker:
  listeners: [{type: tcp, address: "%s"}]
`, dir, httpAddr, freePort(t))
	path := filepath.Join(dir, "outpost.yaml")
	os.WriteFile(path, []byte(cfg), 0o600)
	cmd := exec.Command(binary, "run", "--config", path)
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + httpAddr + "/readyz")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("never ready:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, logs.String())
	}
	if !strings.Contains(logs.String(), "outpost stopped") {
		t.Fatalf("no clean stop logged:\n%s", logs.String())
	}
}

func TestRunPortInUseExitsOneNamingListener(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	dir := t.TempDir()
	path := filepath.Join(dir, "outpost.yaml")
	os.WriteFile(path, []byte(fmt.Sprintf("data_dir: %s\ntelemetry: {address: off}\nbroker:\n  listeners: [{name: plant, type: tcp, address: %q}]\n", dir, l.Addr().String())), 0o600)
	_, errOut, code := outpost(t, "run", "--config", path)
	if code != 1 || !strings.Contains(errOut, "module broker") || !strings.Contains(errOut, "plant") || !strings.Contains(errOut, "address already in use") {
		t.Fatalf("exit %d:\n%s", code, errOut)
	}
}

func TestDemoShowsMessagesFlowing(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(binary, "demo", "--duration", "7s", "--port", "0", "--http-port", "0", "--rate", "20", "--data", filepath.Join(dir, "demo"))
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	s := string(out)
	if !strings.Contains(s, "mosquitto_sub") || !strings.Contains(s, "demo stopped:") {
		t.Fatalf("demo output:\n%s", s)
	}
	var published, processed int
	for _, line := range strings.Split(s, "\n") {
		if strings.HasPrefix(line, "demo stopped:") {
			fmt.Sscanf(line, "demo stopped: %d published, %d processed", &published, &processed)
		}
	}
	if published < 100 || processed < published*9/10 {
		t.Fatalf("published %d processed %d:\n%s", published, processed, s)
	}
	if st, err := os.Stat(filepath.Join(dir, "demo", "telemetry.jsonl")); err != nil || st.Size() == 0 {
		t.Fatalf("archive file: %v", err)
	}
}
