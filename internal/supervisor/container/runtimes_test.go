package container_test

import (
	"testing"

	"github.com/outpost-edge/outpost/internal/supervisor/container"
	"github.com/outpost-edge/outpost/internal/supervisor/container/ctrtest"
)

// A runtime backend the shared tests run against: one test body, every
// backend built into this test binary (containerd with -tags containerd).
type runtimeBackend struct {
	name string
	new  func(t *testing.T) container.Runtime
}

var runtimeBackends = []runtimeBackend{
	{"docker", func(t *testing.T) container.Runtime { return container.NewDocker(ctrtest.Podman(t)) }},
}

// forEachRuntime runs body as a subtest per backend.
func forEachRuntime(t *testing.T, body func(t *testing.T, rt container.Runtime)) {
	for _, b := range runtimeBackends {
		t.Run(b.name, func(t *testing.T) { body(t, b.new(t)) })
	}
}
