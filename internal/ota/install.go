package ota

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/klauspost/compress/zstd"
	backoffpkg "github.com/outpost-edge/outpost/internal/backoff"
	"github.com/outpost-edge/outpost/internal/ota/delta"
	"github.com/outpost-edge/outpost/internal/ota/tuf"
)

// Errors an update can end with. Each is distinct so that logs, metrics and
// the CLI say which defence fired.
var (
	// ErrTargetHash is returned when a downloaded target's length or
	// hash differs from targets.json. The file is discarded.
	ErrTargetHash = errors.New("ota: downloaded target does not match its signed hash")
	// ErrWrongTarget is returned when the server sent another signed
	// target (for instance another platform's binary) instead of the one
	// requested.
	ErrWrongTarget = errors.New("ota: server sent a different target than requested")
	// ErrDeltaResult is returned when applying a delta does not produce
	// the binary whose hash targets.json lists. Nothing is installed and
	// the next attempt downloads the full binary.
	ErrDeltaResult = errors.New("ota: delta result does not match the signed binary hash")
	// ErrFullResult is returned when a decompressed full target does not
	// match the signed binary hash.
	ErrFullResult = errors.New("ota: decompressed binary does not match the signed binary hash")
	// ErrRunningBinary is returned when the running binary's hash is not
	// what a delta expects (the delta is then not used).
	ErrRunningBinary = errors.New("ota: running binary hash differs from the delta's base")
	// ErrBusy is returned when an update is already in progress.
	ErrBusy = errors.New("ota: an update is already in progress")
	// ErrNoUpdate is returned by Apply when nothing newer is available.
	ErrNoUpdate = errors.New("ota: no newer version available")
	// ErrTrial is returned by Apply while the running version is on trial
	// (not yet committed).
	ErrTrial = errors.New("ota: running version not yet committed")
	// ErrBadTarget is returned by Check and Apply when the newest signed
	// target for this platform cannot be used: a hash, length or custom
	// field is missing or malformed. It is refused before any state is
	// written (and logged); a valid older target may still be offered.
	ErrBadTarget = errors.New("ota: signed target metadata is unusable")
	// ErrPanic is returned when the updater panicked; the update in
	// progress is marked bad and the agent keeps running.
	ErrPanic = errors.New("ota: updater panicked")
	// ErrDisabled is returned by Check and Apply when ota.enabled is false.
	ErrDisabled = errors.New("ota: updater disabled (ota.enabled: false)")
)

// ExitRestart is the exit code with which the agent asks its service
// manager to start it again (EX_TEMPFAIL). The example systemd unit restarts
// on any exit (Restart=always).
const ExitRestart = 75

// engine holds the paths and steps shared by Boot and the Updater.
type engine struct {
	cfg     Config
	log     *slog.Logger
	bin     string // installed binary
	prev    string // previous binary, kept after install
	newPath string // staged binary, next to bin
	dlDir   string
	metaDir string

	mu sync.Mutex // serialises state transitions
}

func newEngine(cfg Config, log *slog.Logger) (*engine, error) {
	cfg.SetDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	bin := cfg.Binary
	if bin == "" && isWatchdog() {
		bin = watchdogBin // the watchdog runs from <binary>.prev
	}
	if bin == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("ota: locate running binary: %w", err)
		}
		bin = exe
	}
	if r, err := filepath.EvalSymlinks(bin); err == nil {
		bin = r
	}
	bin, _ = filepath.Abs(bin)
	dir, base := filepath.Split(bin)
	e := &engine{
		cfg: cfg, log: log.With("module", "ota"), bin: bin,
		prev:    bin + ".prev",
		newPath: filepath.Join(dir, "."+base+".new"),
		dlDir:   filepath.Join(cfg.StagingDir, "downloads"),
		metaDir: filepath.Join(cfg.StagingDir, "metadata"),
	}
	return e, nil
}

// failpoint kills the process at a named step when OUTPOST_OTA_FAILPOINT
// names it: the crash tests' power cut. It costs a string compare.
var failpointName = os.Getenv("OUTPOST_OTA_FAILPOINT")

// panicHook, set only by tests (export_test.go), panics at a named step:
// the updater bug that recovery must contain.
var panicHook func(step string)

