package main

import (
	"strings"
	"testing"

	"github.com/outpost-edge/outpost/internal/supervisor"
)

func TestComponentStatusShowsContainer(t *testing.T) {
	var b strings.Builder
	printComponentStatus(&b, supervisor.Status{Name: "vendor", State: supervisor.StateHealthy, Health: "passing", Memory: 3 << 20,
		Container: &supervisor.ContainerStatus{ID: "0123456789ab", Image: "sha256:ab", Runtime: "docker-api unix:///run/podman/podman.sock", Adopted: true, CPUSeconds: 1.5}})
	out := b.String()
	for _, want := range []string{"health:    passing", "memory:    3.0 MiB", "container: 0123456789ab image=sha256:ab adopted=true cpu=1.50s via docker-api"} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
}
