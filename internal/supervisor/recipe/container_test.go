package recipe

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

const testDigest = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"

func TestParseContainer(t *testing.T) {
	src := `name: analytics
version: 1.0.0
kind: container
container:
  image: localhost/vendor/analytics:1.4@` + testDigest + `
  entrypoint: [/app]
  args: [mqtt]
  secret_env: {DB_PASSWORD: db-password}
  mounts:
    - {source: data, target: /data}
    - {source: artifacts/models, target: /models}
    - {source: /dev/ttyUSB0, target: /dev/ttyUSB0}
  network: none
  user: "1000:1000"
  working_dir: /work
artifacts:
  - path: analytics.tar
    sha256: 2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824
    image: true
env: {LOG_LEVEL: debug}
health:
  exec: [/app, check, /data/ready]
resources: {memory: 64MiB, cpu: 0.5}
depends_on: [bus-bridge]
`
	r, err := Parse("c.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	c := r.Container
	if r.Kind != KindContainer || c == nil {
		t.Fatalf("kind %q, container %+v", r.Kind, c)
	}
	if c.Image != "localhost/vendor/analytics:1.4" || c.Digest != testDigest || c.Reference() != "localhost/vendor/analytics:1.4@"+testDigest {
		t.Fatalf("image %q digest %q", c.Image, c.Digest)
	}
	if c.Network != "none" || c.User != "1000:1000" || c.WorkingDir != "/work" || !reflect.DeepEqual(c.Args, []string{"mqtt"}) || !reflect.DeepEqual(c.SecretEnv, map[string]string{"DB_PASSWORD": "db-password"}) {
		t.Fatalf("container %+v", c)
	}
	if len(c.Mounts) != 3 || c.Mounts[0].ReadOnly || !c.Mounts[1].ReadOnly || !c.Mounts[2].HostPath() {
		t.Fatalf("mounts %+v", c.Mounts)
	}
	if !reflect.DeepEqual(c.HostPaths(), []string{"/dev/ttyUSB0"}) {
		t.Fatalf("host paths %v", c.HostPaths())
	}
	if !r.Artifacts[0].Image {
		t.Fatal("image artifact")
	}
	if p := r.Where("container.mounts[2].source"); p != (Pos{12, 16}) {
		t.Fatalf("Where(mounts[2].source) = %+v", p)
	}
}

func TestParseContainerErrors(t *testing.T) {
	const head = "name: a\nversion: 1.0.0\nkind: container\n"
	pinned := "container:\n  image: app:1@" + testDigest + "\n"
	cases := []struct{ name, src, want string }{
		{"tag only", head + "container:\n  image: app:1\n", "c.yaml:5:10: container.image: invalid value: image \"app:1\" is not pinned"},
		{"no image", head + "container:\n  args: [x]\n", "container.image: invalid value: image is required"},
		{"bad ref", head + "container:\n  image: \"App Name\"\n", "c.yaml:5:10: container.image"},
		{"bad digest", head + "container:\n  image: app@sha256:abc\n", "must be sha256:<64"},
		{"digests differ", head + pinned + "  digest: sha256:" + strings.Repeat("0", 64) + "\n", "c.yaml:6:11: container.digest"},
		{"no section", head, "kind container needs a container section"},
		{"lifecycle", head + pinned + "lifecycle:\n  run: x\n", "c.yaml:7:8: lifecycle.run"},
		{"native user", head + pinned + "user: nobody\n", "use container.user"},
		{"network", head + pinned + "  network: bridge\n", "c.yaml:6:12: container.network"},
		{"mount escape", head + pinned + "  mounts:\n    - {source: data/../../etc, target: /x}\n", "c.yaml:7:16: container.mounts[0].source"},
		{"mount relative", head + pinned + "  mounts:\n    - {source: etc, target: /x}\n", "source must be data"},
		{"host not clean", head + pinned + "  mounts:\n    - {source: /etc/../root, target: /x}\n", "not clean"},
		{"target relative", head + pinned + "  mounts:\n    - {source: data, target: x}\n", "container.mounts[0].target"},
		{"target reserved", head + pinned + "  mounts:\n    - {source: data, target: /run/outpost/bus}\n", "overlaps /run/outpost"},
		{"target twice", head + pinned + "  mounts:\n    - {source: data, target: /x}\n    - {source: artifacts, target: /x}\n", "mounted twice"},
		{"unknown key", head + pinned + "  capabilities: [ALL]\n", "c.yaml:6:3: container.capabilities: unknown field"},
		{"image archive without hash", head + pinned + "artifacts:\n  - path: a.tar\n    image: true\n", "artifacts[0].sha256"},
		{"image artifact native", "name: a\nversion: 1.0.0\nlifecycle:\n  run: x\nartifacts:\n  - path: a.tar\n    image: true\n", "for kind: container"},
		{"container on native", "name: a\nversion: 1.0.0\nlifecycle:\n  run: x\n" + pinned, "needs kind: container"},
		{"reserved secret env", head + pinned + "  secret_env: {OUTPOST_X: s}\n", "reserved"},
		{"bad secret name", head + pinned + "  secret_env: {X: ../etc/shadow}\n", "not a valid secret name"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("c.yaml", []byte(c.src))
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrUnknownField) {
				t.Errorf("error %v is not ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not contain %q", err, c.want)
			}
		})
	}
	// allow_tag accepts a tag alone.
	r, err := Parse("c.yaml", []byte(head+"container:\n  image: app:latest\n  allow_tag: true\n"))
	if err != nil || r.Container.Digest != "" || r.Container.Reference() != "app:latest" {
		t.Fatalf("allow_tag: %v %+v", err, r)
	}
}
