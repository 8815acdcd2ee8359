package tuf

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// A cached targets file is reused only when it is the very file the new
// snapshot references (length and hashes), not merely one with the same
// version number (TUF spec 5.6: the trusted file must match the snapshot's
// hashes). Here the cache holds a validly signed targets file of the same
// version with an extra target, which must not appear.
func TestCachedMetadataRecheckedAgainstHashes(t *testing.T) {
	r := newRepo(t)
	src := filepath.Join(t.TempDir(), "bin")
	os.WriteFile(src, []byte("hello"), 0o644)
	if _, err := r.AddTarget("linux/amd64/outpost-1.0.0", src, map[string]string{"version": "1.0.0"}); err != nil {
		t.Fatal(err)
	}
	if err := r.Publish(); err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	c, err := NewClient(cache, pinned(t, r), &dirFetcher{dir: r.MetaDir()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Same version, other content, signed by the targets key.
	k, err := r.LoadKey(RoleTargets)
	if err != nil {
		t.Fatal(err)
	}
	evil := *r.Targets
	evil.Targets = map[string]TargetFile{"linux/amd64/outpost-9.9.9": {Length: 5, Hashes: Hashes{"sha256": "00"}}}
	for n, tf := range r.Targets.Targets {
		evil.Targets[n] = tf
	}
	raw, err := Sign(&evil, k)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cache, "targets.json"), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	tg, err := c.Refresh(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := tg.Targets["linux/amd64/outpost-9.9.9"]; ok {
		t.Fatal("cached targets file used although its hash differs from the snapshot's reference")
	}
	if _, ok := tg.Targets["linux/amd64/outpost-1.0.0"]; !ok {
		t.Fatal("real target missing")
	}
}

// Rollback protection survives a wiped metadata cache when the highest
// versions seen are kept elsewhere (Floor): a mirror replaying an older,
// still valid timestamp is refused.
func TestRollbackFloorSurvivesWipedCache(t *testing.T) {
	r := newRepo(t)
	old, err := os.ReadFile(filepath.Join(r.MetaDir(), "timestamp.json"))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := r.Publish(); err != nil {
			t.Fatal(err)
		}
	}
	c, err := NewClient(t.TempDir(), pinned(t, r), &dirFetcher{dir: r.MetaDir()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	seen := c.Versions()
	if seen["timestamp.json"] < 3 || seen["snapshot.json"] < 3 || seen["targets.json"] < 3 {
		t.Fatalf("versions %v", seen)
	}
	// The mirror now replays the older timestamp (and the snapshot it
	// references, still on the server under its versioned name).
	mirror := t.TempDir()
	entries, _ := os.ReadDir(r.MetaDir())
	for _, e := range entries {
		b, _ := os.ReadFile(filepath.Join(r.MetaDir(), e.Name()))
		os.WriteFile(filepath.Join(mirror, e.Name()), b, 0o644)
	}
	os.WriteFile(filepath.Join(mirror, "timestamp.json"), old, 0o644)
	// Without the floor, a wiped cache accepts it: the hole.
	wiped, _ := NewClient(t.TempDir(), pinned(t, r), &dirFetcher{dir: mirror})
	if _, err := wiped.Refresh(context.Background()); err != nil {
		t.Fatalf("control: %v", err)
	}
	// With the floor it is a rollback.
	wiped, _ = NewClient(t.TempDir(), pinned(t, r), &dirFetcher{dir: mirror})
	wiped.Floor = seen
	if _, err := wiped.Refresh(context.Background()); !errors.Is(err, ErrRollback) {
		t.Fatalf("err = %v, want ErrRollback", err)
	}
	// A root chain cut short (newer roots withheld) is refused too.
	if err := r.RotateKey(RoleTimestamp); err != nil {
		t.Fatal(err)
	}
	if err := r.SignTimestamp(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	seen = c.Versions()
	os.Remove(filepath.Join(mirror, "2.root.json"))
	wiped, _ = NewClient(t.TempDir(), pinned(t, r), &dirFetcher{dir: mirror})
	wiped.Floor = seen
	if _, err := wiped.Refresh(context.Background()); !errors.Is(err, ErrRollback) {
		t.Fatalf("withheld root: err = %v, want ErrRollback", err)
	}
}
