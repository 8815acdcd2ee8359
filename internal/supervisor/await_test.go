package supervisor

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// awaitExit must return once the child has exited, including when it exited
// before the poller was armed (a lost edge-triggered wake-up left about one
// in ten short-lived health-check processes unreaped), and must not return
// while the child runs.
func TestAwaitExit(t *testing.T) {
	for i := 0; i < 200; i++ {
		cmd := exec.Command("sh", "-c", "exit 3")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { awaitExit(cmd.Process.Pid); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("run %d: awaitExit did not return for an exited child %d", i, cmd.Process.Pid)
		}
		// It returned because the child exited: it is a zombie until Wait.
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", cmd.Process.Pid))
		if err != nil || !strings.Contains(string(st), ") Z ") {
			t.Fatalf("run %d: awaitExit returned but the child is not a zombie: %q %v", i, st, err)
		}
		if err := cmd.Wait(); err == nil || cmd.ProcessState.ExitCode() != 3 {
			t.Fatalf("run %d: wait: %v", i, err)
		}
	}

	cmd := exec.Command("sleep", "0.3")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	awaitExit(cmd.Process.Pid)
	if took := time.Since(start); took < 250*time.Millisecond {
		t.Errorf("awaitExit returned after %s while the child still ran", took)
	}
	_ = cmd.Wait()
}
