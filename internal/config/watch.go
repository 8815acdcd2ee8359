package config

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/outpost-edge/outpost/internal/fswatch"
)

// Watch calls onChange (from one goroutine, never concurrently) whenever the
// file at path changes content, until ctx ends. It watches the file's
// directory (internal/fswatch), not the file, so editors that write a
// temporary file and rename it over the original (vim, many deploy tools)
// are seen too; bursts of events within debounce are folded into one call. A
// change that leaves the content byte-identical does not fire.
func Watch(ctx context.Context, path string, debounce time.Duration, onChange func()) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("config: watch %s: %w", path, err)
	}
	dir, name := filepath.Split(abs)
	last := hashFile(abs)
	w, err := fswatch.New(fswatch.Options{
		Debounce: debounce,
		// The file, or the directory itself went away: check the content.
		Filter: func(_ *fswatch.Watcher, ev fswatch.Event) bool { return ev.Name == name || ev.Self() },
		OnChange: func(_, _ time.Time) {
			h := hashFile(abs)
			if h == last || h == "" {
				// unchanged, or mid-replace (file briefly absent): an
				// event will follow when the new file appears.
				return
			}
			last = h
			onChange()
		},
	}, dir)
	if err != nil {
		return fmt.Errorf("config: watch %s: %w", path, err)
	}
	context.AfterFunc(ctx, func() { w.Close() })
	return nil
}

func hashFile(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	s := sha256.Sum256(b)
	return string(s[:])
}
