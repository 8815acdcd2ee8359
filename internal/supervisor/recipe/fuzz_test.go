package recipe

import (
	"errors"
	"os"
	"strings"
	"testing"
)

// FuzzParse feeds arbitrary bytes to Parse: it must never panic, an error
// must be a located *Error, and an accepted recipe must satisfy the
// invariants the supervisor relies on.
func FuzzParse(f *testing.F) {
	full, err := os.ReadFile("testdata/full.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(full)
	f.Add(full[:len(full)/2])
	f.Add(full[len(full)/3:])
	f.Add([]byte("name: a\nversion: 1.0.0\nlifecycle:\n  run: x\n"))
	f.Add([]byte("name: a\nversion: 1.0.0\nlifecycle:\n  startup: {exec: [a, b], timeout: 1s}\n  shutdown: y\n"))
	f.Add([]byte("a: &x [*x]\n"))
	f.Add([]byte("name: a\nversion: 1.0.0\nkind: container\ncontainer:\n  image: app:1@sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824\n  mounts: [{source: data, target: /d}]\n"))
	f.Add([]byte("configuration: {a: [1, 2.5, null, {b: c}]}\n"))
	f.Add([]byte("name: a\nversion: 1.0.0-x.1+y\n---\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := Parse("f.yaml", data)
		if err != nil {
			var re *Error
			if !errors.As(err, &re) || re.File != "f.yaml" {
				t.Fatalf("error not an *Error: %v", err)
			}
			return
		}
		if !ValidName(r.Name) {
			t.Fatalf("accepted invalid name %q", r.Name)
		}
		if r.Kind == KindContainer {
			c := r.Container
			if c == nil || r.Lifecycle != (Lifecycle{}) || (c.Digest == "" && !c.AllowTag) {
				t.Fatalf("bad container recipe accepted %+v", r)
			}
			for _, m := range c.Mounts {
				if !m.HostPath() && strings.Contains(m.Source, "..") {
					t.Fatalf("mount escaping the component's directories accepted %+v", m)
				}
			}
		} else if (r.Lifecycle.Run == nil) == (r.Lifecycle.Startup == nil) {
			t.Fatal("accepted recipe without exactly one of run/startup")
		}
		if _, err := ParseVersion(r.Version.String()); err != nil {
			t.Fatalf("version %q does not round-trip: %v", r.Version, err)
		}
		if r.Health != nil && (r.Health.Timeout > r.Health.Interval || r.Health.FailureThreshold < 1) {
			t.Fatalf("bad health accepted %+v", r.Health)
		}
		for _, f := range append(append([]string{}, r.Access.Publish...), r.Access.Subscribe...) {
			if ValidFilter(f) != nil {
				t.Fatalf("bad filter accepted %q", f)
			}
		}
	})
}
