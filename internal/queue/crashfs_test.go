package queue

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"sync"
)

// crashFS is an in-memory fsys that remembers what was made durable: file
// contents at their last Sync, and directory entries at their directory's
// last SyncDir. PowerCut returns the filesystem a machine would find after
// losing power now: unsynced writes are gone (optionally with a torn,
// partly written tail), created-but-unsynced entries vanish, and
// removed-but-unsynced files come back with their synced contents.
type crashFS struct {
	mu   sync.Mutex
	dirs map[string]*crashDir
}

type inode struct {
	data   []byte
	synced []byte
}

type crashDir struct {
	cur    map[string]*inode
	synced map[string]*inode
}

func newCrashFS() *crashFS { return &crashFS{dirs: map[string]*crashDir{}} }

func (c *crashFS) dir(name string) (*crashDir, string, error) {
	d := c.dirs[filepath.Dir(name)]
	if d == nil {
		return nil, "", &os.PathError{Op: "open", Path: name, Err: os.ErrNotExist}
	}
	return d, filepath.Base(name), nil
}

func (c *crashFS) OpenFile(name string, flag int, _ os.FileMode) (file, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d, base, err := c.dir(name)
	if err != nil {
		return nil, err
	}
	ino := d.cur[base]
	if ino == nil {
		if flag&os.O_CREATE == 0 {
			return nil, &os.PathError{Op: "open", Path: name, Err: os.ErrNotExist}
		}
		ino = &inode{}
		d.cur[base] = ino
	}
	if flag&os.O_TRUNC != 0 {
		ino.data = ino.data[:0]
	}
	return &crashFile{fs: c, ino: ino}, nil
}

func (c *crashFS) Remove(name string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	d, base, err := c.dir(name)
	if err != nil {
		return err
	}
	if d.cur[base] == nil {
		return &os.PathError{Op: "remove", Path: name, Err: os.ErrNotExist}
	}
	delete(d.cur, base)
	return nil
}

func (c *crashFS) ReadDir(dir string) ([]string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.dirs[dir]
	if d == nil {
		return nil, &os.PathError{Op: "readdir", Path: dir, Err: os.ErrNotExist}
	}
	var names []string
	for n := range d.cur {
		names = append(names, n)
	}
	sort.Strings(names)
	return names, nil
}

// MkdirAll creates dir durably (the test does not model lost directories).
func (c *crashFS) MkdirAll(dir string, _ os.FileMode) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dirs[dir] == nil {
		c.dirs[dir] = &crashDir{cur: map[string]*inode{}, synced: map[string]*inode{}}
	}
	return nil
}

func (c *crashFS) SyncDir(dir string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.dirs[dir]
	if d == nil {
		return os.ErrNotExist
	}
	d.synced = make(map[string]*inode, len(d.cur))
	for n, ino := range d.cur {
		d.synced[n] = ino
	}
	return nil
}

func (c *crashFS) Lock(string) (io.Closer, error) { return io.NopCloser(nil), nil }

// PowerCut returns the durable state. With torn, each file whose unsynced
// contents extend its synced contents keeps a random prefix of the
// extension, whose last bytes may be garbage (a partly written sector).
func (c *crashFS) PowerCut(rng *rand.Rand, torn bool) *crashFS {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := newCrashFS()
	for name, d := range c.dirs {
		nd := &crashDir{cur: map[string]*inode{}, synced: map[string]*inode{}}
		for fn, ino := range d.synced {
			data := append([]byte(nil), ino.synced...)
			if torn && len(ino.data) > len(ino.synced) && bytes.Equal(ino.data[:len(ino.synced)], ino.synced) && rng.IntN(2) == 0 {
				ext := ino.data[len(ino.synced):]
				k := rng.IntN(len(ext) + 1)
				data = append(data, ext[:k]...)
				for g := rng.IntN(8); g > 0 && k > 0; g-- {
					data[len(data)-1-rng.IntN(min(k, 64))] = byte(rng.Uint32())
				}
			}
			ni := &inode{data: data, synced: append([]byte(nil), data...)}
			nd.cur[fn], nd.synced[fn] = ni, ni
		}
		n.dirs[name] = nd
	}
	return n
}

type crashFile struct {
	fs     *crashFS
	ino    *inode
	closed bool
}

var errClosedFile = errors.New("crashfs: file closed")

func (f *crashFile) ReadAt(p []byte, off int64) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.closed {
		return 0, errClosedFile
	}
	if off >= int64(len(f.ino.data)) {
		return 0, io.EOF
	}
	n := copy(p, f.ino.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *crashFile) WriteAt(p []byte, off int64) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.closed {
		return 0, errClosedFile
	}
	if end := off + int64(len(p)); end > int64(len(f.ino.data)) {
		f.ino.data = append(f.ino.data, make([]byte, end-int64(len(f.ino.data)))...)
	}
	copy(f.ino.data[off:], p)
	return len(p), nil
}

func (f *crashFile) Write(p []byte) (int, error) {
	f.fs.mu.Lock()
	off := int64(len(f.ino.data))
	f.fs.mu.Unlock()
	return f.WriteAt(p, off)
}

func (f *crashFile) Sync() error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	f.ino.synced = append(f.ino.synced[:0:0], f.ino.data...)
	return nil
}

func (f *crashFile) Truncate(size int64) error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if size < int64(len(f.ino.data)) {
		f.ino.data = f.ino.data[:size]
	} else {
		f.ino.data = append(f.ino.data, make([]byte, size-int64(len(f.ino.data)))...)
	}
	return nil
}

func (f *crashFile) Size() (int64, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	return int64(len(f.ino.data)), nil
}

func (f *crashFile) Close() error { f.closed = true; return nil }
