package rules

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/outpost-edge/outpost/internal/fswatch"
	"github.com/outpost-edge/outpost/internal/rules/parser"
)

// Store keeps the rule files and applies them to an Engine: a directory of
// *.sql files watched (internal/fswatch), or (without a directory) files set
// through the HTTP API and kept in memory.
//
// A reload compiles only files whose content changed. A rule that fails to
// compile is rejected alone: the file's other rules are applied and the
// previously running version of the failing rule keeps running (when the
// error cannot be tied to a rule name, all of the file's previous rules
// stay). Rejections are visible in Status, the HTTP API, the log and
// outpost_rules_rejected_files.
type Store struct {
	eng      *Engine
	dir      string
	log      *slog.Logger
	debounce time.Duration

	mu    sync.Mutex
	files map[string]*storeFile // by file name (base name)
	mem   map[string]string     // in-memory sources (no dir)

	watcher *fswatch.Watcher
	// OnReload, if set, is called after each reload triggered by the
	// watcher.
	OnReload func(ReloadInfo)
}

// ReloadInfo describes one watcher-triggered reload.
type ReloadInfo struct {
	SinceFirstEvent time.Duration // first file event of the burst to the switch
	SinceLastEvent  time.Duration // last file event (end of the burst) to the switch
	Took            time.Duration // read, compile and apply
	Err             error
}

type storeFile struct {
	name    string
	hash    [32]byte
	rules   []*Rule // active rules from this file
	source  string  // last accepted source
	err     error   // errors of the latest content (nil when it applied fully)
	badHash [32]byte
}

// ErrNotFound is returned for a rule name that is not loaded.
var ErrNotFound = errors.New("rules: rule not found")

// ErrConflict is returned when a change would define a rule version twice
// or delete a file holding other rules.
var ErrConflict = errors.New("rules: conflict")

// NewStore returns a store for eng. dir "" keeps rules in memory only.
func NewStore(eng *Engine, dir string, debounce time.Duration, log *slog.Logger) *Store {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if debounce <= 0 {
		debounce = 20 * time.Millisecond
	}
	return &Store{eng: eng, dir: dir, log: log.With("module", "rules"), debounce: debounce,
		files: map[string]*storeFile{}, mem: map[string]string{}}
}

// Dir returns the watched directory ("" for in-memory).
func (s *Store) Dir() string { return s.dir }

func (s *Store) readSources() (map[string]string, error) {
	if s.dir == "" {
		out := make(map[string]string, len(s.mem))
		for k, v := range s.mem {
			out[k] = v
		}
		return out, nil
	}
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("rules: read dir %s: %w", s.dir, err)
	}
	out := map[string]string{}
	for _, de := range ents {
		n := de.Name()
		if !isRuleFile(n) || de.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(s.dir, n))
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // renamed away between ReadDir and ReadFile
			}
			return nil, fmt.Errorf("rules: read %s: %w", n, err)
		}
		out[n] = string(b)
	}
	return out, nil
}

func isRuleFile(n string) bool {
	return strings.HasSuffix(n, ".sql") && !strings.HasPrefix(n, ".")
}

// Reload reads every rule file, compiles what changed and applies the
// result. It returns the compile errors of this reload (the rules that
// compiled are applied regardless).
func (s *Store) Reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reloadLocked()
}

func (s *Store) reloadLocked() error {
	srcs, err := s.readSources()
	if err != nil {
		return err
	}
	var errs []error
	changed := false
	names := make([]string, 0, len(srcs))
	for n := range srcs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		src := srcs[n]
		h := sha256.Sum256([]byte(src))
		f := s.files[n]
		if f == nil {
			f = &storeFile{name: n}
			s.files[n] = f
		}
		if f.hash == h && f.err == nil || f.err != nil && f.badHash == h {
			if f.err != nil {
				errs = append(errs, f.err)
			}
			continue
		}
		changed = true
		rules, cerr := s.eng.Compile(n, src)
		if cerr == nil {
			rules, cerr = s.checkConflicts(n, rules)
		}
		if cerr == nil {
			f.hash, f.source, f.rules, f.err = h, src, rules, nil
			s.log.Info("rule file loaded", "file", n, "rules", len(rules))
			continue
		}
		// partial: apply what compiled, keep the old version of what failed
		keep := keptRules(f.rules, rules, cerr)
		f.rules = append(rules, keep...)
		f.err, f.badHash = cerr, h
		errs = append(errs, cerr)
		s.log.Warn("rule file rejected", "file", n, "err", cerr)
	}
	for n, f := range s.files {
		if _, ok := srcs[n]; !ok {
			delete(s.files, n)
			changed = true
			s.log.Info("rule file removed", "file", n, "rules", len(f.rules))
		}
	}
	if changed {
		s.apply()
	}
	return errors.Join(errs...)
}

