package ota

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"time"

	"github.com/outpost-edge/outpost/internal/ota/tuf"
)

// Phase is where an update stands. Every transition is recorded in the
// state file before the step it announces, so a restart at any point
// resumes or rolls back deterministically (see Boot).
type Phase string

const (
	// PhaseIdle: nothing in progress; the running binary is committed.
	PhaseIdle Phase = "idle"
	// PhaseDownloading: Target is being downloaded or staged; a restart
	// resumes the download (Range) and rebuilds the staged binary.
	PhaseDownloading Phase = "downloading"
	// PhaseInstalling: the staged binary is being swapped in. On restart
	// the binary's hash says which side of the rename we are on.
	PhaseInstalling Phase = "installing"
	// PhaseTrial: the new binary is installed and not yet committed; each
	// start counts an attempt; ready + stability window commits it.
	PhaseTrial Phase = "trial"
	// PhaseRollingBack: the previous binary is being restored; a restart
	// restores it again (idempotent).
	PhaseRollingBack Phase = "rolling_back"
)

// State is the content of the state file.
type State struct {
	Phase Phase `json:"phase"`
	// Update in progress (empty when idle).
	Target *Pending `json:"target,omitempty"`
	// Attempts counts starts of the trial version.
	Attempts int `json:"attempts,omitempty"`
	// PrestartCounted: the service manager's pre-start hook (Prestart, run
	// from the previous binary) already counted this start's attempt.
	PrestartCounted bool `json:"prestart_counted,omitempty"`
	// CleanStop: the last start of the trial version ended with a
	// graceful stop asked from outside (SIGTERM, SIGINT: an operator's
	// restart) before its gate decided. The next start is not counted as
	// an attempt (see Trial.Stopped).
	CleanStop bool `json:"clean_stop,omitempty"`
	// Reason for a rollback in progress.
	Reason string `json:"reason,omitempty"`
	// Bad lists versions that failed their health gate and are never
	// installed automatically again.
	Bad []string `json:"bad,omitempty"`
	// NoDelta lists versions whose delta produced a wrong result; they are
	// fetched in full.
	NoDelta []string `json:"no_delta,omitempty"`
	// Last is the outcome of the last finished update.
	Last *Outcome `json:"last,omitempty"`
}

// Pending describes the update in progress.
type Pending struct {
	Version     string `json:"version"`
	FromVersion string `json:"from_version"`
	FromSHA256  string `json:"from_sha256"`
	SHA256      string `json:"sha256"` // of the new binary
	Size        int64  `json:"size"`
	// Target is the repository target being downloaded, and its kind.
	Target string         `json:"target"`
	Kind   string         `json:"kind"` // "full" or "delta"
	File   tuf.TargetFile `json:"file"`
}

// Outcome is the result of a finished update.
type Outcome struct {
	Version string    `json:"version"`
	From    string    `json:"from,omitempty"`
	Result  string    `json:"result"` // "committed", "rolled_back", "failed"
	Reason  string    `json:"reason,omitempty"`
	Time    time.Time `json:"time"`
}

// ErrBadState is returned when the state file cannot be parsed or is
// inconsistent. Boot treats it like an idle state after keeping a copy.
var ErrBadState = errors.New("ota: bad state file")

