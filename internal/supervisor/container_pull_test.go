package supervisor

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/supervisor/container/ctrtest"
)

// TestContainerRegistryPull: a recipe with no image archive gets its
// pinned image from a real registry (Debian's docker-registry, htpasswd
// auth) through the runtime, with the agent's credentials for that
// registry. A wrong password is install_failed with the registry's
// answer and retried with backoff, so fixing the secret is enough; a
// digest the registry does not have is refused; the password is never in
// the agent's log.
func TestContainerRegistryPull(t *testing.T) {
	e, rt := ctrEnv(t, ctrBackends[0])
	var logBuf syncBuffer
	e.opts.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(testWriter{t}, &logBuf), &slog.HandlerOptions{Level: slog.LevelDebug}))
	reg := ctrtest.StartRegistry(t)
	a := ctrtest.AppImage(t, "localhost/outpost-test/pulled:1", t.Name())
	ref, digest := reg.Push(t, a, "outpost-test/pulled:1")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := rt.Image(ctx, ref+"@"+digest); err == nil {
		t.Fatal("the pushed image is still in the runtime: the test would not need a pull")
	}
	secrets := t.TempDir()
	pw := filepath.Join(secrets, "registry-pw")
	if err := os.WriteFile(pw, []byte("not-the-password\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.cfg.Containers.SecretsDir = secrets
	e.cfg.Containers.Registries = []RegistryCredential{{Host: reg.Addr, Username: reg.User, PasswordSecret: "registry-pw"}}
	recipe := func(name, dig string) string {
		return "name: " + name + "\nversion: 1.0.0\nkind: container\ncontainer:\n  image: " + ref + "@" + dig + "\n  args: [sleep]\n"
	}
	e.write("pulled", recipe("pulled", digest))
	unknown := "sha256:" + strings.Repeat("cd", 32)
	e.write("unknown", recipe("unknown", unknown))
	s := e.start()

	st := e.waitState("pulled", 60*time.Second, StateInstallFailed)
	if !strings.Contains(st.Reason, "pulled.yaml:5:10: container.image") || !strings.Contains(st.Reason, "image pull failed") ||
		!strings.Contains(strings.ToLower(st.Reason), "unauthorized") {
		t.Fatalf("wrong password: reason %q", st.Reason)
	}
	// The secret is fixed; the next attempt (backoff 2 s, 4 s, ...)
	// pulls without a new recipe or a restart of the agent.
	if err := os.WriteFile(pw, []byte(reg.Password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	st = e.waitState("pulled", 90*time.Second, StateRunning)
	img, err := rt.Image(ctx, ref+"@"+digest)
	if err != nil {
		t.Fatalf("pulled image not in the runtime: %v", err)
	}
	if st.Container == nil || st.Container.Image != img.ID {
		t.Fatalf("container status %+v, image %s", st.Container, img.ID)
	}
	if !hasDigest(img.RepoDigests, digest) {
		t.Fatalf("repo digests %v lack %s", img.RepoDigests, digest)
	}

	st = e.waitState("unknown", 30*time.Second, StateInstallFailed)
	if !strings.Contains(st.Reason, "image pull failed") || !strings.Contains(st.Reason, unknown) {
		t.Fatalf("unknown digest: reason %q", st.Reason)
	}
	sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer scancel()
	if err := s.Stop(sctx); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logBuf.String(), reg.Password) {
		t.Fatal("the registry password is in the agent's log")
	}
	_ = rt.RemoveImage(ctx, img.ID)
}

func TestContainersConfigPullValidate(t *testing.T) {
	ok := RegistryCredential{Host: "registry.example.com:5000", Username: "gw", PasswordSecret: "registry-pw"}
	for _, tc := range []struct {
		name string
		cc   ContainersConfig
		want string // "" = valid
	}{
		{"defaults", ContainersConfig{}, ""},
		{"never", ContainersConfig{Pull: PullNever, Registries: []RegistryCredential{ok}}, ""},
		{"bad policy", ContainersConfig{Pull: "always"}, `containers.pull: "always": want missing or never`},
		{"scheme", ContainersConfig{Registries: []RegistryCredential{{Host: "https://r.example.com", Username: "u", PasswordSecret: "p"}}}, "containers.registries[0].host"},
		{"path", ContainersConfig{Registries: []RegistryCredential{{Host: "r.example.com/team", Username: "u", PasswordSecret: "p"}}}, "containers.registries[0].host"},
		{"duplicate", ContainersConfig{Registries: []RegistryCredential{ok, ok}}, `containers.registries[1].host: "registry.example.com:5000" is also registries[0]`},
		{"no user", ContainersConfig{Registries: []RegistryCredential{{Host: "r", PasswordSecret: "p"}}}, "containers.registries[0].username: required"},
		{"secret path", ContainersConfig{Registries: []RegistryCredential{{Host: "r", Username: "u", PasswordSecret: "../etc/shadow"}}}, "containers.registries[0].password_secret"},
		{"runtime", ContainersConfig{Runtime: "rkt"}, `containers.runtime: "rkt": want docker or containerd`},
		{"namespace for docker", ContainersConfig{Runtime: RuntimeDocker, Namespace: "x"}, "containers.namespace: only for runtime containerd"},
		{"bad namespace", ContainersConfig{Runtime: RuntimeContainerd, Namespace: "-x"}, `containers.namespace: "-x"`},
	} {
		errs := tc.cc.validate()
		got := ""
		for _, e := range errs {
			got += e.Error() + "\n"
		}
		if tc.cc.Runtime == RuntimeContainerd && !containerdBuilt && !strings.Contains(got, "built without containerd support") {
			t.Errorf("%s: errors %q do not say the binary lacks containerd", tc.name, got)
		}
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("%s: errors %q, want %q", tc.name, got, tc.want)
		}
	}
}
