package rules

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// snapshotVersion is the format version of state snapshots.
const snapshotVersion = 1

type snapshot struct {
	Version int           `json:"version"`
	Saved   time.Time     `json:"saved"`
	Rules   []*savedState `json:"rules"`
}

type savedState struct {
	Name    string               `json:"name"`
	Version int                  `json:"version"`
	WinSig  string               `json:"win_sig"`
	DevSig  string               `json:"dev_sig"`
	Window  *windowState         `json:"window,omitempty"`
	Devices map[string]*devState `json:"devices,omitempty"`
}

// Snapshot writes the state of every stateful rule (open windows, per-device
// state) as JSON. Each rule's state is serialized under its locks, so
// Snapshot may run while messages flow (the state checkpoints do); the
// snapshot is then consistent per rule.
func (e *Engine) Snapshot(w io.Writer) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	// the same document as snapshot, with each rule's state kept as the
	// bytes marshalled under its locks (no decode and re-encode pass)
	snap := struct {
		Version int               `json:"version"`
		Saved   time.Time         `json:"saved"`
		Rules   []json.RawMessage `json:"rules"`
	}{Version: snapshotVersion, Saved: e.now().UTC()}
	for _, r := range e.cur.Load().rules {
		if r.state == nil {
			continue
		}
		s := &savedState{Name: r.Name, Version: r.Version, WinSig: r.winSig, DevSig: r.devSig, Window: r.state.win}
		// under the locks (devices, then windows: the message path's
		// order; Window.MarshalJSON locks its shards): the state must not move
		if d := r.state.dev; d != nil {
			d.lockAll()
			if m := d.all(); len(m) > 0 {
				s.Devices = m
			}
		}
		b, err := json.Marshal(s)
		if d := r.state.dev; d != nil {
			d.unlockAll()
		}
		if err != nil {
			return fmt.Errorf("rules: snapshot %s: %w", r.Name, err)
		}
		snap.Rules = append(snap.Rules, b)
	}
	enc := json.NewEncoder(w)
	if err := enc.Encode(&snap); err != nil {
		return fmt.Errorf("rules: snapshot: %w", err)
	}
	return nil
}

// Restore reads a snapshot. The saved state is attached to rules as they
// are applied (same name, version and state layout); the rest is ignored.
// Call it before the first Apply.
func (e *Engine) Restore(rd io.Reader) error {
	var snap snapshot
	if err := json.NewDecoder(rd).Decode(&snap); err != nil {
		return fmt.Errorf("rules: restore: %w", err)
	}
	if snap.Version != snapshotVersion {
		return fmt.Errorf("rules: restore: unknown snapshot version %d", snap.Version)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, s := range snap.Rules {
		if s == nil {
			continue
		}
		e.restored[fmt.Sprintf("%s@%d", s.Name, s.Version)] = s
	}
	return nil
}

func (e *Engine) restoredState(r *Rule) *ruleState {
	s := e.restored[ruleID(r)]
	if s == nil {
		return nil
	}
	delete(e.restored, ruleID(r))
	st := newState(r)
	if s.WinSig == r.winSig && r.win != nil && s.Window != nil && s.Window.fits(r) {
		st.win = s.Window
	}
	if s.DevSig == r.devSig && r.slots > 0 {
		for id, d := range s.Devices {
			if d != nil && len(d.Slots) == r.slots {
				st.dev.put(id, d)
			}
		}
	}
	return st
}

// SaveState writes a snapshot to dir/rules-state.json atomically (temp
// file, fsync, rename, fsync dir).
func (e *Engine) SaveState(dir string) error {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("rules: state dir: %w", err)
	}
	f, err := os.CreateTemp(dir, ".rules-state-*.tmp")
	if err != nil {
		return fmt.Errorf("rules: state: %w", err)
	}
	defer os.Remove(f.Name())
	if err := e.Snapshot(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("rules: state: fsync: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("rules: state: %w", err)
	}
	final := filepath.Join(dir, "rules-state.json")
	if err := os.Rename(f.Name(), final); err != nil {
		return fmt.Errorf("rules: state: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// LoadState restores dir/rules-state.json if it exists.
func (e *Engine) LoadState(dir string) error {
	f, err := os.Open(filepath.Join(dir, "rules-state.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("rules: state: %w", err)
	}
	defer f.Close()
	return e.Restore(f)
}
