package config

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// TestWatch drives Watch with real files: an in-place write fires once, a
// byte-identical rewrite does not, a write-and-rename over the file fires, a
// change to another file in the directory does not, and nothing fires after
// the context ends.
func TestWatch(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "outpost.yaml")
	write := func(p, s string) {
		t.Helper()
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(path, "a: 1\n")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var calls atomic.Int32
	changed := make(chan struct{}, 10)
	if err := Watch(ctx, path, 20*time.Millisecond, func() { calls.Add(1); changed <- struct{}{} }); err != nil {
		t.Fatal(err)
	}
	wait := func(what string) {
		t.Helper()
		select {
		case <-changed:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: no change reported in 5 s", what)
		}
	}
	quiet := func(what string) {
		t.Helper()
		select {
		case <-changed:
			t.Fatalf("%s: change reported", what)
		case <-time.After(200 * time.Millisecond):
		}
	}

	write(path, "a: 2\n")
	wait("in-place write")
	write(path, "a: 2\n")
	quiet("identical rewrite")
	write(filepath.Join(dir, "other.yaml"), "b: 1\n")
	quiet("another file")

	tmp := filepath.Join(dir, ".outpost.yaml.tmp")
	write(tmp, "a: 3\n")
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	wait("rename over")
	for i := range 20 { // a burst folds into one call
		write(path, "a: "+string(rune('a'+i))+"\n")
	}
	wait("burst")
	quiet("after the burst")

	cancel()
	time.Sleep(50 * time.Millisecond)
	n := calls.Load()
	write(path, "a: 4\n")
	time.Sleep(200 * time.Millisecond)
	if calls.Load() != n {
		t.Fatal("change reported after the context ended")
	}
}

func TestWatchMissingDir(t *testing.T) {
	if err := Watch(context.Background(), filepath.Join(t.TempDir(), "nope", "x.yaml"), time.Millisecond, func() {}); err == nil {
		t.Fatal("watching a file in a missing directory: no error")
	}
}
