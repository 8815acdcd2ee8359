package ctrtest

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ContainerdNamespace is the namespace tests use in the private containerd.
const ContainerdNamespace = "outpost-test"

var (
	ctrdOnce sync.Once
	ctrd     *ContainerdService
	ctrdErr  error
)

// ContainerdService is a private containerd: its own config, root, state
// and socket in a temporary directory, the CRI plugin off.
type ContainerdService struct {
	Dir    string
	Socket string
	cmd    *exec.Cmd
	done   chan struct{}
}

// Containerd returns the socket of the package's containerd, starting it
// on first use. The test fails (it does not skip) when containerd cannot
// run: scripts/deps.sh installs it (and runc).
func Containerd(tb testing.TB) string {
	tb.Helper()
	ctrdOnce.Do(func() { ctrd, ctrdErr = StartContainerd() })
	if ctrdErr != nil {
		tb.Fatalf("containerd: %v", ctrdErr)
	}
	return ctrd.Socket
}

// CurrentContainerd returns the package's containerd (nil before
// Containerd).
func CurrentContainerd() *ContainerdService { return ctrd }

// StartContainerd starts a private containerd in a new temporary
// directory.
func StartContainerd() (*ContainerdService, error) {
	bin, err := exec.LookPath("containerd")
	if err != nil {
		return nil, fmt.Errorf("containerd not installed (scripts/deps.sh): %w", err)
	}
	if _, err := exec.LookPath("runc"); err != nil {
		return nil, fmt.Errorf("runc not installed (scripts/deps.sh): %w", err)
	}
	dir, err := os.MkdirTemp("", "outpost-containerd-")
	if err != nil {
		return nil, err
	}
	s := &ContainerdService{Dir: dir, Socket: filepath.Join(dir, "containerd.sock"), done: make(chan struct{})}
	conf := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[debug]
  address = ""
[metrics]
  address = ""
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), s.Socket, s.Socket+".ttrpc")
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	// Below a reaper of its own, as podman: the shims daemonize, and a test
	// process that is a subreaper would inherit them as zombies.
	app, err := buildApp()
	if err != nil {
		return nil, err
	}
	reaper := filepath.Join(dir, "reaper")
	if err := os.WriteFile(reaper, app, 0o755); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(filepath.Join(dir, "containerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	s.cmd = exec.Command(reaper, "reaper", bin, "--config", cfg)
	s.cmd.Dir = dir
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	cmd, done := s.cmd, s.done
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("unix", s.Socket); err == nil {
			c.Close()
			return s, nil
		}
		select {
		case <-done:
			b, _ := os.ReadFile(filepath.Join(dir, "containerd.log"))
			s.Stop()
			return nil, fmt.Errorf("containerd exited: %s", lastLines(string(b), 10))
		default:
		}
		if time.Now().After(deadline) {
			s.Stop()
			return nil, fmt.Errorf("containerd socket %s did not appear", s.Socket)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// Stop stops containerd, every shim and container process it started,
// unmounts what it left mounted and removes its directory.
func (s *ContainerdService) Stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
			<-s.done
		}
	}
	// Shims name the socket (in this directory) on their command line;
	// killing a shim kills its container (its own pid namespace).
	for i := 0; i < 2; i++ {
		(&Service{Dir: s.Dir}).killStrays()
		time.Sleep(100 * time.Millisecond)
	}
	unmountBelow(s.Dir)
	_ = os.RemoveAll(s.Dir)
}

// unmountBelow detaches every mount below dir, deepest first.
func unmountBelow(dir string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var mps []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) > 4 && strings.HasPrefix(fs[4], dir+"/") {
			mps = append(mps, fs[4])
		}
	}
	f.Close()
	for i := len(mps) - 1; i >= 0; i-- {
		_ = syscall.Unmount(mps[i], syscall.MNT_DETACH)
	}
}