var hexSHA256 = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[0-9a-f]{64}$`) })

// ParseState decodes and validates a state file.
func ParseState(data []byte) (*State, error) {
	var s State
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadState, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data", ErrBadState)
	}
	switch s.Phase {
	case PhaseIdle, "":
		s.Phase = PhaseIdle
	case PhaseDownloading, PhaseInstalling, PhaseTrial, PhaseRollingBack:
		if s.Target == nil {
			return nil, fmt.Errorf("%w: phase %s without target", ErrBadState, s.Phase)
		}
	default:
		return nil, fmt.Errorf("%w: unknown phase %q", ErrBadState, s.Phase)
	}
	if t := s.Target; t != nil {
		if !hexSHA256().MatchString(t.SHA256) {
			return nil, fmt.Errorf("%w: target.sha256 %q", ErrBadState, t.SHA256)
		}
		if t.FromSHA256 != "" && !hexSHA256().MatchString(t.FromSHA256) {
			return nil, fmt.Errorf("%w: target.from_sha256 %q", ErrBadState, t.FromSHA256)
		}
		if t.Size < 0 || t.File.Length < 0 {
			return nil, fmt.Errorf("%w: negative size", ErrBadState)
		}
		if t.Kind != "full" && t.Kind != "delta" {
			return nil, fmt.Errorf("%w: target.kind %q", ErrBadState, t.Kind)
		}
	}
	if s.Attempts < 0 {
		return nil, fmt.Errorf("%w: attempts %d", ErrBadState, s.Attempts)
	}
	return &s, nil
}

// LoadState reads the state file; a missing file is the idle state.
func LoadState(path string) (*State, error) {
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return &State{Phase: PhaseIdle}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ota: read state %s: %w", path, err)
	}
	s, err := ParseState(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// SaveState writes the state file atomically (temp file, fsync, rename,
// fsync directory).
func SaveState(path string, s *State) error {
	raw, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := tuf.WriteFileAtomic(path, append(raw, '\n'), 0o644); err != nil {
		return fmt.Errorf("ota: save state %s: %w", path, err)
	}
	return nil
}

func (s *State) isBad(version string) bool {
	for _, b := range s.Bad {
		if b == version {
			return true
		}
	}
	return false
}

// forgetBad removes versions (all when all is true) from the bad list and
// returns those removed, in list order.
func (s *State) forgetBad(versions []string, all bool) []string {
	var removed, kept []string
	for _, b := range s.Bad {
		if all || slices.Contains(versions, b) {
			removed = append(removed, b)
		} else {
			kept = append(kept, b)
		}
	}
	s.Bad = kept
	return removed
}

func (s *State) noDelta(version string) bool {
	for _, b := range s.NoDelta {
		if b == version {
			return true
		}
	}
	return false
}

// The highest TUF metadata versions this gateway has trusted are kept in
// seen-versions.json next to the state file (not in the metadata cache,
// which an operator may wipe to recover from a bad mirror), and passed to
// the TUF client as its rollback floor. They are not in state.json because
// older binaries parse that file strictly and the previous binary reads it
// (pre-start hook, trial watchdog).
func (e *engine) seenPath() string {
	return filepath.Join(filepath.Dir(e.cfg.StateFile), "seen-versions.json")
}

// loadSeen returns the saved floor; an unreadable file is logged and
// ignored (the metadata cache still protects).
func (e *engine) loadSeen() map[string]int64 {
	raw, err := os.ReadFile(e.seenPath())
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			e.log.Warn("seen versions unreadable", "err", err, "file", e.seenPath())
		}
		return nil
	}
	var m map[string]int64
	if err := json.Unmarshal(raw, &m); err != nil {
		e.log.Warn("seen versions unreadable", "err", err, "file", e.seenPath())
		return nil
	}
	return m
}

// saveSeen saves the floor after a refresh: floor as the client left it
// (entries a key rotation removed are gone) raised to the versions just
// trusted. It writes only when that differs from the file.
func (e *engine) saveSeen(floor, now map[string]int64) {
	out := maps.Clone(floor)
	if out == nil {
		out = map[string]int64{}
	}
	for k, v := range now {
		if v > out[k] {
			out[k] = v
		}
	}
	if maps.Equal(out, e.loadSeen()) {
		return
	}
	raw, _ := json.MarshalIndent(out, "", "  ")
	err := os.MkdirAll(filepath.Dir(e.seenPath()), 0o755)
	if err == nil {
		err = tuf.WriteFileAtomic(e.seenPath(), append(raw, '\n'), 0o644)
	}
	if err != nil {
		e.log.Warn("cannot save seen versions", "err", err, "file", e.seenPath())
	}
}
