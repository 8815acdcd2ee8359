// Package ctrtest gives tests a real container runtime and images built on
// the spot: a private `podman system service` (Docker Engine API on a unix
// socket, its own root, runroot, tmpdir and containers.conf) shared by
// every test of a package, and image archives around the static test
// program ctrapp (see ctrapp/main.go), written by Go code (no registry).
//
// Use from TestMain:
//
//	func TestMain(m *testing.M) { code := m.Run(); ctrtest.Shutdown(); os.Exit(code) }
//
// and in a test: sock := ctrtest.Podman(t); arch := ctrtest.AppImage(t, "outpost-test/app:1").
package ctrtest

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// containersConf is the private podman config. Root here lacks
// CAP_SYS_RESOURCE: podman's default ulimits (raised to the hard maximum)
// fail, so they are set to what the host allows.
const containersConf = `[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
log_driver = "k8s-file"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
`

var (
	podmanOnce sync.Once
	podman     *Service
	podmanErr  error
)

// Service is a running podman API service.
type Service struct {
	Dir    string // its private directory
	Socket string
	// RegistryAddr is the loopback address reserved for StartRegistry;
	// the service's registries.conf lets it reach it over plain HTTP.
	RegistryAddr string
	cmd          *exec.Cmd
	done         chan struct{}
}

// Podman returns the socket of the package's podman service, starting it
// on first use. The test fails (it does not skip) when podman cannot run:
// scripts/deps.sh installs it.
func Podman(tb testing.TB) string {
	tb.Helper()
	podmanOnce.Do(func() { podman, podmanErr = StartPodman() })
	if podmanErr != nil {
		tb.Fatalf("podman service: %v", podmanErr)
	}
	return podman.Socket
}

// Shutdown stops the package's podman service and containerd (those
// started), removing their containers and storage.
func Shutdown() {
	if podman != nil {
		podman.Stop()
	}
	if ctrd != nil {
		ctrd.Stop()
	}
}

