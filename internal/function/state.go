package function

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/outpost-edge/outpost/internal/ota/tuf"
)

// ErrState is returned (wrapped) when a function's persistent state cannot
// be read or made durable; an invocation whose state did not reach the
// disk fails with it so its input is not acknowledged.
var ErrState = errors.New("function: state")

// State is a function's per-device key/value state, shared by the
// function's versions (a hot swap or a gray release keeps it). Each
// device's keys and values together are capped; a put over the cap is
// refused (and counted), never evicting.
//
// With a file (OpenState) the state survives restarts and kill -9: every
// put is appended to a log in memory, and an invocation that changed state
// writes and fsyncs the log (Commit) before it returns, i.e. before the
// input is acknowledged. Invocations committing at the same time share one
// fsync (group commit). The log is a sequence of records, each
// [u32 length][u32 crc32c][u16 device][u16 key][value], an empty value
// deleting the key; a torn or corrupt tail (a crash during a write) is cut
// off at the last whole record when the file is opened. When the log grows
// past 4 times the live state (and 1 MiB) it is rewritten from memory
// (temporary file, fsync, rename, directory fsync).
type State struct {
	mu    sync.Mutex
	limit int64
	devs  map[string]*devState
	bytes int64 // live bytes of all devices

	log *stateLog
}

type devState struct {
	bytes int64
	kv    map[string][]byte
}

type stateLog struct {
	path     string
	f        *os.File
	size     int64  // bytes in the file (written, maybe not synced)
	pending  []byte // appended under State.mu, not yet written
	appended uint64 // total bytes ever appended to pending (State.mu)

	syncMu  sync.Mutex // one writer+fsync at a time; guards the rest
	durable uint64     // the appended position that is on disk
	err     error      // a failed write/fsync: every later commit fails
}

// compactMin is the log size below which it is never rewritten.
var compactMin int64 = 1 << 20

// NewState returns an empty in-memory state capped at limit bytes per
// device.
func NewState(limit int64) *State { return &State{limit: limit, devs: map[string]*devState{}} }

// OpenState opens (or creates) the state file path and restores what it
// holds. A corrupt tail is cut off; a device over limit keeps its keys
// (limits apply to new puts).
func OpenState(path string, limit int64) (*State, error) {
	s := NewState(limit)
	raw, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s: %w", ErrState, path, err)
	}
	good := 0
	for good < len(raw) {
		dev, key, val, n, ok := decodeStateRec(raw[good:])
		if !ok {
			break
		}
		s.apply(dev, key, val, true)
		good += n
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrState, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrState, err)
	}
	if good < len(raw) {
		// Cut the torn tail so new records follow the last whole one.
		if err := f.Truncate(int64(good)); err != nil {
			f.Close()
			return nil, fmt.Errorf("%w: %s: truncate torn tail: %w", ErrState, path, err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return nil, fmt.Errorf("%w: %s: %w", ErrState, path, err)
		}
	}
	if _, err := f.Seek(int64(good), io.SeekStart); err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: %w", ErrState, err)
	}
	s.log = &stateLog{path: path, f: f, size: int64(good)}
	return s, nil
}

// Close closes the state file (memory state stays readable).
func (s *State) Close() error {
	if s.log == nil {
		return nil
	}
	s.log.syncMu.Lock()
	defer s.log.syncMu.Unlock()
	return s.log.f.Close()
}

// SetLimit changes the per-device cap (a new version's limits.state).
func (s *State) SetLimit(limit int64) {
	s.mu.Lock()
	s.limit = limit
	s.mu.Unlock()
}

// Get returns a copy-free view of the value; callers must not keep it.
func (s *State) Get(device, key string) ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.devs[device]
	if d == nil {
		return nil, false
	}
	v, ok := d.kv[key]
	return v, ok
}

