package tuf

import (
	"context"
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

type dirFetcher struct {
	dir   string
	count int
}

func (d *dirFetcher) Fetch(_ context.Context, path string, max int64) ([]byte, error) {
	d.count++
	b, err := os.ReadFile(filepath.Join(d.dir, path))
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNotFound
	}
	if int64(len(b)) > max {
		return nil, ErrTooLarge
	}
	return b, err
}

func newRepo(t *testing.T) *Repo {
	t.Helper()
	d := t.TempDir()
	r, err := InitRepo(filepath.Join(d, "repo"), filepath.Join(d, "keys"), true, nil)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func pinned(t *testing.T, r *Repo) []byte {
	b, err := os.ReadFile(filepath.Join(r.MetaDir(), "1.root.json"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRefreshRoundTrip(t *testing.T) {
	r := newRepo(t)
	src := filepath.Join(t.TempDir(), "bin")
	os.WriteFile(src, []byte("hello"), 0o644)
	if _, err := r.AddTarget("linux/amd64/outpost-1.0.0", src, map[string]string{"version": "1.0.0"}); err != nil {
		t.Fatal(err)
	}
	if err := r.Publish(); err != nil {
		t.Fatal(err)
	}
	f := &dirFetcher{dir: r.MetaDir()}
	c, err := NewClient(t.TempDir(), pinned(t, r), f)
	if err != nil {
		t.Fatal(err)
	}
	tg, err := c.Refresh(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	tf, ok := tg.Targets["linux/amd64/outpost-1.0.0"]
	if !ok || tf.Length != 5 {
		t.Fatalf("target missing: %+v", tg.Targets)
	}
	if _, err := os.Stat(filepath.Join(r.TargetsDir(), c.TargetPath("linux/amd64/outpost-1.0.0", tf))); err != nil {
		t.Fatal(err)
	}
	// Nothing new: two requests (next root, timestamp).
	f.count = 0
	if _, err := c.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if f.count != 2 {
		t.Fatalf("refresh with nothing new made %d requests, want 2", f.count)
	}
	// Reopen the repo and publish again.
	r2, err := OpenRepo(r.Dir, r.KeyDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := r2.Publish(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if c.Targets().Version != 3 {
		t.Fatalf("targets version %d, want 3", c.Targets().Version)
	}
}

func TestRootRotationAndExpiry(t *testing.T) {
	r := newRepo(t)
	f := &dirFetcher{dir: r.MetaDir()}
	c, err := NewClient(t.TempDir(), pinned(t, r), f)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.RotateKey(RoleRoot); err != nil {
		t.Fatal(err)
	}
	if err := r.RotateKey(RoleTimestamp); err != nil {
		t.Fatal(err)
	}
	if err := r.SignTimestamp(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if c.Root().Version != 3 {
		t.Fatalf("root v%d, want 3", c.Root().Version)
	}
	c.Now = func() time.Time { return time.Now().Add(48 * time.Hour) }
	if _, err := c.Refresh(context.Background()); !errors.Is(err, ErrExpired) {
		t.Fatalf("err = %v, want ErrExpired", err)
	}
}

func TestCanonical(t *testing.T) {
	got, err := Canonical([]byte(` {"b": [1, "x\"\\y\n"], "a": {"d": null, "c": true}} `))
	if err != nil {
		t.Fatal(err)
	}
	want := "{\"a\":{\"c\":true,\"d\":null},\"b\":[1,\"x\\\"\\\\y\n\"]}"
	if string(got) != want {
		t.Fatalf("got %s\nwant %s", got, want)
	}
	if _, err := Canonical([]byte(`{"a":1.5}`)); err == nil {
		t.Fatal("float accepted")
	}
}

func FuzzMetadata(f *testing.F) {
	d := f.TempDir()
	r, err := InitRepo(filepath.Join(d, "repo"), filepath.Join(d, "keys"), true, nil)
	if err != nil {
		f.Fatal(err)
	}
	root, _ := os.ReadFile(filepath.Join(r.MetaDir(), "root.json"))
	// A delegation, for the seeds 2.targets.json and 1.arm.json.
	src := filepath.Join(d, "src")
	os.WriteFile(src, []byte("x"), 0o644)
	if err := r.Delegate("arm", []string{"linux/arm64/*"}, true); err != nil {
		f.Fatal(err)
	}
	if _, err := r.AddDelegatedTarget("arm", "linux/arm64/a", src, nil); err != nil {
		f.Fatal(err)
	}
	if err := r.Publish(); err != nil {
		f.Fatal(err)
	}
	for _, n := range []string{"root.json", "timestamp.json", "1.snapshot.json", "1.targets.json", "2.targets.json", "1.arm.json"} {
		b, _ := os.ReadFile(filepath.Join(r.MetaDir(), n))
		f.Add(b)
		f.Add(b[:len(b)/2])
	}
	f.Add([]byte(`{"signatures":[],"signed":{"_type":"root","version":1}}`))
	f.Add([]byte(`{"signed":null}`))
	e0, _ := ParseEnvelope(root)
	trusted, _ := ParseRoot(e0)
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := ParseEnvelope(data)
		if err != nil {
			return
		}
		_, _ = Canonical(e.Signed)
		for _, role := range []string{RoleRoot, RoleTimestamp, RoleSnapshot, RoleTargets} {
			_ = Verify(trusted, role, e)
		}
		if nr, err := ParseRoot(e); err == nil {
			_ = Verify(nr, RoleRoot, e)
		}
		ParseTimestamp(e)
		ParseSnapshot(e)
		if tg, err := ParseTargets(e); err == nil && tg.Delegations != nil {
			// Resolving through its own delegations (the targets file
			// standing in for every delegated role) only ever adds names
			// within some role's paths, and keeps every top-level target.
			del := map[string]*Targets{}
			for _, dr := range tg.Delegations.Roles {
				del[dr.Name] = tg
			}
			res := resolve(tg, del)
			for name := range tg.Targets {
				if _, ok := res.Targets[name]; !ok {
					t.Fatalf("top-level target %s lost", name)
				}
			}
			for name := range res.Targets {
				if _, top := tg.Targets[name]; !top && !slices.ContainsFunc(tg.Delegations.Roles, func(dr *DelegatedRole) bool { return dr.matches(name) }) {
					t.Fatalf("target %s outside every role's paths", name)
				}
			}
		}
	})
}

// A new root must be signed by the trusted root's keys, not only its own.
func TestRootRotationNeedsOldKeys(t *testing.T) {
	r := newRepo(t)
	f := &dirFetcher{dir: r.MetaDir()}
	c, err := NewClient(t.TempDir(), pinned(t, r), f)
	if err != nil {
		t.Fatal(err)
	}
	// An attacker's root v2 listing their own key, self-signed.
	evil := GenerateKey()
	pk := NewKey(evil.Public().(ed25519.PublicKey))
	r.Root.Keys = map[string]*Key{pk.ID(): pk}
	for _, role := range []string{RoleRoot, RoleTargets, RoleSnapshot, RoleTimestamp} {
		r.Root.Roles[role] = &RoleKeys{KeyIDs: []string{pk.ID()}, Threshold: 1}
	}
	r.Root.Version = 2
	raw, err := Sign(r.Root, evil)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(r.MetaDir(), "2.root.json"), raw, 0o644)
	if _, err := c.Refresh(context.Background()); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("err = %v, want ErrUnknownKey", err)
	}
	if c.Root().Version != 1 {
		t.Fatalf("trusted root moved to v%d", c.Root().Version)
	}
	// A root that skips a version is refused even when properly signed.
	r2 := newRepo(t)
	c2, _ := NewClient(t.TempDir(), pinned(t, r2), &dirFetcher{dir: r2.MetaDir()})
	r2.Root.Version = 3
	if err := r2.WriteRoot(); err != nil {
		t.Fatal(err)
	}
	os.Rename(filepath.Join(r2.MetaDir(), "3.root.json"), filepath.Join(r2.MetaDir(), "2.root.json"))
	if _, err := c2.Refresh(context.Background()); !errors.Is(err, ErrRollback) {
		t.Fatalf("skipped version: err = %v, want ErrRollback", err)
	}
}
