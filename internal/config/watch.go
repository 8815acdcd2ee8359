package config

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// watchMask is what Watch asks inotify for on the file's directory: content
// written, the file created, renamed in or out, removed, or its mode changed.
const watchMask = syscall.IN_MODIFY | syscall.IN_CLOSE_WRITE | syscall.IN_ATTRIB |
	syscall.IN_CREATE | syscall.IN_DELETE | syscall.IN_MOVED_FROM | syscall.IN_MOVED_TO |
	syscall.IN_DELETE_SELF | syscall.IN_MOVE_SELF

// Watch calls onChange (from one goroutine, never concurrently) whenever the
// file at path changes content, until ctx ends. It watches the file's
// directory, not the file, so editors that write a temporary file and rename
// it over the original (vim, many deploy tools) are seen too; bursts of
// events within debounce are folded into one call. A change that leaves the
// content byte-identical does not fire.
//
// It reads inotify itself, in one goroutine with a 4 KiB buffer, rather than
// through fsnotify, whose reader goroutine keeps a 64 KiB array on its stack
// (a 128 KiB stack for the agent's whole life) plus a second goroutine.
func Watch(ctx context.Context, path string, debounce time.Duration, onChange func()) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("config: watch %s: %w", path, err)
	}
	dir, name := filepath.Split(abs)
	fd, err := syscall.InotifyInit1(syscall.IN_CLOEXEC | syscall.IN_NONBLOCK)
	if err != nil {
		return fmt.Errorf("config: watch %s: inotify: %w", path, err)
	}
	// A non-blocking descriptor goes to the runtime poller, so Read parks
	// the goroutine and honours SetReadDeadline and Close.
	f := os.NewFile(uintptr(fd), "inotify")
	if _, err := syscall.InotifyAddWatch(fd, dir, watchMask); err != nil {
		f.Close()
		return fmt.Errorf("config: watch %s: %w", dir, err)
	}
	last := hashFile(abs)
	stop := context.AfterFunc(ctx, func() { f.Close() })
	go func() {
		defer stop()
		defer f.Close()
		buf := make([]byte, 4096)
		var fire time.Time // zero: nothing pending
		for {
			if err := f.SetReadDeadline(fire); err != nil {
				return
			}
			n, err := f.Read(buf)
			switch {
			case errors.Is(err, os.ErrDeadlineExceeded):
				fire = time.Time{}
				h := hashFile(abs)
				if h == last || h == "" {
					// unchanged, or mid-replace (file briefly absent): an
					// event will follow when the new file appears.
					continue
				}
				last = h
				onChange()
				continue
			case err != nil:
				return // closed: ctx ended
			}
			if ours(buf[:n], name) {
				fire = time.Now().Add(debounce)
			}
		}
	}()
	return nil
}

// ours reports whether a batch of inotify events names the file (or says the
// queue overflowed, or the directory itself went away: check the content).
func ours(b []byte, name string) bool {
	for len(b) >= syscall.SizeofInotifyEvent {
		mask := binary.NativeEndian.Uint32(b[4:8])
		n := binary.NativeEndian.Uint32(b[12:16])
		if n > uint32(len(b)-syscall.SizeofInotifyEvent) {
			return true
		}
		end := syscall.SizeofInotifyEvent + int(n)
		ev := b[syscall.SizeofInotifyEvent:end]
		for len(ev) > 0 && ev[len(ev)-1] == 0 {
			ev = ev[:len(ev)-1] // the name is NUL-padded
		}
		if mask&(syscall.IN_Q_OVERFLOW|syscall.IN_DELETE_SELF|syscall.IN_MOVE_SELF) != 0 || string(ev) == name {
			return true
		}
		b = b[end:]
	}
	return false
}

func hashFile(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	s := sha256.Sum256(b)
	return string(s[:])
}
