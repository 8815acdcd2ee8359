//go:build containerd

package supervisor

import (
	"github.com/outpost-edge/outpost/internal/supervisor/container"
)

// containerdBuilt reports whether this binary has the containerd backend.
const containerdBuilt = true

func newContainerd(socket, namespace, logDir string) (container.Runtime, error) {
	if socket == "" {
		socket = container.DefaultContainerdSocket
	}
	return container.NewContainerd(socket, namespace, logDir), nil
}
