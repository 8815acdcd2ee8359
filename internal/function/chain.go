package function

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/outpost-edge/outpost/internal/ota/tuf"
)

// ChainDir is the directory under the functions directory that holds the
// TUF repository metadata (root.json, timestamp.json, snapshot.json,
// targets.json, as `outpost release` publishes them in its metadata/).
const ChainDir = ".tuf"

// ChainTrust verifies functions through TUF's full chain (root →
// timestamp → snapshot → targets, internal/ota/tuf.Client, as OTA does)
// instead of a per-function targets.json: a version runs only if the
// repository's current targets list its manifest and module with their
// lengths and hashes. The client refuses metadata older than what this
// device trusted before (ErrRollback), also after a restart or a wiped
// cache (the version floor is kept in its own file), and expired metadata
// (a freeze). So replaying an older signed set of metadata with an older
// function version is refused; the last verified targets stay in force.
type ChainTrust struct {
	client    *tuf.Client
	floorPath string

	mu      sync.Mutex
	targets *tuf.Targets // last verified; nil before the first success
}

// NewChainTrust opens the chain for the metadata in metaDir, pinned to
// the root.json at rootPath, keeping trusted metadata in stateDir/tuf and
// the version floor in stateDir/tuf-floor.json.
func NewChainTrust(rootPath, metaDir, stateDir string) (*ChainTrust, error) {
	return NewChainTrustFetcher(rootPath, dirFetcher(metaDir), stateDir)
}

// NewChainTrustFetcher is NewChainTrust with the metadata read through f
// (the fleet server's hosted repository over mTLS, for functions the fleet
// delivers) instead of a directory.
func NewChainTrustFetcher(rootPath string, f tuf.Fetcher, stateDir string) (*ChainTrust, error) {
	pinned, err := os.ReadFile(rootPath)
	if err != nil {
		return nil, fmt.Errorf("function: trust root: %w", err)
	}
	c, err := tuf.NewClient(filepath.Join(stateDir, "tuf"), pinned, f)
	if err != nil {
		return nil, fmt.Errorf("function: %w", err)
	}
	ct := &ChainTrust{client: c, floorPath: filepath.Join(stateDir, "tuf-floor.json")}
	c.Floor = map[string]int64{}
	raw, err := os.ReadFile(ct.floorPath)
	switch {
	case err == nil:
		if err := json.Unmarshal(raw, &c.Floor); err != nil {
			return nil, fmt.Errorf("function: %s: %w", ct.floorPath, err)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("function: %w", err)
	}
	return ct, nil
}

// Refresh runs the TUF client workflow on the metadata directory. It
// returns whether the verified targets changed. On error the previously
// verified targets stay in force.
func (ct *ChainTrust) Refresh(ctx context.Context) (changed bool, err error) {
	tg, err := ct.client.Refresh(ctx)
	if err != nil {
		return false, fmt.Errorf("function: %s: %w", ChainDir, err)
	}
	floor := ct.client.Versions()
	for k, v := range ct.client.Floor {
		if floor[k] < v {
			floor[k] = v
		}
	}
	ct.client.Floor = floor
	raw, _ := json.Marshal(floor)
	if err := tuf.WriteFileAtomic(ct.floorPath, raw, 0o600); err != nil {
		return false, fmt.Errorf("function: %s: %w", ct.floorPath, err)
	}
	ct.mu.Lock()
	defer ct.mu.Unlock()
	changed = ct.targets == nil || ct.targets.Version != tg.Version
	ct.targets = tg
	return changed, nil
}

// Verify checks that manifest and module are listed in the verified
// targets with their length and hashes, and that they have not expired.
func (ct *ChainTrust) Verify(man *Manifest, manifestRaw, wasm []byte) error {
	ct.mu.Lock()
	tg := ct.targets
	ct.mu.Unlock()
	if tg == nil {
		return fmt.Errorf("%w: no verified TUF metadata in %s", ErrUnsigned, ChainDir)
	}
	if tg.Expired(ct.client.Now()) {
		return fmt.Errorf("function: %s: targets.json: %w", ChainDir, tuf.ErrExpired)
	}
	for _, f := range []struct {
		file string
		data []byte
	}{{ManifestFile, manifestRaw}, {man.Module, wasm}} {
		name := TargetName(man, f.file)
		ref, ok := tg.Targets[name]
		if !ok {
			return fmt.Errorf("%w: %s is not a target of the repository's targets.json version %d", ErrTampered, name, tg.Version)
		}
		if err := tuf.CheckHashes(f.data, ref.Length, ref.Hashes); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrTampered, name, err)
		}
	}
	return nil
}

// Target returns the verified target name (as TargetName makes it) and
// the repository path to download it from (with consistent snapshots,
// the hash-prefixed name); ok is false when the verified targets do not
// list it or none were verified yet.
func (ct *ChainTrust) Target(name string) (tf tuf.TargetFile, path string, ok bool) {
	ct.mu.Lock()
	tg := ct.targets
	ct.mu.Unlock()
	if tg == nil {
		return tuf.TargetFile{}, "", false
	}
	tf, ok = tg.Targets[name]
	if !ok {
		return tuf.TargetFile{}, "", false
	}
	return tf, ct.client.TargetPath(name, tf), true
}

// dirFetcher serves TUF metadata from a local directory.
type dirFetcher string

func (d dirFetcher) Fetch(_ context.Context, path string, maxLen int64) ([]byte, error) {
	if strings.Contains(path, "..") || strings.HasPrefix(path, "/") {
		return nil, fmt.Errorf("tuf metadata path %q", path)
	}
	f, err := os.Open(filepath.Join(string(d), filepath.FromSlash(path)))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, tuf.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxLen+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > maxLen {
		return nil, fmt.Errorf("%s: %w", path, tuf.ErrTooLarge)
	}
	return b, nil
}
