package config

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Watch calls onChange (from one goroutine, never concurrently) whenever the
// file at path changes content, until ctx ends. It watches the file's
// directory, not the file, so editors that write a temporary file and rename
// it over the original (vim, many deploy tools) are seen too; bursts of
// events within debounce are folded into one call. A change that leaves the
// content byte-identical does not fire.
func Watch(ctx context.Context, path string, debounce time.Duration, onChange func()) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("config: watch %s: %w", path, err)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("config: watch %s: %w", path, err)
	}
	dir := filepath.Dir(abs)
	if err := w.Add(dir); err != nil {
		w.Close()
		return fmt.Errorf("config: watch %s: %w", dir, err)
	}
	last := hashFile(abs)
	go func() {
		defer w.Close()
		var timer *time.Timer
		var fire <-chan time.Time
		for {
			select {
			case <-ctx.Done():
				if timer != nil {
					timer.Stop()
				}
				return
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				if filepath.Clean(ev.Name) != abs {
					continue
				}
				if timer == nil {
					timer = time.NewTimer(debounce)
				} else {
					timer.Reset(debounce)
				}
				fire = timer.C
			case <-w.Errors:
				// Overflow or transient error: check the content on the next tick.
				if timer == nil {
					timer = time.NewTimer(debounce)
				} else {
					timer.Reset(debounce)
				}
				fire = timer.C
			case <-fire:
				fire = nil
				h := hashFile(abs)
				if h == last || h == "" {
					// unchanged, or mid-replace (file briefly absent): an
					// event will follow when the new file appears.
					continue
				}
				last = h
				onChange()
			}
		}
	}()
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