// StartPodman starts a private podman API service in a new temporary
// directory.
func StartPodman() (*Service, error) {
	if _, err := exec.LookPath("podman"); err != nil {
		return nil, fmt.Errorf("podman not installed (scripts/deps.sh): %w", err)
	}
	dir, err := os.MkdirTemp("", "outpost-podman-")
	if err != nil {
		return nil, err
	}
	s := &Service{Dir: dir, Socket: filepath.Join(dir, "podman.sock"), done: make(chan struct{})}
	conf := filepath.Join(dir, "containers.conf")
	storage := filepath.Join(dir, "storage.conf")
	if err := os.WriteFile(conf, []byte(containersConf), 0o644); err != nil {
		return nil, err
	}
	st := fmt.Sprintf("[storage]\ndriver = \"overlay\"\nrunroot = %q\ngraphroot = %q\n", filepath.Join(dir, "runroot"), filepath.Join(dir, "root"))
	if err := os.WriteFile(storage, []byte(st), 0o644); err != nil {
		return nil, err
	}
	if err := s.writeRegistriesConf(); err != nil {
		return nil, err
	}
	if err := s.start(); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// start starts the service process (again) and waits for its socket.
func (s *Service) start() error {
	bin, err := exec.LookPath("podman")
	if err != nil {
		return err
	}
	dir := s.Dir
	logf, err := os.OpenFile(filepath.Join(dir, "service.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	// The service runs below a subreaper of its own: its conmon processes
	// double-fork, and a test process that is itself a subreaper (as the
	// supervisor is) would otherwise inherit them as zombies.
	app, err := buildApp()
	if err != nil {
		logf.Close()
		return err
	}
	reaper := filepath.Join(dir, "reaper")
	if _, err := os.Stat(reaper); err != nil { // a previous reaper may still run it
		if err := os.WriteFile(reaper, app, 0o755); err != nil {
			logf.Close()
			return err
		}
	}
	_ = os.Remove(s.Socket)
	s.cmd = exec.Command(reaper, append([]string{"reaper", bin}, s.Args("system", "service", "--time=0", "unix://"+s.Socket)...)...)
	s.cmd.Env = s.Env()
	// conmon writes files (an "oom" marker) to its working directory.
	s.cmd.Dir = dir
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	// No Pdeathsig: it fires when the forking *thread* exits, and the
	// supervisor under test ends threads (those it moved into a v1 cgroup
	// to start a component), which stopped the service mid-test. The
	// reaper stops the service when the test process goes instead.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	s.done = make(chan struct{})
	cmd, done := s.cmd, s.done
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if c, err := net.Dial("unix", s.Socket); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-done:
			b, _ := os.ReadFile(filepath.Join(dir, "service.log"))
			return fmt.Errorf("podman service exited: %s", strings.TrimSpace(string(b)))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("podman service socket %s did not appear", s.Socket)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Restart starts the service again after Kill (same storage and socket).
func (s *Service) Restart() error { return s.start() }

// Args returns podman's global flags for this service's storage followed
// by args (for running the podman CLI against it).
func (s *Service) Args(args ...string) []string {
	return append([]string{"--root", filepath.Join(s.Dir, "root"), "--runroot", filepath.Join(s.Dir, "runroot"),
		"--tmpdir", filepath.Join(s.Dir, "tmp"), "--cgroup-manager", "cgroupfs"}, args...)
}

// Env returns the environment selecting the private configs.
func (s *Service) Env() []string {
	return append(os.Environ(), "CONTAINERS_CONF="+filepath.Join(s.Dir, "containers.conf"),
		"CONTAINERS_STORAGE_CONF="+filepath.Join(s.Dir, "storage.conf"),
		"CONTAINERS_REGISTRIES_CONF="+filepath.Join(s.Dir, "registries.conf"))
}

// Stop stops the service and its containers and removes its directory.
func (s *Service) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		_ = os.RemoveAll(s.Dir)
		return
	}
	if bin, err := exec.LookPath("podman"); err == nil {
		cmd := exec.Command(bin, s.Args("rm", "--all", "--force", "--time", "0")...)
		cmd.Env = s.Env()
		_ = cmd.Run()
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.done
	}
	// Every exec made through the API keeps its conmon for 5 minutes after
	// the command ends (podman passes conmon --exit-delay 300 so that the
	// session can still be inspected, as Docker allows; see
	// docs/components.md). A test ends well before that: kill every process
	// of this service's storage.
	s.killStrays()
	if bin, err := exec.LookPath("podman"); err == nil {
		// Unmount what overlay left mounted before removing the storage.
		cmd := exec.Command(bin, s.Args("system", "reset", "--force")...)
		cmd.Env = s.Env()
		_ = cmd.Run()
	}
	_ = os.RemoveAll(s.Dir)
}

// PID returns the podman service's process ID, 0 if it is not found.
func (s *Service) PID() int {
	if p := s.Children("podman"); len(p) > 0 {
		return p[0]
	}
	return 0
}

// Children returns the pids of the service reaper's children named comm:
// "podman" (the service) or "conmon" (one per container, re-parented).
func (s *Service) Children(comm string) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		open, close := strings.IndexByte(string(b), '('), strings.LastIndexByte(string(b), ')')
		if open < 0 || close < open {
			continue
		}
		f := strings.Fields(string(b[close+1:]))
		if len(f) > 1 && f[1] == fmt.Sprint(s.cmd.Process.Pid) && string(b[open+1:close]) == comm {
			pid := 0
			fmt.Sscan(e.Name(), &pid)
			out = append(out, pid)
		}
	}
	return out
}

