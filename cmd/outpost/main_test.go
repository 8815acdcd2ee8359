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

// testBuildTags are the build tags of this test binary that the outpost
// binary must be built with too (tagged test files add theirs in init).
var testBuildTags []string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "outpost-bin")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "outpost")
	build := exec.Command("go", "build", "-tags", strings.Join(testBuildTags, ","), "-o", binary, ".")
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
	for name := range program.Commands {
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

// TestDiagBundle: `outpost diag` collects every part from a running agent
// with progress lines, and the bundled config has its secrets redacted.
func TestDiagBundle(t *testing.T) {
	dir := t.TempDir()
	httpAddr := freePort(t)
	hash := "$2a$10$lUXQ5GfslcyKjacNYRFDtusm1fblTMSlJxHTKeCkJl9eEt.cdezra"
	cfg := fmt.Sprintf(`data_dir: %s/data
telemetry: {address: "%s", token: diag-token-123}
broker:
  listeners: [{type: tcp, address: "%s"}]
  users: [{username: u, password_hash: "%s", acl: [{topic: "#", access: all}]}]
`, dir, httpAddr, freePort(t), hash)
	path := filepath.Join(dir, "outpost.yaml")
	os.WriteFile(path, []byte(cfg), 0o600)
	cmd := exec.Command(binary, "run", "--config", path)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
	waitReady(t, httpAddr)

	bundle := filepath.Join(dir, "b.tar.gz")
	// Without the token /api and /debug refuse: every part fails, exit 1.
	if _, errOut, code := outpost(t, "diag", "-o", bundle, "--addr", httpAddr, "--token", "", "--cpu", "1s", "--trace", "1s"); code == 0 && !strings.Contains(errOut, "401") {
		t.Fatalf("diag without token: exit %d\n%s", code, errOut)
	}
	_, errOut, code := outpost(t, "diag", "-o", bundle, "--addr", httpAddr, "--token", "diag-token-123", "--cpu", "1s", "--trace", "1s")
	if code != 0 || !strings.Contains(errOut, "[1/8]") || !strings.Contains(errOut, "[8/8]") {
		t.Fatalf("diag: exit %d\n%s", code, errOut)
	}
	out, err := exec.Command("tar", "-xzvf", bundle, "-C", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("tar: %v %s", err, out)
	}
	for _, f := range []string{"version.json", "config.redacted.json", "readyz.json", "metrics.txt", "heap.pprof", "goroutines.txt", "cpu.pprof", "trace.out"} {
		st, err := os.Stat(filepath.Join(dir, "outpost-diag", f))
		if err != nil || st.Size() == 0 {
			t.Fatalf("bundle part %s: %v", f, err)
		}
	}
	conf, _ := os.ReadFile(filepath.Join(dir, "outpost-diag", "config.redacted.json"))
	if strings.Contains(string(conf), "$2a$") || strings.Contains(string(conf), "diag-token-123") || !strings.Contains(string(conf), "REDACTED") {
		t.Fatalf("secrets in the bundled config:\n%s", conf)
	}
}

func waitReady(t *testing.T, httpAddr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + httpAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("agent never ready")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