func failpoint(name string) {
	if failpointName != "" && failpointName == name {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
}

func (e *engine) loadState() *State {
	st, err := LoadState(e.cfg.StateFile)
	if err != nil {
		// An unreadable state must not stop the agent: keep a copy for
		// diagnosis and start from idle with the binary in place.
		e.log.Error("state file unreadable; starting idle", "err", err, "file", e.cfg.StateFile)
		os.Rename(e.cfg.StateFile, e.cfg.StateFile+".bad")
		return &State{Phase: PhaseIdle}
	}
	if st.Phase == PhaseDownloading {
		// A download recorded by an older version from a target it did
		// not validate (no sha256: it panicked at every start): drop it.
		if _, err := ValidateTarget(st.Target.Target, st.Target.File); err != nil {
			e.abandon(st, err.Error())
		}
	}
	return st
}

func (e *engine) saveState(st *State) error {
	if err := os.MkdirAll(filepath.Dir(e.cfg.StateFile), 0o755); err != nil {
		return fmt.Errorf("ota: %w", err)
	}
	return SaveState(e.cfg.StateFile, st)
}

func (e *engine) partPath(p *Pending) string {
	id := p.File.Hashes["sha256"]
	if !hexSHA256().MatchString(id) {
		// Never reached with validated targets; no panic if it is.
		id = "nosha256"
	}
	return filepath.Join(e.dlDir, safeName(p.Target)+"."+id[:min(16, len(id))]+".part")
}

// abandon drops the download in progress as unusable: the version is
// marked bad (never installed automatically again; `update forget-bad`
// clears it) and the outcome recorded. Hold e.mu.
func (e *engine) abandon(st *State, reason string) {
	p := st.Target
	e.log.Error("update abandoned; version marked bad", "version", p.Version, "reason", reason)
	os.Remove(e.partPath(p))
	if !st.isBad(p.Version) {
		st.Bad = append(st.Bad, p.Version)
	}
	st.Last = &Outcome{Version: p.Version, From: p.FromVersion, Result: "failed", Reason: reason, Time: time.Now().UTC()}
	st.Phase, st.Target, st.Attempts, st.Reason = PhaseIdle, nil, 0, ""
	if err := e.saveState(st); err != nil {
		e.log.Error("state", "err", err)
	}
}

// stage downloads p's target (resuming), verifies it and builds the new
// binary at newPath, verified against the signed binary hash and fsynced.
func (e *engine) stage(ctx context.Context, f *fetcher, targetPath string, p *Pending, targets *tuf.Targets, progress func(Progress)) error {
	if err := os.MkdirAll(e.dlDir, 0o755); err != nil {
		return fmt.Errorf("ota: %w", err)
	}
	if panicHook != nil {
		panicHook("stage")
	}
	part := e.partPath(p)
	var err error
	// Retries count failures that made no progress; an attempt that moved
	// bytes resets the backoff (a link that drops often still finishes).
	for try, fails := 0, 0; fails <= e.cfg.Timeouts.Retries; try++ {
		if try > 0 {
			e.log.Warn("download interrupted; resuming", "target", p.Target, "err", err, "failures", fails)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(backoff(fails)):
			}
		}
		before := fileSize(part)
		err = f.download(ctx, targetPath, part, p.File.Length, progress)
		if err == nil || errors.Is(err, ErrEndlessData) || ctx.Err() != nil {
			break
		}
		if fileSize(part) > before && !errors.Is(err, ErrSlowRetrieval) {
			fails = 0
		} else {
			fails++
		}
		if try > 10000 {
			break
		}
	}
	if err != nil {
		return err
	}
	failpoint("after-download")
	if err := checkFileHashes(part, p.File); err != nil {
		// Did the server swap in another signed target?
		sum, _, herr := fileSHA256(part)
		os.Remove(part)
		if herr == nil {
			for name, tf := range targets.Targets {
				if name != p.Target && tf.Hashes["sha256"] == sum {
					return fmt.Errorf("%w: asked for %s, got %s", ErrWrongTarget, p.Target, name)
				}
			}
		}
		return fmt.Errorf("%w: %s: %v", ErrTargetHash, p.Target, err)
	}
	return e.build(part, p)
}

// backoff is 100ms after an attempt that made progress, then doubles from
// 500ms up to 30s.
func backoff(fails int) time.Duration {
	if fails == 0 {
		return 100 * time.Millisecond
	}
	return retryBackoff.Delay(fails-1, 0.5)
}

