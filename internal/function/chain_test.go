package function

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/ota/tuf"
)

// copyDir replaces dst with a copy of the files in src (flat).
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.RemoveAll(dst); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// addVersion writes function tag version v into fnDir/tag-v and lists it
// in the repository's targets.
func addVersion(t *testing.T, repo *tuf.Repo, fnDir string, v int) {
	t.Helper()
	d := filepath.Join(fnDir, "tag-"+string(rune('0'+v)))
	writeFn(t, d, v, "", tagGuest(v))
	man := &Manifest{Name: "tag", Version: v, Module: "tag.wasm"}
	for _, f := range []string{ManifestFile, "tag.wasm"} {
		if _, err := repo.AddTarget(TargetName(man, f), filepath.Join(d, f), nil); err != nil {
			t.Fatal(err)
		}
	}
}

// TestChainRefusesRollback: functions verified through the TUF chain
// (timestamp → snapshot → targets). Version 2 replaces version 1 in the
// repository; replaying the older signed metadata together with the
// version 1 directory is refused (rollback), version 1 does not run
// again, also with a new registry after a restart whose metadata cache
// was wiped (the version floor is kept apart).
func TestChainRefusesRollback(t *testing.T) {
	ctx := context.Background()
	base := t.TempDir()
	repo, err := tuf.InitRepo(filepath.Join(base, "repo"), filepath.Join(base, "keys"), false, nil)
	if err != nil {
		t.Fatal(err)
	}
	rootPath := filepath.Join(repo.MetaDir(), "root.json")
	pinned := filepath.Join(base, "pinned-root.json")
	copyFile(t, rootPath, pinned)
	fnDir := filepath.Join(base, "functions")
	stateDir := filepath.Join(base, "state")

	addVersion(t, repo, fnDir, 1)
	if err := repo.Publish(); err != nil {
		t.Fatal(err)
	}
	oldMeta := filepath.Join(base, "old-metadata")
	copyDir(t, repo.MetaDir(), oldMeta)
	copyDir(t, repo.MetaDir(), filepath.Join(fnDir, ChainDir))

	open := func() (*Registry, *recSink) {
		chain, err := NewChainTrust(pinned, filepath.Join(fnDir, ChainDir), stateDir)
		if err != nil {
			t.Fatal(err)
		}
		sink := &recSink{}
		r := NewRegistry(RegistryOptions{Runtime: newRT(t), Dir: fnDir, Chain: chain,
			Sinks: func(string) (message.Sink, error) { return sink, nil }})
		t.Cleanup(func() { _ = r.Close(ctx) })
		return r, sink
	}
	r, sink := open()
	if err := r.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	deliver(t, r, "d", "x")
	if got := outTopics(sink.take()); len(got) != 1 || got[0] != "d:out/v1" {
		t.Fatalf("v1: %v", got)
	}

	// Version 2 replaces version 1 in the repository.
	addVersion(t, repo, fnDir, 2)
	for _, f := range []string{ManifestFile, "tag.wasm"} {
		delete(repo.Targets.Targets, TargetName(&Manifest{Name: "tag", Version: 1, Module: "tag.wasm"}, f))
	}
	if err := repo.Publish(); err != nil {
		t.Fatal(err)
	}
	copyDir(t, repo.MetaDir(), filepath.Join(fnDir, ChainDir))
	// tag-1 is still on disk: the new targets no longer list it.
	if err := r.Reload(ctx); !errors.Is(err, ErrTampered) {
		t.Fatalf("v1 not listed any more: %v", err)
	}
	deliver(t, r, "d", "x")
	if got := outTopics(sink.take()); len(got) != 1 || got[0] != "d:out/v2" {
		t.Fatalf("after v2: %v", got)
	}

	// The replay: the older signed metadata and only version 1 on disk.
	copyDir(t, oldMeta, filepath.Join(fnDir, ChainDir))
	if err := os.RemoveAll(filepath.Join(fnDir, "tag-2")); err != nil {
		t.Fatal(err)
	}
	if err := r.Reload(ctx); !errors.Is(err, tuf.ErrRollback) {
		t.Fatalf("replayed metadata: %v, want a rollback error", err)
	}
	if st, _ := r.Statuses(); len(st) != 0 {
		t.Fatalf("after the replay: %+v running", st)
	}
	_ = r.Close(ctx)

	// Restart with the trusted metadata cache wiped: still refused.
	if err := os.RemoveAll(filepath.Join(stateDir, "tuf")); err != nil {
		t.Fatal(err)
	}
	r, sink = open()
	if err := r.Reload(ctx); !errors.Is(err, tuf.ErrRollback) {
		t.Fatalf("replay after restart: %v, want a rollback error", err)
	}
	if st, _ := r.Statuses(); len(st) != 0 {
		t.Fatalf("after restart: %+v running", st)
	}
	if err := r.Deliver(ctx, &message.Message{Topic: "in/d", DeviceID: "d"}); err != nil || len(sink.take()) != 0 {
		t.Fatalf("replayed v1 ran: %v", err)
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
