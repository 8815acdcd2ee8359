//go:build containerd

package container_test

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/supervisor/container"
	"github.com/outpost-edge/outpost/internal/supervisor/container/ctrtest"
)

func init() {
	runtimeBackends = append(runtimeBackends, runtimeBackend{"containerd", func(t *testing.T) container.Runtime {
		return container.NewContainerd(ctrtest.Containerd(t), ctrtest.ContainerdNamespace, t.TempDir())
	}})
}

// A missing socket and a socket nobody listens on are ErrUnavailable, with
// the reason, as for the Docker API backend.
func TestContainerdUnavailable(t *testing.T) {
	dir := t.TempDir()
	dead := filepath.Join(dir, "dead.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: dead, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	for _, c := range []struct{ sock, want string }{
		{filepath.Join(dir, "missing.sock"), "no such file"},
		{dead, "connection refused"},
	} {
		rt := container.NewContainerd(c.sock, "outpost-test", dir)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err := rt.Ping(ctx)
		cancel()
		if !errors.Is(err, container.ErrUnavailable) || !container.IsUnavailable(err) {
			t.Fatalf("ping %s: %v, want ErrUnavailable", c.sock, err)
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Fatalf("reason missing: %v, want %q", err, c.want)
		}
	}
}