// retryBackoff: 500 ms doubling up to 30 s, no jitter.
var retryBackoff = backoffpkg.Policy{Initial: 500 * time.Millisecond, Max: 30 * time.Second, Multiplier: 2}

func fileSize(p string) int64 {
	st, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return st.Size()
}

// checkFileHashes verifies a file against a target's length and hashes.
func checkFileHashes(path string, tf tuf.TargetFile) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	hs := map[string]hash.Hash{}
	var ws []io.Writer
	for alg := range tf.Hashes {
		switch alg {
		case "sha256":
			hs[alg] = sha256.New()
		case "sha512":
			hs[alg] = sha512.New()
		default:
			continue
		}
		ws = append(ws, hs[alg])
	}
	if len(hs) == 0 {
		return fmt.Errorf("no supported hash")
	}
	n, err := io.Copy(io.MultiWriter(ws...), f)
	if err != nil {
		return err
	}
	if n != tf.Length {
		return fmt.Errorf("length %d, signed %d", n, tf.Length)
	}
	for alg, h := range hs {
		if got := hex.EncodeToString(h.Sum(nil)); got != tf.Hashes[alg] {
			return fmt.Errorf("%s %s, signed %s", alg, got, tf.Hashes[alg])
		}
	}
	return nil
}

// build writes the new binary to newPath from a verified download: by
// decompressing a full target or patching the installed binary.
func (e *engine) build(part string, p *Pending) error {
	out, err := os.OpenFile(e.newPath, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		return fmt.Errorf("ota: stage: %w", err)
	}
	ok := false
	defer func() {
		out.Close()
		if !ok {
			os.Remove(e.newPath)
		}
	}()
	in, err := os.Open(part)
	if err != nil {
		return fmt.Errorf("ota: stage: %w", err)
	}
	defer in.Close()
	h := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(out, h), 256<<10)
	switch p.Kind {
	case "delta":
		old, err := os.Open(e.bin)
		if err != nil {
			return fmt.Errorf("ota: stage: %w", err)
		}
		defer old.Close()
		ost, err := old.Stat()
		if err != nil {
			return fmt.Errorf("ota: stage: %w", err)
		}
		if err := delta.Patch(old, ost.Size(), in, p.File.Length, bw); err != nil {
			return fmt.Errorf("%w: %v", ErrDeltaResult, err)
		}
	default:
		dec, err := zstd.NewReader(in, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(64<<20), zstd.WithDecoderLowmem(true))
		if err != nil {
			return fmt.Errorf("%w: %v", ErrFullResult, err)
		}
		defer dec.Close()
		// Bounded by the signed size: a decompression bomb stops here.
		n, err := io.Copy(bw, io.LimitReader(dec, p.Size+1))
		if err != nil {
			return fmt.Errorf("%w: %v", ErrFullResult, err)
		}
		if n > p.Size {
			return fmt.Errorf("%w: more than %d bytes", ErrFullResult, p.Size)
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("ota: stage: %w", err)
	}
	failpoint("staging")
	st, err := out.Stat()
	if err != nil {
		return fmt.Errorf("ota: stage: %w", err)
	}
	if sum := hex.EncodeToString(h.Sum(nil)); sum != p.SHA256 || st.Size() != p.Size {
		bad := ErrFullResult
		if p.Kind == "delta" {
			bad = ErrDeltaResult
		}
		return fmt.Errorf("%w: %s: got sha256 %s (%d bytes), signed %s (%d bytes)", bad, p.Target, sum, st.Size(), p.SHA256, p.Size)
	}
	if err := out.Sync(); err != nil {
		return fmt.Errorf("ota: stage: fsync: %w", err)
	}
	ok = true
	return nil
}

// install swaps the staged binary in: state installing → keep the current
// binary as .prev (hard link, atomic rename) → rename the staged binary over
// the installed one → fsync the directory → state trial.
func (e *engine) install(st *State) error {
	st.Phase = PhaseInstalling
	if err := e.saveState(st); err != nil {
		return err
	}
	failpoint("installing")
	if err := replaceWith(e.bin, e.prev); err != nil {
		return fmt.Errorf("ota: keep previous binary: %w", err)
	}
	failpoint("after-prev")
	if err := os.Rename(e.newPath, e.bin); err != nil {
		return fmt.Errorf("ota: install: %w", err)
	}
	if err := tuf.SyncDir(filepath.Dir(e.bin)); err != nil {
		return fmt.Errorf("ota: install: fsync dir: %w", err)
	}
	failpoint("after-rename")
	st.Phase, st.Attempts, st.PrestartCounted, st.CleanStop = PhaseTrial, 0, false, false
	if err := e.saveState(st); err != nil {
		return err
	}
	failpoint("after-install")
	return nil
}

