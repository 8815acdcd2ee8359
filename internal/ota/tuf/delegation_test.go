package tuf

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func writeSrc(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "src")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// A delegated role's targets are visible to clients within its paths only;
// resolution follows the TUF order (top-level first, then roles in order,
// a terminating role ends the search); a reopened repository keeps them;
// unchanged delegated metadata costs no request.
func TestDelegatedTargets(t *testing.T) {
	r := newRepo(t)
	if _, err := r.AddTarget("linux/arm64/top-1", writeSrc(t, "top"), nil); err != nil {
		t.Fatal(err)
	}
	if err := r.Delegate("arm", []string{"linux/arm64/*"}, false); err != nil {
		t.Fatal(err)
	}
	if err := r.Delegate("fence", []string{"linux/amd64/x*"}, true); err != nil {
		t.Fatal(err)
	}
	if err := r.Delegate("amd", []string{"linux/amd64/*"}, false); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ role, name string }{
		{"arm", "linux/arm64/outpost-1"}, {"amd", "linux/amd64/outpost-1"}, {"amd", "linux/amd64/x-blocked"},
	} {
		if _, err := r.AddDelegatedTarget(c.role, c.name, writeSrc(t, c.name), nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.AddDelegatedTarget("arm", "linux/amd64/outpost-2", writeSrc(t, "x"), nil); err == nil {
		t.Fatal("target outside the role's paths accepted")
	}
	if err := r.Delegate("arm", []string{"x/*"}, false); err == nil {
		t.Fatal("role delegated twice")
	}
	if err := r.Delegate("../evil", []string{"*"}, false); err == nil {
		t.Fatal("bad role name accepted")
	}
	// A role that lists a target outside its paths (a compromised or
	// careless role key) is not believed for it.
	r.Delegated["arm"].Targets["linux/amd64/smuggled"] = r.Delegated["arm"].Targets["linux/arm64/outpost-1"]
	// Nor can it override a top-level target.
	r.Delegated["arm"].Targets["linux/arm64/top-1"] = r.Delegated["arm"].Targets["linux/arm64/outpost-1"]
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
	for name, want := range map[string]bool{
		"linux/arm64/top-1": true, "linux/arm64/outpost-1": true, "linux/amd64/outpost-1": true,
		"linux/amd64/x-blocked": false, "linux/amd64/smuggled": false,
	} {
		if _, ok := tg.Targets[name]; ok != want {
			t.Errorf("target %s visible %v, want %v", name, ok, want)
		}
	}
	if tg.Targets["linux/arm64/top-1"].Length != 3 {
		t.Error("a delegated role overrode a top-level target")
	}
	if _, err := os.Stat(filepath.Join(r.TargetsDir(), c.TargetPath("linux/amd64/outpost-1", tg.Targets["linux/amd64/outpost-1"]))); err != nil {
		t.Fatal(err)
	}
	f.count = 0
	if _, err := c.Refresh(context.Background()); err != nil || f.count != 2 {
		t.Fatalf("refresh with nothing new: %d requests, %v", f.count, err)
	}
	r2, err := OpenRepo(r.Dir, r.KeyDir)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := r2.AllTargets()["linux/amd64/outpost-1"]; !ok || r2.TargetFilePath("linux/amd64/outpost-1") != r.TargetFilePath("linux/amd64/outpost-1") {
		t.Fatal("reopened repository lost the delegated target")
	}
}

// Delegated metadata signed by a key the delegation does not list (here
// the top-level targets key) is refused, as is a delegated role that
// delegates further.
func TestDelegatedRoleWrongKey(t *testing.T) {
	r := newRepo(t)
	if err := r.Delegate("arm", []string{"linux/arm64/*"}, false); err != nil {
		t.Fatal(err)
	}
	if _, err := r.AddDelegatedTarget("arm", "linux/arm64/a", writeSrc(t, "a"), nil); err != nil {
		t.Fatal(err)
	}
	tk, err := os.ReadFile(filepath.Join(r.KeyDir, "targets.key"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(r.KeyDir, "arm.key"), tk, 0o600)
	if err := r.Publish(); err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(t.TempDir(), pinned(t, r), &dirFetcher{dir: r.MetaDir()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Refresh(context.Background()); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("delegated role signed by the wrong key: %v", err)
	}

	r = newRepo(t)
	if err := r.Delegate("arm", []string{"linux/arm64/*"}, false); err != nil {
		t.Fatal(err)
	}
	r.Delegated["arm"].Delegations = &Delegations{Keys: r.Targets.Delegations.Keys, Roles: []*DelegatedRole{{Name: "sub", KeyIDs: r.Targets.Delegations.Roles[0].KeyIDs, Threshold: 1, Paths: []string{"*"}}}}
	if err := r.Publish(); err != nil {
		t.Fatal(err)
	}
	c, err = NewClient(t.TempDir(), pinned(t, r), &dirFetcher{dir: r.MetaDir()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Refresh(context.Background()); !errors.Is(err, ErrMalformed) {
		t.Fatalf("nested delegation: %v", err)
	}
}

// The holder of a delegated role's key publishes without the targets key:
// PublishRole re-signs only that role, the snapshot and the timestamp; a
// later full Publish leaves the unchanged role as signed (its key is not
// needed either).
func TestPublishRoleWithoutTargetsKey(t *testing.T) {
	r := newRepo(t)
	if err := r.Delegate("arm", []string{"linux/arm64/*"}, false); err != nil {
		t.Fatal(err)
	}
	if err := r.Publish(); err != nil {
		t.Fatal(err)
	}
	tv := r.Targets.Version
	offline := filepath.Join(t.TempDir(), "targets.key")
	if err := os.Rename(filepath.Join(r.KeyDir, "targets.key"), offline); err != nil {
		t.Fatal(err)
	}
	if _, err := r.AddDelegatedTarget("arm", "linux/arm64/b", writeSrc(t, "b"), nil); err != nil {
		t.Fatal(err)
	}
	if err := r.PublishRole("arm"); err != nil {
		t.Fatal(err)
	}
	if r.Targets.Version != tv {
		t.Fatal("PublishRole re-signed targets.json")
	}
	c, err := NewClient(t.TempDir(), pinned(t, r), &dirFetcher{dir: r.MetaDir()})
	if err != nil {
		t.Fatal(err)
	}
	tg, err := c.Refresh(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := tg.Targets["linux/arm64/b"]; !ok {
		t.Fatalf("target published by the role not visible: %v", tg.Targets)
	}
	// Back on the offline machine: a full publish without the role's key.
	os.Rename(offline, filepath.Join(r.KeyDir, "targets.key"))
	os.Rename(filepath.Join(r.KeyDir, "arm.key"), filepath.Join(t.TempDir(), "arm.key"))
	r2, err := OpenRepo(r.Dir, r.KeyDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := r2.Publish(); err != nil {
		t.Fatalf("full publish needed the unchanged role's key: %v", err)
	}
	if tg, err = c.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok := tg.Targets["linux/arm64/b"]; !ok {
		t.Fatal("target lost after a full publish")
	}
}