// Recompile compiles every file again, also those whose content did not
// change (after the engine's configured selectors changed), and applies
// the result. Rules keep their names and versions, so their state carries
// over.
func (s *Store) Recompile() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range s.files {
		f.hash, f.badHash = [32]byte{}, [32]byte{}
	}
	return s.reloadLocked()
}

// memSources returns a copy of the in-memory sources (no directory).
func (s *Store) memSources() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]string, len(s.mem))
	for k, v := range s.mem {
		out[k] = v
	}
	return out
}

// CheckFiles validates rule files exactly as the gateway loads them from
// its rules directory, through the same Store: files in name order, each
// compiled (syntax, functions, targets per opts.Env, selectors per
// opts.Selectors), then checked against the files loaded before it (a rule
// name and version defined in two files; a rule closing a REPUBLISH → FROM
// cycle). srcs maps a file name (as it should appear in errors) to its
// source. It returns the rules the gateway would run and every error (a
// parser.ErrorList), so `outpost rules check` rejects exactly what the
// agent rejects.
func CheckFiles(srcs map[string]string, opts CompileOptions) ([]*Rule, error) {
	e := New(Options{Env: opts.Env, Webhook: opts.Webhook, Selectors: opts.Selectors, Partitions: 1})
	s := NewStore(e, "", 0, nil)
	for name, src := range srcs {
		s.mem[name] = src
	}
	err := flattenErrors(s.Reload())
	return e.Rules(), err
}

// flattenErrors merges the per-file error lists a reload joins into one
// parser.ErrorList (in file order); any other error is returned as is.
func flattenErrors(err error) error {
	var el parser.ErrorList
	var walk func(error) bool
	walk = func(err error) bool {
		switch x := err.(type) {
		case parser.ErrorList:
			el = append(el, x...)
			return true
		case interface{ Unwrap() []error }:
			for _, e := range x.Unwrap() {
				if !walk(e) {
					return false
				}
			}
			return true
		}
		return false
	}
	if err == nil || !walk(err) {
		return err
	}
	return el.Err()
}

// keptRules returns the old rules that stay because their new version
// failed to compile.
func keptRules(old, fresh []*Rule, err error) []*Rule {
	var el parser.ErrorList
	failed := map[string]bool{}
	anon := false
	if errors.As(err, &el) {
		for _, e := range el {
			if e.Rule == "" {
				anon = true
			}
			failed[e.Rule] = true
		}
	} else {
		anon = true
	}
	freshNames := map[string]bool{}
	for _, r := range fresh {
		freshNames[ruleID(r)] = true
	}
	var keep []*Rule
	for _, o := range old {
		if freshNames[ruleID(o)] {
			continue
		}
		if failed[o.Name] || anon {
			keep = append(keep, o)
		}
	}
	return keep
}

// checkConflicts rejects rule versions already defined by another file.
func (s *Store) checkConflicts(file string, rules []*Rule) ([]*Rule, error) {
	owner := map[string]string{}
	for n, f := range s.files {
		if n == file {
			continue
		}
		for _, r := range f.rules {
			owner[ruleID(r)] = n
		}
	}
	var el parser.ErrorList
	var ok []*Rule
	for _, r := range rules {
		if o, dup := owner[ruleID(r)]; dup {
			el = append(el, &parser.Error{File: file, Pos: r.ast.P, Rule: r.Name,
				Msg: fmt.Sprintf("version %d is already defined in %s", r.Version, o)})
			continue
		}
		ok = append(ok, r)
	}
	// a rule that closes a REPUBLISH → FROM cycle with the loaded rules
	var others []*Rule
	for n, f := range s.files {
		if n != file {
			others = append(others, f.rules...)
		}
	}
	if bad, cyc := findCycles(file, ok, others); len(bad) > 0 {
		kept := ok[:0]
		for _, r := range ok {
			if !slices.Contains(bad, r) {
				kept = append(kept, r)
			}
		}
		ok = kept
		el = append(el, cyc...)
	}
	return ok, el.Err()
}

func (s *Store) apply() {
	var all []*Rule
	for _, f := range s.files {
		all = append(all, f.rules...)
	}
	s.eng.Apply(all)
}

// FileStatus describes one rule file.
type FileStatus struct {
	File   string   `json:"file"`
	Rules  []string `json:"rules"` // name@version active from this file
	Errors []string `json:"errors,omitempty"`
}

// Status lists every file with its active rules and latest errors.
func (s *Store) Status() []FileStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []FileStatus
	for _, f := range s.files {
		fs := FileStatus{File: f.name, Rules: []string{}}
		for _, r := range f.rules {
			fs.Rules = append(fs.Rules, ruleID(r))
		}
		sort.Strings(fs.Rules)
		fs.Errors = errorLines(f.err)
		out = append(out, fs)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].File < out[j].File })
	return out
}

