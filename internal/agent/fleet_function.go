//go:build functions

package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/client"
	"github.com/outpost-edge/outpost/internal/fleet/proto"
	"github.com/outpost-edge/outpost/internal/function"
	"github.com/outpost-edge/outpost/internal/ota/tuf"
)

// Fleet functions (docs/functions.md, "Delivery through the fleet"; kind
// function, spec {"function": "anomaly", "version": 2}). The function is a
// pair of signed targets in the TUF repository the fleet server hosts
// (outpost functions publish, outpost release push). The gateway fetches
// the repository's metadata from the server over its mTLS identity,
// verifies the whole chain against the functions trust root (root,
// timestamp, snapshot, targets; rollback and freeze refused, with a
// version floor kept in FLEET_DIR/functions-tuf), downloads the manifest
// and the module, checks their lengths and hashes, and only then writes
// them, with the repository's signed targets.json, as a new version
// directory DIR/fleet-SLOT-vVERSION that the functions registry loads next
// to the running version: the swap is the registry's hot swap (no message
// lost or run twice). The old version's directory goes only once the new
// one is loaded; a version the registry refuses is removed again and the
// running one stays.

type functionSpec struct {
	Function string `json:"function"`
	Version  int    `json:"version"`
}

// fleetFunctionPrefix is the start of a fleet slot's version directories.
func fleetFunctionPrefix(slot string) string { return "fleet-" + slot + "-v" }

func (f fleetApplier) functionsReady() (*functionsModule, *FunctionsConfig, error) {
	fm := f.a.fns
	if fm == nil {
		return nil, nil, errors.New("functions are not enabled on this gateway (functions: enabled: true)")
	}
	fm.mu.Lock()
	cfg, reg := fm.cfg, fm.reg
	fm.mu.Unlock()
	if cfg == nil || !cfg.Enabled || reg == nil {
		return nil, nil, errors.New("functions are not enabled on this gateway (functions: enabled: true)")
	}
	return fm, cfg, nil
}

