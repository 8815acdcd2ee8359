// Package fswatch is Outpost's one file watcher: it watches directories with
// inotify and calls back, debounced, when files in them change. The config
// file, the rules directory and the supervisor's recipe directory all use it.
//
// It reads inotify itself, in one goroutine with a 4 KiB buffer, rather than
// through fsnotify, whose reader goroutine keeps a 64 KiB array on its stack
// (a 128 KiB stack for the agent's whole life) plus a second goroutine per
// watcher; and fsnotify is then not linked at all.
//
// Directories are watched, not files, so editors and deploy tools that write
// a temporary file and rename it over the original are seen too.
package fswatch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// mask is what a watch asks inotify for on a directory: content written, a
// file created, renamed in or out, removed, or its mode changed, and the
// directory itself going away.
const mask = syscall.IN_MODIFY | syscall.IN_CLOSE_WRITE | syscall.IN_ATTRIB |
	syscall.IN_CREATE | syscall.IN_DELETE | syscall.IN_MOVED_FROM | syscall.IN_MOVED_TO |
	syscall.IN_DELETE_SELF | syscall.IN_MOVE_SELF

// Event is one inotify event on a watched directory.
type Event struct {
	Dir  string // the watched directory (as given to Add)
	Name string // the file's base name; "" for the directory itself or an overflow
	Mask uint32 // syscall.IN_* bits
}

// Overflow reports that the kernel dropped events (the queue overflowed):
// anything may have changed.
func (e Event) Overflow() bool { return e.Mask&syscall.IN_Q_OVERFLOW != 0 }

// Self reports that the watched directory itself was removed or moved.
func (e Event) Self() bool { return e.Mask&(syscall.IN_DELETE_SELF|syscall.IN_MOVE_SELF) != 0 }

// Created reports a file or directory created or moved into Dir.
func (e Event) Created() bool { return e.Mask&(syscall.IN_CREATE|syscall.IN_MOVED_TO) != 0 }

// Removed reports a file or directory removed or moved out of Dir.
func (e Event) Removed() bool { return e.Mask&(syscall.IN_DELETE|syscall.IN_MOVED_FROM) != 0 }

// AttribOnly reports an event that changed only metadata (mode, times).
func (e Event) AttribOnly() bool { return e.Mask&^syscall.IN_ISDIR == syscall.IN_ATTRIB }

// Path is Dir joined with Name.
func (e Event) Path() string { return filepath.Join(e.Dir, e.Name) }

// Options configure a Watcher.
type Options struct {
	// Debounce is how long the watcher waits after the last accepted event
	// before calling OnChange, so a burst (an editor's write-rename-chmod)
	// is one call.
	Debounce time.Duration
	// Filter reports whether an event matters; nil accepts every event.
	// Overflow events are always accepted. It runs on the watcher's
	// goroutine and may call w.Add.
	Filter func(w *Watcher, ev Event) bool
	// OnChange is called on the watcher's goroutine (never concurrently)
	// once Debounce has passed since the last accepted event; first and
	// last are the times of the first and last accepted event of the burst.
	OnChange func(first, last time.Time)
}

// ErrClosed is returned by Add after Close.
var ErrClosed = errors.New("fswatch: watcher closed")

// Watcher watches directories until Close.
type Watcher struct {
	f    *os.File
	fd   int
	opts Options
	done chan struct{}

	mu     sync.Mutex
	dirs   map[int32]string // watch descriptor -> directory
	closed bool
}

// New starts a watcher of dirs (more can be added with Add).
func New(opts Options, dirs ...string) (*Watcher, error) {
	fd, err := syscall.InotifyInit1(syscall.IN_CLOEXEC | syscall.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("fswatch: inotify: %w", err)
	}
	// A non-blocking descriptor goes to the runtime poller, so Read parks
	// the goroutine and honours SetReadDeadline and Close.
	w := &Watcher{
		f:    os.NewFile(uintptr(fd), "inotify"),
		fd:   fd,
		opts: opts,
		done: make(chan struct{}),
		dirs: make(map[int32]string),
	}
	for _, d := range dirs {
		if err := w.Add(d); err != nil {
			w.f.Close()
			return nil, err
		}
	}
	go w.loop()
	return w, nil
}

// Add watches one more directory (not recursively). Adding a directory
// twice is harmless.
func (w *Watcher) Add(dir string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return ErrClosed
	}
	wd, err := syscall.InotifyAddWatch(w.fd, dir, mask)
	if err != nil {
		return fmt.Errorf("fswatch: watch %s: %w", dir, err)
	}
	w.dirs[int32(wd)] = dir
	return nil
}

// Close stops the watcher and waits for its goroutine (and so for an
// OnChange in progress) to end.
func (w *Watcher) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		<-w.done
		return nil
	}
	w.closed = true
	w.mu.Unlock()
	err := w.f.Close()
	<-w.done
	return err
}

func (w *Watcher) loop() {
	defer close(w.done)
	buf := make([]byte, 4096)
	var fire, first, last time.Time // fire zero: nothing pending
	for {
		if err := w.f.SetReadDeadline(fire); err != nil {
			return
		}
		n, err := w.f.Read(buf)
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			fire = time.Time{}
			if w.opts.OnChange != nil {
				w.opts.OnChange(first, last)
			}
			continue
		case err != nil:
			return // closed
		}
		if w.accept(buf[:n]) {
			last = time.Now()
			if fire.IsZero() {
				first = last
			}
			fire = last.Add(w.opts.Debounce)
		}
	}
}

// accept reports whether a batch of events holds one the filter accepts.
func (w *Watcher) accept(b []byte) bool {
	hit := false
	for len(b) >= syscall.SizeofInotifyEvent {
		wd := int32(binary.NativeEndian.Uint32(b[0:4]))
		m := binary.NativeEndian.Uint32(b[4:8])
		n := binary.NativeEndian.Uint32(b[12:16])
		if n > uint32(len(b)-syscall.SizeofInotifyEvent) {
			return true // torn batch: check everything
		}
		end := syscall.SizeofInotifyEvent + int(n)
		name := b[syscall.SizeofInotifyEvent:end]
		for len(name) > 0 && name[len(name)-1] == 0 {
			name = name[:len(name)-1] // the name is NUL-padded
		}
		b = b[end:]
		if m&syscall.IN_IGNORED != 0 {
			w.mu.Lock()
			delete(w.dirs, wd)
			w.mu.Unlock()
			continue
		}
		w.mu.Lock()
		dir := w.dirs[wd]
		w.mu.Unlock()
		ev := Event{Dir: dir, Name: string(name), Mask: m}
		if ev.Overflow() || w.opts.Filter == nil || w.opts.Filter(w, ev) {
			hit = true
		}
	}
	return hit
}