func errorLines(err error) []string {
	if err == nil {
		return nil
	}
	var el parser.ErrorList
	if errors.As(err, &el) {
		out := make([]string, len(el))
		for i, e := range el {
			out[i] = e.Error()
		}
		return out
	}
	return []string{err.Error()}
}

// Rejected returns the number of files whose latest content had errors.
func (s *Store) Rejected() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, f := range s.files {
		if f.err != nil {
			n++
		}
	}
	return n
}

// Source returns the source of the file defining rule name.
func (s *Store) Source(name string) (file, src string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f := s.fileOf(name); f != nil {
		return f.name, f.source, nil
	}
	return "", "", fmt.Errorf("%w: %s", ErrNotFound, name)
}

func (s *Store) fileOf(name string) *storeFile {
	if f := s.files[name+".sql"]; f != nil {
		return f
	}
	for _, f := range s.files {
		for _, r := range f.rules {
			if r.Name == name {
				return f
			}
		}
	}
	return nil
}

// Put validates src (every statement must be named name), then writes it as
// NAME.sql (atomically: temp file, fsync, rename) or keeps it in memory, and
// reloads. Compile errors return a parser.ErrorList and change nothing.
func (s *Store) Put(name, src string) ([]*Rule, error) {
	if !validRuleName(name) {
		return nil, fmt.Errorf("rules: invalid rule name %q", name)
	}
	file := name + ".sql"
	rules, err := s.eng.Compile(file, src)
	if err != nil {
		return nil, err
	}
	if len(rules) == 0 {
		return nil, parser.ErrorList{{File: file, Pos: parser.Pos{Line: 1, Col: 1}, Msg: "no CREATE RULE statement"}}
	}
	for _, r := range rules {
		if r.Name != name {
			return nil, parser.ErrorList{{File: file, Pos: r.ast.P, Rule: r.Name, Msg: fmt.Sprintf("the rule must be named %s (the URL's name)", name)}}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if f := s.fileOf(name); f != nil && f.name != file {
		return nil, fmt.Errorf("%w: rule %s is defined in %s; edit that file", ErrConflict, name, f.name)
	}
	if _, err := s.checkConflicts(file, rules); err != nil {
		return nil, err
	}
	if s.dir == "" {
		s.mem[file] = src
	} else if err := writeAtomic(filepath.Join(s.dir, file), []byte(src)); err != nil {
		return nil, err
	}
	if err := s.reloadLocked(); err != nil {
		if f := s.files[file]; f != nil && f.err != nil {
			return nil, f.err
		}
	}
	return s.files[file].rules, nil
}

// Delete removes the file defining rule name.
func (s *Store) Delete(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.fileOf(name)
	if f == nil {
		return fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	for _, r := range f.rules {
		if r.Name != name {
			return fmt.Errorf("%w: %s also defines rule %s; edit the file", ErrConflict, f.name, r.Name)
		}
	}
	if s.dir == "" {
		delete(s.mem, f.name)
	} else if err := os.Remove(filepath.Join(s.dir, f.name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("rules: delete %s: %w", f.name, err)
	}
	s.reloadLocked()
	return nil
}

func validRuleName(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || c == '-' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

func writeAtomic(path string, b []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".rule-*.tmp")
	if err != nil {
		return fmt.Errorf("rules: write %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("rules: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("rules: fsync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("rules: write %s: %w", path, err)
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		return fmt.Errorf("rules: write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("rules: write %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// Watch starts watching the directory (no-op without one). Events are
// debounced; editors that save by renaming a temp file over the original
// are handled because the whole directory is rescanned. An overflow of the
// kernel's event queue (events lost) is a change too.
func (s *Store) Watch() error {
	if s.dir == "" {
		return nil
	}
	w, err := fswatch.New(fswatch.Options{
		Debounce: s.debounce,
		Filter:   func(_ *fswatch.Watcher, ev fswatch.Event) bool { return isRuleFile(ev.Name) },
		OnChange: func(first, last time.Time) {
			t0 := time.Now()
			err := s.Reload()
			if s.OnReload != nil {
				s.OnReload(ReloadInfo{SinceFirstEvent: time.Since(first), SinceLastEvent: time.Since(last), Took: time.Since(t0), Err: err})
			}
		},
	}, s.dir)
	if err != nil {
		return fmt.Errorf("rules: watch %s: %w", s.dir, err)
	}
	s.watcher = w
	return nil
}

// Close stops watching.
func (s *Store) Close() error {
	if s.watcher == nil {
		return nil
	}
	err := s.watcher.Close()
	s.watcher = nil
	return err
}
