package fswatch

import (
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestDebouncedFilteredChanges: a burst of accepted events is one OnChange;
// events the filter rejects are none; a directory added later is watched.
func TestDebouncedFilteredChanges(t *testing.T) {
	dir := t.TempDir()
	var calls atomic.Int32
	w, err := New(Options{
		Debounce: 50 * time.Millisecond,
		Filter:   func(_ *Watcher, ev Event) bool { return filepath.Ext(ev.Name) == ".yaml" },
		OnChange: func(first, last time.Time) {
			if last.Before(first) {
				t.Errorf("last event %v before first %v", last, first)
			}
			calls.Add(1)
		},
	}, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	for i := range 5 {
		if err := os.WriteFile(filepath.Join(dir, "a.yaml"), []byte{byte(i)}, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "one change", func() bool { return calls.Load() == 1 })

	// Rejected by the filter: no call. The accepted write after it is
	// ordered behind it in the same inotify queue, so once its call
	// arrives the rejected event has been seen.
	if err := os.WriteFile(filepath.Join(dir, "b.txt"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := w.Add(sub); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sub, "c.yaml"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the change in the added directory", func() bool { return calls.Load() == 2 })

	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Add(dir); err != ErrClosed {
		t.Fatalf("Add after Close: %v, want ErrClosed", err)
	}
}

func TestMissingDir(t *testing.T) {
	if _, err := New(Options{}, filepath.Join(t.TempDir(), "nope")); err == nil {
		t.Fatal("watching a missing directory: no error")
	}
}

// FuzzAccept: the event parser takes any bytes the kernel could hand it
// without panicking.
func FuzzAccept(f *testing.F) {
	f.Add([]byte{1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 'o', 'u', 't', 'p', 'o', 's', 't', '.', 'y', 'a', 'm', 'l', 0, 0, 0, 0})
	f.Add([]byte{1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255})
	f.Add([]byte{1, 0, 0, 0, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}) // IN_IGNORED
	w := &Watcher{dirs: map[int32]string{1: "/d"}, opts: Options{Filter: func(_ *Watcher, ev Event) bool { return ev.Name == "outpost.yaml" }}}
	f.Fuzz(func(t *testing.T, b []byte) {
		w.accept(b)
	})
}