// Kill stops the service process only (the daemon is down; containers
// keep running under conmon). Used for fault tests; Restart brings it back.
//
// Only the podman process is killed: its reaper stays to reap the conmon
// processes (and exits once they are gone), so nothing is re-parented to
// the test process.
func (s *Service) Kill() {
	pid := s.PID()
	if pid == 0 {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for i := 0; i < 500; i++ {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var (
	appOnce sync.Once
	appBin  []byte
	appErr  error
)

// App returns the static ctrapp binary, built once per test process.
func App(tb testing.TB) []byte {
	tb.Helper()
	b, err := buildApp()
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func buildApp() ([]byte, error) {
	appOnce.Do(func() {
		_, self, _, _ := runtime.Caller(0)
		dir, err := os.MkdirTemp("", "ctrapp-")
		if err != nil {
			appErr = err
			return
		}
		defer os.RemoveAll(dir)
		out := filepath.Join(dir, "ctrapp")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, ".")
		cmd.Dir = filepath.Join(filepath.Dir(self), "ctrapp")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			appErr = fmt.Errorf("build ctrapp: %v: %s", err, b)
			return
		}
		appBin, appErr = os.ReadFile(out)
	})
	return appBin, appErr
}

// Archive is a docker-archive image tarball.
type Archive struct {
	Data []byte
	ID   string // sha256:<hex> of the image config: the image ID
	Tag  string // the reference it is tagged with
}

// SHA256 returns the hex sha256 of the archive file.
func (a Archive) SHA256() string {
	s := sha256.Sum256(a.Data)
	return hex.EncodeToString(s[:])
}

// Write writes the archive to path.
func (a Archive) Write(tb testing.TB, path string) {
	tb.Helper()
	if err := os.WriteFile(path, a.Data, 0o644); err != nil {
		tb.Fatal(err)
	}
}

// AppImage builds a docker-archive with one layer holding ctrapp at /app
// (the entrypoint), tagged tag. salt changes the image ID (distinct
// images from the same program).
func AppImage(tb testing.TB, tag, salt string) Archive {
	tb.Helper()
	a, err := BuildImage(map[string][]byte{"app": App(tb)}, []string{"/app"}, tag, salt)
	if err != nil {
		tb.Fatal(err)
	}
	return a
}

// BuildImage writes a docker-archive (the format of `docker save`) with
// one layer holding files (mode 0755) under /, plus /tmp and /data.
func BuildImage(files map[string][]byte, entrypoint []string, tag, salt string) (Archive, error) {
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	mt := time.Unix(0, 0)
	for _, d := range []string{"tmp/", "data/", "run/"} {
		if err := tw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o1777, ModTime: mt}); err != nil {
			return Archive{}, err
		}
	}
	for name, b := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(b)), ModTime: mt}); err != nil {
			return Archive{}, err
		}
		if _, err := tw.Write(b); err != nil {
			return Archive{}, err
		}
	}
	if err := tw.Close(); err != nil {
		return Archive{}, err
	}
	ls := sha256.Sum256(layer.Bytes())
	layerHex := hex.EncodeToString(ls[:])
	cfg := map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"created":      "1970-01-01T00:00:00Z",
		"config": map[string]any{
			"Entrypoint": entrypoint,
			"Env":        []string{"PATH=/"},
			"Labels":     map[string]string{"salt": salt},
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + layerHex}},
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return Archive{}, err
	}
	cs := sha256.Sum256(cfgJSON)
	cfgHex := hex.EncodeToString(cs[:])
	manifest, _ := json.Marshal([]map[string]any{{
		"Config":   cfgHex + ".json",
		"RepoTags": []string{tag},
		"Layers":   []string{layerHex + "/layer.tar"},
	}})
	var out bytes.Buffer
	ow := tar.NewWriter(&out)
	add := func(name string, b []byte) error {
		if err := ow.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(b)), ModTime: mt}); err != nil {
			return err
		}
		_, err := ow.Write(b)
		return err
	}
	if err := ow.WriteHeader(&tar.Header{Name: layerHex + "/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mt}); err != nil {
		return Archive{}, err
	}
	for _, f := range []struct {
		name string
		b    []byte
	}{{layerHex + "/layer.tar", layer.Bytes()}, {cfgHex + ".json", cfgJSON}, {"manifest.json", manifest}} {
		if err := add(f.name, f.b); err != nil {
			return Archive{}, err
		}
	}
	if err := ow.Close(); err != nil {
		return Archive{}, err
	}
	return Archive{Data: out.Bytes(), ID: "sha256:" + cfgHex, Tag: tag}, nil
}

// Current returns the package's podman service (nil before Podman).
func Current() *Service { return podman }

// killStrays SIGKILLs processes whose command line names the service's
// directory (conmon processes outliving their containers).
func (s *Service) killStrays() {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid := 0
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && strings.Contains(string(b), s.Dir+"/") {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
