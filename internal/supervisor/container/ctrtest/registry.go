package ctrtest

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// writeRegistriesConf reserves a loopback port for StartRegistry and
// writes the service's registries.conf: no unqualified search (a short
// name never reaches the network) and the test registry reachable over
// plain HTTP, as a registry on a private network would be configured.
func (s *Service) writeRegistriesConf() error {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	s.RegistryAddr = l.Addr().String()
	l.Close()
	conf := fmt.Sprintf("unqualified-search-registries = []\n\n[[registry]]\nlocation = %q\ninsecure = true\n", s.RegistryAddr)
	return os.WriteFile(filepath.Join(s.Dir, "registries.conf"), []byte(conf), 0o644)
}

// Registry is a private image registry: Debian's docker-registry (the
// CNCF distribution registry), with htpasswd authentication, started by a
// test on the package podman service's RegistryAddr.
type Registry struct {
	Addr, User, Password string
	svc                  *Service
}

// StartRegistry starts a registry for the test (stopped at its end). The
// test fails (it does not skip) when docker-registry is missing:
// scripts/deps.sh installs it.
func StartRegistry(tb testing.TB) *Registry {
	tb.Helper()
	Podman(tb)
	svc := Current()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		tb.Fatalf("docker-registry not installed (scripts/deps.sh): %v", err)
	}
	dir := tb.TempDir()
	r := &Registry{Addr: svc.RegistryAddr, User: "puller", Password: "pull-" + fmt.Sprint(time.Now().UnixNano()), svc: svc}
	hash, err := bcrypt.GenerateFromPassword([]byte(r.Password), bcrypt.MinCost)
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "htpasswd"), []byte(r.User+":"+string(hash)+"\n"), 0o600); err != nil {
		tb.Fatal(err)
	}
	conf := fmt.Sprintf(`version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
auth:
  htpasswd:
    realm: outpost-test
    path: %s
`, filepath.Join(dir, "data"), r.Addr, filepath.Join(dir, "htpasswd"))
	if err := os.WriteFile(filepath.Join(dir, "config.yml"), []byte(conf), 0o600); err != nil {
		tb.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", filepath.Join(dir, "config.yml"))
	cmd.Stdout, cmd.Stderr = logf, logf
	// No Pdeathsig: it fires when the forking thread ends, and the
	// supervisor under test ends threads (see Service.start).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	tb.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + r.Addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusUnauthorized {
				return r
			}
		}
		select {
		case <-done:
			b, _ := os.ReadFile(filepath.Join(dir, "registry.log"))
			tb.Fatalf("docker-registry exited: %s", strings.TrimSpace(string(b)))
		default:
		}
		if time.Now().After(deadline) {
			tb.Fatalf("docker-registry did not answer on %s: %v", r.Addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Push loads the archive into the podman service, pushes it to the
// registry as repo:tag (e.g. "outpost-test/app:1") and removes it from the
// service again, so that only a pull can bring it back. It returns the
// pushed image's reference without digest and its manifest digest.
func (r *Registry) Push(tb testing.TB, a Archive, repoTag string) (ref, digest string) {
	tb.Helper()
	dir := tb.TempDir()
	file := filepath.Join(dir, "image.tar")
	a.Write(tb, file)
	ref = r.Addr + "/" + repoTag
	dfile := filepath.Join(dir, "digest")
	for _, args := range [][]string{
		{"load", "-q", "-i", file},
		{"push", "-q", "--tls-verify=false", "--creds", r.User + ":" + r.Password, "--digestfile", dfile, a.Tag, "docker://" + ref},
		{"rmi", "-f", a.Tag},
	} {
		r.svc.podman(tb, args...)
	}
	b, err := os.ReadFile(dfile)
	if err != nil {
		tb.Fatal(err)
	}
	return ref, strings.TrimSpace(string(b))
}

// podman runs the podman CLI against the service's storage.
func (s *Service) podman(tb testing.TB, args ...string) {
	tb.Helper()
	cmd := exec.Command("podman", s.Args(args...)...)
	cmd.Env = s.Env()
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("podman %s: %v: %s", strings.Join(args, " "), err, out)
	}
}
