package function

import "sync"

// State is a function's per-device key/value state, in memory, shared by
// the function's versions (a hot swap or a gray release keeps it). Each
// device's keys and values together are capped; a put over the cap is
// refused (and counted), never evicting.
type State struct {
	mu    sync.Mutex
	limit int64
	devs  map[string]*devState
}

type devState struct {
	bytes int64
	kv    map[string][]byte
}

// NewState returns an empty state capped at limit bytes per device.
func NewState(limit int64) *State { return &State{limit: limit, devs: map[string]*devState{}} }

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
// device's state would exceed the limit.
func (s *State) Put(device, key string, val []byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
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
		}
		if len(d.kv) == 0 {
			delete(s.devs, device)
		}
		return true
	}
	if d.bytes+delta > s.limit {
		return false
	}
	d.kv[key] = append(old[:0:0], val...)
	d.bytes += delta
	return true
}

// Devices returns how many devices have state, and the bytes they hold.
func (s *State) Devices() (n int, bytes int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range s.devs {
		bytes += d.bytes
	}
	return len(s.devs), bytes
}
