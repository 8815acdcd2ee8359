//go:build !containerd

package supervisor

import (
	"fmt"

	"github.com/outpost-edge/outpost/internal/supervisor/container"
)

// containerdBuilt reports whether this binary has the containerd backend:
// containerd's Go client adds about 9 MB, so it is built only with
// -tags containerd (docs/components.md).
const containerdBuilt = false

func newContainerd(_, _, _ string) (container.Runtime, error) {
	return nil, fmt.Errorf("%w: supervisor.containers.runtime containerd: this outpost binary was built without containerd support (-tags containerd)", container.ErrUnavailable)
}
