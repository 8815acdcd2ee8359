package container

import "testing"

func TestReferenceParts(t *testing.T) {
	for _, tc := range []struct{ ref, repo, tag, host string }{
		{"127.0.0.1:5000/outpost/app:1@sha256:ab", "127.0.0.1:5000/outpost/app", "sha256:ab", "127.0.0.1:5000"},
		{"127.0.0.1:5000/outpost/app:1", "127.0.0.1:5000/outpost/app", "1", "127.0.0.1:5000"},
		{"registry.example.com/app", "registry.example.com/app", "", "registry.example.com"},
		{"localhost/outpost-test/x:2", "localhost/outpost-test/x", "2", "localhost"},
		{"library/alpine:3.19", "library/alpine", "3.19", "docker.io"},
		{"alpine", "alpine", "", "docker.io"},
	} {
		repo, tag := splitRef(tc.ref)
		if repo != tc.repo || tag != tc.tag || RegistryHost(tc.ref) != tc.host {
			t.Errorf("%s: %q %q %q, want %q %q %q", tc.ref, repo, tag, RegistryHost(tc.ref), tc.repo, tc.tag, tc.host)
		}
	}
	if got := Repository("h:5000/a/b:1"); got != "h:5000/a/b" {
		t.Errorf("Repository = %q", got)
	}
}
