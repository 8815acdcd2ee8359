//go:build containerd

package supervisor

import (
	"testing"

	"github.com/outpost-edge/outpost/internal/supervisor/container"
	"github.com/outpost-edge/outpost/internal/supervisor/container/ctrtest"
)

func init() {
	buildTags = append(buildTags, "containerd")
	ctrBackends = append(ctrBackends, ctrBackend{"containerd", func(tb testing.TB, cc *ContainersConfig) container.Runtime {
		sock := ctrtest.Containerd(tb)
		cc.Runtime, cc.Socket, cc.Namespace = RuntimeContainerd, sock, ctrtest.ContainerdNamespace
		return container.NewContainerd(sock, cc.Namespace, tb.TempDir())
	}})
}
