//go:build containerd

package container_test

import (
	"testing"

	"github.com/outpost-edge/outpost/internal/supervisor/container"
	"github.com/outpost-edge/outpost/internal/supervisor/container/ctrtest"
)

func init() {
	runtimeBackends = append(runtimeBackends, runtimeBackend{"containerd", func(t *testing.T) container.Runtime {
		return container.NewContainerd(ctrtest.Containerd(t), ctrtest.ContainerdNamespace, t.TempDir())
	}})
}