func (f fleetApplier) applyFunction(ctx context.Context, d proto.Desired) error {
	var spec functionSpec
	dec := json.NewDecoder(bytes.NewReader(d.Spec))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&spec); err != nil {
		return fmt.Errorf("spec: %w (want {\"function\": \"anomaly\", \"version\": 2})", err)
	}
	if spec.Function == "" || spec.Version < 1 {
		return errors.New("spec: want {\"function\": NAME, \"version\": N} with N ≥ 1")
	}
	fm, cfg, err := f.functionsReady()
	if err != nil {
		return err
	}
	if cfg.TrustRoot == "" {
		return errors.New("functions.trust_root is not set (allow_unsigned): a gateway runs fleet functions only after verifying them against the release root")
	}
	dir := filepath.Join(cfg.Dir, fleetFunctionPrefix(d.Name)+strconv.Itoa(spec.Version))
	if fm.loadedFrom(dir, spec) {
		// Already running (a re-sent object, or the offline start from the
		// cache): nothing to fetch.
		return f.dropOtherVersions(ctx, fm, cfg, d.Name, dir)
	}
	fleetDir := f.fleetDir()
	fc := f.a.Config().Fleet
	if fleetDir == "" || fc == nil {
		return errors.New("the fleet section is not configured")
	}
	id, err := client.LoadIdentity(fleetDir)
	if err != nil {
		return err
	}
	hc := id.HTTPClient()
	defer hc.CloseIdleConnections()
	rf := &repoFetcher{hc: hc, servers: append([]string{fc.Server}, fc.Servers...), meta: map[string][]byte{}}
	stateDir := filepath.Join(fleetDir, "functions-tuf")
	ct, err := function.NewChainTrustFetcher(cfg.TrustRoot, rf, stateDir)
	if err != nil {
		return err
	}
	fctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	// What fails while fetching may work later (the server back, the
	// version pushed): the syncer tries again with backoff.
	retry := func(err error) error { return fmt.Errorf("%w (%w)", err, client.ErrRetry) }
	if _, err := ct.Refresh(fctx); err != nil {
		return retry(fmt.Errorf("the fleet server's TUF repository: %w", err))
	}
	want := &function.Manifest{Name: spec.Function, Version: spec.Version}
	manName := function.TargetName(want, function.ManifestFile)
	manRaw, err := rf.target(fctx, ct, manName)
	if err != nil {
		return retry(err)
	}
	man, err := function.ParseManifest(filepath.Join(dir, function.ManifestFile), manRaw)
	if err != nil {
		return err
	}
	if man.Name != spec.Function || man.Version != spec.Version {
		return fmt.Errorf("%s: the signed manifest is %s version %d, not %s version %d", manName, man.Name, man.Version, spec.Function, spec.Version)
	}
	wasm, err := rf.target(fctx, ct, function.TargetName(man, man.Module))
	if err != nil {
		return retry(err)
	}
	signed, err := os.ReadFile(filepath.Join(stateDir, "tuf", "targets.json"))
	if err != nil {
		return fmt.Errorf("the verified targets.json: %w", err)
	}
	if cfg.TUF {
		// The registry verifies through the chain in DIR/.tuf: give it the
		// metadata just verified (written before the version appears).
		for name, b := range rf.metadata() {
			if err := tuf.WriteFileAtomic(filepath.Join(cfg.Dir, function.ChainDir, filepath.FromSlash(name)), b, 0o644); err != nil {
				return err
			}
		}
	}
	// Build the version directory under a dot name (the registry skips
	// those), then rename it into place: it appears whole.
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return retry(err)
	}
	tmp, err := os.MkdirTemp(cfg.Dir, ".fleet-"+d.Name+"-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	for name, b := range map[string][]byte{function.ManifestFile: manRaw, man.Module: wasm, function.SignatureFile: signed} {
		if err := tuf.WriteFileAtomic(filepath.Join(tmp, name), b, 0o644); err != nil {
			return err
		}
	}
	if err := removeDirWhole(dir); err != nil { // a leftover that failed to load before
		return err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return err
	}
	tuf.SyncDir(cfg.Dir)
	if problem := fm.reload(ctx, dir); problem != "" {
		removeDirWhole(dir)
		fm.reload(ctx, "")
		return fmt.Errorf("%s version %d: %s", spec.Function, spec.Version, problem)
	}
	f.a.log.Info("fleet: function loaded", "module", "fleet", "slot", d.Name, "function", spec.Function, "version", spec.Version)
	return f.dropOtherVersions(ctx, fm, cfg, d.Name, dir)
}

// dropOtherVersions removes the slot's other version directories (the
// version the new one replaced) once the new one runs.
func (f fleetApplier) dropOtherVersions(ctx context.Context, fm *functionsModule, cfg *FunctionsConfig, slot, keep string) error {
	dirs, err := fleetFunctionDirs(cfg.Dir, slot)
	if err != nil {
		return err
	}
	removed := false
	for _, d := range dirs {
		if d != keep {
			if err := removeDirWhole(d); err != nil {
				return err
			}
			removed = true
		}
	}
	if removed {
		fm.reload(ctx, "")
	}
	return nil
}

func (f fleetApplier) removeFunction(ctx context.Context, slot string) error {
	fm, cfg, err := f.functionsReady()
	if err != nil {
		return nil // nothing can have been applied
	}
	return f.dropOtherVersions(ctx, fm, cfg, slot, "")
}

// removeDirWhole renames a version directory to a dot name first (the
// registry skips those), so it disappears at once rather than file by
// file, then removes it.
func removeDirWhole(dir string) error {
	gone := filepath.Join(filepath.Dir(dir), ".removing-"+filepath.Base(dir))
	if err := os.Rename(dir, gone); errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	return os.RemoveAll(gone)
}