// Put stores a copy of val (an empty val deletes the key); false when the
// device's state would exceed the limit (or the device id or key is
// longer than 65535 bytes). With a file, the change is in
// the log's memory buffer: it is durable after a Commit(mark) with the
// returned mark (0 when nothing is to be written).
func (s *State) Put(device, key string, val []byte) (ok bool, mark uint64) {
	if len(device) > 0xffff || len(key) > 0xffff {
		return false, 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.apply(device, key, val, false) {
		return false, 0
	}
	if s.log == nil {
		return true, 0
	}
	n := len(s.log.pending)
	s.log.pending = appendStateRec(s.log.pending, device, key, val)
	s.log.appended += uint64(len(s.log.pending) - n)
	return true, s.log.appended
}

// apply changes memory; force ignores the limit (restore).
func (s *State) apply(device, key string, val []byte, force bool) bool {
	d := s.devs[device]
	if d == nil {
		if len(val) == 0 {
			return true
		}
		d = &devState{kv: map[string][]byte{}}
		s.devs[device] = d
	}
	old, had := d.kv[key]
	delta := int64(len(val)) - int64(len(old))
	if !had {
		delta += int64(len(key))
	}
	if len(val) == 0 {
		if had {
			delete(d.kv, key)
			d.bytes -= int64(len(key) + len(old))
			s.bytes -= int64(len(key) + len(old))
		}
		if len(d.kv) == 0 {
			delete(s.devs, device)
		}
		return true
	}
	if !force && d.bytes+delta > s.limit {
		return false
	}
	d.kv[key] = append(old[:0:0], val...)
	d.bytes += delta
	s.bytes += delta
	return true
}

// Commit makes every put up to mark durable (write + fsync), sharing the
// fsync with concurrent commits. It returns at once without a file or
// when mark is already durable.
func (s *State) Commit(mark uint64) error {
	l := s.log
	if l == nil || mark == 0 {
		return nil
	}
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	if l.err != nil {
		return l.err
	}
	if l.durable >= mark {
		return nil // another commit wrote it
	}
	s.mu.Lock()
	buf := l.pending
	l.pending = nil
	end := l.appended
	s.mu.Unlock()
	if _, err := l.f.Write(buf); err != nil {
		l.err = fmt.Errorf("%w: %s: write: %w", ErrState, l.path, err)
		return l.err
	}
	if err := l.f.Sync(); err != nil {
		l.err = fmt.Errorf("%w: %s: fsync: %w", ErrState, l.path, err)
		return l.err
	}
	l.size += int64(len(buf))
	l.durable = end
	if l.size > compactMin && l.size > 4*s.liveBytes() {
		if err := s.compact(); err != nil {
			l.err = err
			return err
		}
	}
	return nil
}

func (s *State) liveBytes() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bytes + int64(8*len(s.devs))
}

// compact rewrites the log from memory; called with syncMu held. Puts wait
// (s.mu) so nothing appended meanwhile is lost: pending is written into
// the new file and the marks stay valid (durable = appended).
func (s *State) compact() error {
	l := s.log
	s.mu.Lock()
	defer s.mu.Unlock()
	var buf []byte
	devs := make([]string, 0, len(s.devs))
	for d := range s.devs {
		devs = append(devs, d)
	}
	sort.Strings(devs)
	for _, d := range devs {
		for k, v := range s.devs[d].kv {
			buf = appendStateRec(buf, d, k, v)
		}
	}
	if err := tuf.WriteFileAtomic(l.path, buf, 0o600); err != nil {
		return fmt.Errorf("%w: %s: compact: %w", ErrState, l.path, err)
	}
	f, err := os.OpenFile(l.path, os.O_RDWR, 0o600)
	if err == nil {
		_, err = f.Seek(0, io.SeekEnd)
	}
	if err != nil {
		return fmt.Errorf("%w: %s: reopen after compaction: %w", ErrState, l.path, err)
	}
	l.f.Close()
	l.f = f
	l.size = int64(len(buf))
	l.pending = nil
	l.durable = l.appended
	return nil
}

// Devices returns how many devices have state, and the bytes they hold.
func (s *State) Devices() (n int, bytes int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.devs), s.bytes
}

const stateRecMax = 64 << 20

func appendStateRec(dst []byte, dev, key string, val []byte) []byte {
	n := 4 + len(dev) + len(key) + len(val)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(n))
	at := len(dst)
	dst = append(dst, 0, 0, 0, 0)
	body := len(dst)
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(dev)))
	dst = append(dst, dev...)
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(key)))
	dst = append(dst, key...)
	dst = append(dst, val...)
	binary.LittleEndian.PutUint32(dst[at:], crc32.Checksum(dst[body:], castagnoli))
	return dst
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// decodeStateRec decodes the record at the start of b; ok is false for a
// short, oversized or corrupt record (the torn tail).
func decodeStateRec(b []byte) (dev, key string, val []byte, n int, ok bool) {
	if len(b) < 8 {
		return
	}
	size := int(binary.LittleEndian.Uint32(b))
	if size < 4 || size > stateRecMax || len(b)-8 < size {
		return
	}
	body := b[8 : 8+size]
	if crc32.Checksum(body, castagnoli) != binary.LittleEndian.Uint32(b[4:]) {
		return
	}
	dl := int(binary.LittleEndian.Uint16(body))
	if 2+dl+2 > len(body) {
		return
	}
	dev = string(body[2 : 2+dl])
	rest := body[2+dl:]
	kl := int(binary.LittleEndian.Uint16(rest))
	if 2+kl > len(rest) {
		return
	}
	key = string(rest[2 : 2+kl])
	return dev, key, rest[2+kl:], 8 + size, true
}