// replaceWith makes dst a copy of src atomically: a hard link (or a copy
// where links are impossible) to a temporary name, then rename.
func replaceWith(src, dst string) error {
	tmp := dst + ".tmp"
	os.Remove(tmp)
	if err := os.Link(src, tmp); err != nil {
		if err := copyFile(src, tmp); err != nil {
			return err
		}
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return err
	}
	return tuf.SyncDir(filepath.Dir(dst))
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// rollback restores the previous binary, marks the trial version bad and
// records the outcome. It is idempotent: a crash in the middle is finished
// by the next Boot.
func (e *engine) rollback(st *State, reason string) error {
	if st.Phase != PhaseRollingBack {
		st.Phase, st.Reason = PhaseRollingBack, reason
		if err := e.saveState(st); err != nil {
			return err
		}
	}
	failpoint("rolling-back")
	if sum, _, err := fileSHA256(e.bin); err != nil || sum != st.Target.FromSHA256 {
		if err := replaceWith(e.prev, e.bin); err != nil {
			return fmt.Errorf("ota: rollback: restore %s: %w", e.prev, err)
		}
	}
	failpoint("after-restore")
	v := st.Target.Version
	if !st.isBad(v) {
		st.Bad = append(st.Bad, v)
	}
	st.Last = &Outcome{Version: v, From: st.Target.FromVersion, Result: "rolled_back", Reason: st.Reason, Time: time.Now().UTC()}
	st.Phase, st.Target, st.Attempts, st.Reason = PhaseIdle, nil, 0, ""
	st.PrestartCounted, st.CleanStop = false, false
	e.log.Error("update rolled back", "version", v, "reason", st.Last.Reason)
	return e.saveState(st)
}

// commit records the trial version as good.
func (e *engine) commit(st *State) error {
	st.Last = &Outcome{Version: st.Target.Version, From: st.Target.FromVersion, Result: "committed", Time: time.Now().UTC()}
	st.Phase, st.Target, st.Attempts, st.Reason = PhaseIdle, nil, 0, ""
	st.PrestartCounted, st.CleanStop = false, false
	// Downloads are no longer needed.
	os.RemoveAll(e.dlDir)
	e.log.Info("update committed", "version", st.Last.Version)
	return e.saveState(st)
}

// RestartMode resolves cfg.Restart ("auto" → "exit" under systemd, else
// "exec").
func RestartMode(cfg Config) string {
	if isTrialChild() {
		// Under the trial watchdog: every restart goes through it.
		return "exit"
	}
	switch cfg.Restart {
	case "exec", "exit":
		return cfg.Restart
	}
	if os.Getenv("INVOCATION_ID") != "" {
		return "exit"
	}
	return "exec"
}

// Restart starts the installed binary in place of this process: in "exec"
// mode it re-executes the binary at the configured path with the same
// arguments and environment (same pid); in "exit" mode it exits with
// ExitRestart so the service manager starts it again. It returns only on
// failure. Stop modules (and flush queues) before calling it.
func Restart(cfg Config) error {
	e, err := newEngine(cfg, nil)
	if err != nil {
		return err
	}
	return e.restart()
}

func (e *engine) restart() error {
	if RestartMode(e.cfg) == "exit" {
		e.log.Info("exiting for the service manager to restart", "code", ExitRestart)
		os.Exit(ExitRestart)
	}
	if st := e.loadState(); st.Phase == PhaseTrial && e.prevIs(st.Target.FromSHA256) {
		// Into a version on trial: through the watchdog (watchdog.go).
		return e.execWatchdog()
	}
	return e.execBin()
}

// execBin replaces this process with the installed binary, same arguments.
func (e *engine) execBin() error {
	args := append([]string{e.bin}, os.Args[1:]...)
	e.log.Info("re-executing", "binary", e.bin)
	err := syscall.Exec(e.bin, args, withoutEnv(os.Environ(), envWatchdog, envTrialChild))
	return fmt.Errorf("ota: exec %s: %w", e.bin, err)
}