// fleetFunctionDirs lists the version directories of a fleet slot.
func fleetFunctionDirs(dir, slot string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	prefix := fleetFunctionPrefix(slot)
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok || !e.IsDir() || rest == "" || strings.Trim(rest, "0123456789") != "" {
			continue
		}
		out = append(out, filepath.Join(dir, e.Name()))
	}
	return out, nil
}

// loadedFrom reports whether the registry runs spec's version from dir.
func (fm *functionsModule) loadedFrom(dir string, spec functionSpec) bool {
	fm.mu.Lock()
	reg := fm.reg
	fm.mu.Unlock()
	if reg == nil {
		return false
	}
	st, _ := reg.Statuses()
	for _, s := range st {
		if s.Dir == dir && s.Name == spec.Function && s.Version == spec.Version {
			return true
		}
	}
	return false
}

// reload re-reads the functions directory now and returns the registry's
// problem with dir, if any.
func (fm *functionsModule) reload(ctx context.Context, dir string) string {
	fm.mu.Lock()
	reg := fm.reg
	fm.mu.Unlock()
	if reg == nil {
		return "the functions module is not running"
	}
	reg.Reload(ctx)
	if dir == "" {
		return ""
	}
	st, problems := reg.Statuses()
	for _, p := range problems {
		if p.Dir == dir {
			return p.Err
		}
	}
	for _, s := range st {
		if s.Dir == dir {
			return ""
		}
	}
	return "not loaded"
}

// repoFetcher reads the fleet server's hosted TUF repository
// (SERVER/api/v1/ota/metadata/..., .../targets/...) with the gateway's
// mTLS client, trying each replica in turn; it keeps the metadata it read
// so that the registry's own chain can be given the same files.
type repoFetcher struct {
	hc      *http.Client
	servers []string
	mu      sync.Mutex
	meta    map[string][]byte
}

func (r *repoFetcher) get(ctx context.Context, path string, maxLen int64) ([]byte, error) {
	var errs []error
	for _, srv := range r.servers {
		if srv == "" {
			continue
		}
		u := strings.TrimRight(srv, "/") + "/api/v1/ota/" + path
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return nil, err
		}
		resp, err := r.hc.Do(req)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, maxLen+1))
		resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusNotFound:
			return nil, tuf.ErrNotFound
		case resp.StatusCode != http.StatusOK:
			errs = append(errs, fmt.Errorf("GET %s: HTTP %s", u, resp.Status))
			continue
		case err != nil:
			errs = append(errs, fmt.Errorf("GET %s: %w", u, err))
			continue
		case int64(len(b)) > maxLen:
			return nil, fmt.Errorf("GET %s: %w", u, tuf.ErrTooLarge)
		}
		return b, nil
	}
	return nil, errors.Join(errs...)
}

// Fetch implements tuf.Fetcher for the metadata.
func (r *repoFetcher) Fetch(ctx context.Context, path string, maxLen int64) ([]byte, error) {
	b, err := r.get(ctx, "metadata/"+path, maxLen)
	if err == nil {
		r.mu.Lock()
		r.meta[path] = b
		r.mu.Unlock()
	}
	return b, err
}

func (r *repoFetcher) metadata() map[string][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string][]byte, len(r.meta))
	for k, v := range r.meta {
		out[k] = v
	}
	return out
}

// target downloads a verified target and checks its length and hashes.
func (r *repoFetcher) target(ctx context.Context, ct *function.ChainTrust, name string) ([]byte, error) {
	tf, path, ok := ct.Target(name)
	if !ok {
		return nil, fmt.Errorf("%s is not in the fleet server's signed targets (publish it: outpost functions publish, then outpost release push)", name)
	}
	b, err := r.get(ctx, "targets/"+path, tf.Length)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if err := tuf.CheckHashes(b, tf.Length, tf.Hashes); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", name, function.ErrTampered, err)
	}
	return b, nil
}
