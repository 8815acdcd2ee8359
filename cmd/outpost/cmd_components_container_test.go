package main

import (
	"os"
	"path/filepath"
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

// components check warns about an exec check on a container more often
// than once a minute (exit 0), and applies the agent's container policy
// with --config (exit 2, located in the recipe); config check locates a
// bad containers.runtime.
func TestComponentsCheckContainerPolicy(t *testing.T) {
	dir := t.TempDir()
	recipes := filepath.Join(dir, "recipes")
	os.MkdirAll(recipes, 0o755)
	img := "localhost/vendor/app:1@sha256:" + strings.Repeat("ab", 32)
	os.WriteFile(filepath.Join(recipes, "probe.yaml"), []byte("name: probe\nversion: 1.0.0\nkind: container\ncontainer:\n  image: "+img+
		"\nhealth:\n  exec: [/app, check]\n  interval: 10s\n"), 0o644)
	os.WriteFile(filepath.Join(recipes, "calm.yaml"), []byte("name: calm\nversion: 1.0.0\nkind: container\ncontainer:\n  image: "+img+
		"\nhealth:\n  exec: [/app, check]\n  interval: 2m\n"), 0o644)
	out, errOut, code := outpost(t, "components", "check", recipes)
	if code != 0 || !strings.Contains(errOut, "warning: "+filepath.Join(recipes, "probe.yaml")+":8:13: health.interval: an exec check on a container every 10s") ||
		strings.Contains(errOut, "calm.yaml") || !strings.Contains(out, "2 valid components") || !strings.Contains(out, "1 warnings") {
		t.Fatalf("check: exit %d\n%s%s", code, out, errOut)
	}
	os.WriteFile(filepath.Join(recipes, "calm.yaml"), []byte("name: calm\nversion: 1.0.0\nkind: container\ncontainer:\n  image: "+img+
		"\n  privileged: true\n  mounts:\n    - {source: /etc, target: /host-etc}\n    - {source: /srv/shared/x, target: /x}\n"), 0o644)
	cfg := filepath.Join(dir, "outpost.yaml")
	bus := "broker:\n  listeners:\n    - {type: unix, path: " + filepath.Join(dir, "mqtt.sock") + "}\n"
	os.WriteFile(cfg, []byte("supervisor:\n  containers:\n    host_paths: [/srv/shared]\n"+bus), 0o644)
	out, errOut, code = outpost(t, "components", "check", "--config", cfg, recipes)
	calm := filepath.Join(recipes, "calm.yaml")
	for _, want := range []string{calm + ":6:15: container.privileged", calm + ":8:16: container.mounts[0].source: invalid value: host path /etc is not under"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("check --config: lacks %q", want)
		}
	}
	if code != 2 || strings.Contains(errOut, "mounts[1]") || !strings.Contains(out, "1 valid components") {
		t.Fatalf("check --config: exit %d\n%s%s", code, out, errOut)
	}
	// Without --config the policy is unknown: the same recipes pass.
	if out, errOut, code := outpost(t, "components", "check", recipes); code != 0 {
		t.Fatalf("check without config: exit %d\n%s%s", code, out, errOut)
	}
	os.WriteFile(cfg, []byte("supervisor:\n  containers:\n    runtime: rkt\n    namespace: x\n"+bus), 0o644)
	_, errOut, code = outpost(t, "config", "check", cfg)
	if code != 2 || !strings.Contains(errOut, cfg+":3:14: supervisor.containers.runtime: \"rkt\": want docker or containerd") {
		t.Fatalf("config check runtime: exit %d\n%s", code, errOut)
	}
	os.WriteFile(cfg, []byte("supervisor:\n  containers:\n    runtime: docker\n    namespace: x\n"+bus), 0o644)
	if _, errOut, code = outpost(t, "config", "check", cfg); code != 2 || !strings.Contains(errOut, cfg+":4:16: supervisor.containers.namespace: only for runtime containerd") {
		t.Fatalf("config check namespace: exit %d\n%s", code, errOut)
	}
}
