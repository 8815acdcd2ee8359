package supervisor

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/supervisor/cgroup"
)

// buildTestAgent builds ./testagent (the supervisor alone, as a process).
func buildTestAgent(t testing.TB) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("the go tool is needed to build the test agent")
	}
	out := filepath.Join(t.TempDir(), "testagent")
	cmd := exec.Command(goBin, "build", "-tags", strings.Join(buildTags, ","), "-o", out, "./testagent")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build testagent: %v\n%s", err, b)
	}
	return out
}

type agentProc struct {
	cmd    *exec.Cmd
	client *http.Client
}

func startAgent(t testing.TB, bin, cfgPath, sock string) *agentProc {
	t.Helper()
	cmd := exec.Command(bin, "-config", cfgPath, "-listen", sock)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a := &agentProc{cmd: cmd, client: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}}
	return a
}

func (a *agentProc) list() ([]Status, error) {
	resp, err := a.client.Get("http://agent/api/v1/components")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out []Status
	err = json.NewDecoder(resp.Body).Decode(&out)
	return out, err
}

func (a *agentProc) waitAll(t testing.TB, n int, timeout time.Duration) []Status {
	t.Helper()
	var sts []Status
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		var err error
		sts, err = a.list()
		running := 0
		for _, st := range sts {
			if st.State == StateRunning && st.PID != 0 {
				running++
			}
		}
		if err == nil && running == n {
			return sts
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %d running components: %+v", n, sts)
	return nil
}

// Kill -9 the agent: the restarted agent stops the leftover processes
// (found by cgroup, or by pid file and start time without cgroups) and
// starts each component once; no duplicates remain.
func TestAgentKill9NoDuplicates(t *testing.T) {
	bin := buildTestAgent(t)
	for _, mode := range []string{"auto", "none"} {
		t.Run("cgroup="+mode, func(t *testing.T) {
			dir := t.TempDir()
			sockDir, _ := os.MkdirTemp("", "opagent")
			defer os.RemoveAll(sockDir)
			sock := filepath.Join(sockDir, "api.sock")
			recipes := filepath.Join(dir, "recipes")
			os.MkdirAll(recipes, 0o755)
			mark := fmt.Sprintf("SUPTEST_MARK=%d-%s", os.Getpid(), mode)
			names := []string{"c1", "c2", "c3"}
			t.Cleanup(func() { // whatever happens, leave no component behind
				for _, p := range descendantsWith(mark + "\x00") {
					_ = syscall.Kill(p, syscall.SIGKILL)
				}
			})
			for _, n := range names {
				os.WriteFile(filepath.Join(recipes, n+".yaml"), []byte(helperRecipe(n, "sleep", "", mark)), 0o644)
			}
			parent := fmt.Sprintf("outpost-k9-%d-%s", os.Getpid(), mode)
			cfg := fmt.Sprintf("recipes_dir: %s\nstate_dir: %s\nlog_dir: %s\ngrace_period: 2s\ncgroup: {mode: %s, parent: %s}\n",
				recipes, filepath.Join(dir, "state"), filepath.Join(dir, "logs"), mode, parent)
			cfgPath := filepath.Join(dir, "cfg.yaml")
			os.WriteFile(cfgPath, []byte(cfg), 0o644)
			defer func() {
				if m := cgroup.Detect(parent, mode); m.Mode() != cgroup.None {
					ns, _ := m.Names()
					for _, n := range ns {
						m.Group(n).Remove()
					}
					m.RemoveParent()
				}
			}()

			a1 := startAgent(t, bin, cfgPath, sock)
			first := a1.waitAll(t, 3, 30*time.Second)
			// Let each component finish starting (it logs a line): a
			// component writing to stdout after the agent died gets SIGPIPE.
			for _, n := range names {
				waitFor(t, 10*time.Second, n+" logged", func() bool {
					b, _ := os.ReadFile(filepath.Join(dir, "logs", n+".log"))
					return strings.Contains(string(b), "started "+n)
				})
			}
			oldPids := map[int]bool{}
			for _, st := range first {
				oldPids[st.PID] = true
			}
			if err := a1.cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			_ = a1.cmd.Wait()
			for p := range oldPids {
				if !alive(p) {
					t.Fatalf("component %d died with the agent; the scenario needs survivors", p)
				}
			}

			a2 := startAgent(t, bin, cfgPath, sock)
			defer func() {
				_ = a2.cmd.Process.Signal(syscall.SIGTERM)
				_ = a2.cmd.Wait()
				if left := descendantsWith(mark + "\x00"); len(left) > 0 {
					t.Errorf("processes left after agent stop: %v", left)
				}
			}()
			second := a2.waitAll(t, 3, 30*time.Second)
			for _, st := range second {
				if oldPids[st.PID] {
					t.Errorf("%s kept the old process %d (re-adopted without verification)", st.Name, st.PID)
				}
			}
			for p := range oldPids {
				waitFor(t, 10*time.Second, fmt.Sprintf("old process %d gone", p), func() bool {
					var ws syscall.WaitStatus
					syscall.Wait4(p, &ws, syscall.WNOHANG, nil) // it may have been re-parented to this test process
					return !alive(p)
				})
			}
			live := descendantsWith(mark + "\x00")
			sort.Ints(live)
			if len(live) != 3 {
				t.Fatalf("%d component processes alive, want 3 (one per component): %v", len(live), live)
			}
			t.Logf("old pids %v replaced by %v", keys(oldPids), live)
			if !strings.Contains(fmt.Sprint(second), "running") {
				t.Fatal(second)
			}
		})
	}
}

func keys(m map[int]bool) []int {
	var out []int
	for k := range m {
		out = append(out, k)
	}
	sort.Ints(out)
	return out
}

// buildTags are the build tags of this test binary, for the test agent
// (container_containerd_test.go adds containerd).
var buildTags []string
