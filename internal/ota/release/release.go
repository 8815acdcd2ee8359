// Package release is the publisher side of Outpost's self-update: it adds
// a version's binary to a TUF repository as a zstd-compressed full target
// plus bsdiff deltas from the previous versions, and signs new metadata.
// `outpost release keygen|add|sign|serve` are thin wrappers over it.
//
// Layout and metadata are described in internal/ota/tuf (Repo) and the
// target naming and custom fields in internal/ota (FullTargetName,
// DeltaTargetName, Custom). The repository is static files: any web server
// or object store with HTTP Range support can host it.
package release

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"

	"github.com/klauspost/compress/zstd"
	"github.com/outpost-edge/outpost/internal/ota"
	"github.com/outpost-edge/outpost/internal/ota/delta"
	"github.com/outpost-edge/outpost/internal/ota/tuf"
)

const stagedFile = "staged-targets.json"

// Open opens the repository in dir with keys in keyDir, including targets
// added but not yet signed.
func Open(dir, keyDir string) (*tuf.Repo, error) {
	r, err := tuf.OpenRepo(dir, keyDir)
	if err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(filepath.Join(dir, stagedFile))
	if errors.Is(err, os.ErrNotExist) {
		return r, nil
	}
	if err != nil {
		return nil, fmt.Errorf("release: %w", err)
	}
	var t tuf.Targets
	if err := json.Unmarshal(raw, &t); err != nil {
		return nil, fmt.Errorf("release: %s: %w", stagedFile, err)
	}
	r.Targets = &t
	return r, nil
}

// SaveStaged records added targets without signing (for `add --no-sign`).
func SaveStaged(r *tuf.Repo) error {
	raw, err := json.MarshalIndent(r.Targets, "", " ")
	if err != nil {
		return err
	}
	return tuf.WriteFileAtomic(filepath.Join(r.Dir, stagedFile), raw, 0o644)
}

// Sign publishes staged targets (new targets, snapshot and timestamp).
func Sign(r *tuf.Repo) error {
	if err := r.Publish(); err != nil {
		return err
	}
	os.Remove(filepath.Join(r.Dir, stagedFile))
	return nil
}

// SignRole publishes what was added to a delegated role: a new version of
// that role, snapshot and timestamp (its key, the snapshot and the
// timestamp keys; not the targets key).
func SignRole(r *tuf.Repo, role string) error {
	return r.PublishRole(role)
}

// AddResult reports what Add put in the repository.
type AddResult struct {
	Full   string            // target name of the full binary
	Size   int64             // binary size
	Packed int64             // compressed full target size
	Deltas map[string]int64  // delta target name → size
	From   map[string]string // delta target name → from version
}

// Add adds binary (version, platform) as a full target and as deltas from
// up to deltas previous versions of the same platform already in the
// repository. Nothing is signed.
func Add(r *tuf.Repo, binary, version, platform string, deltas int) (*AddResult, error) {
	return AddTo(r, "", binary, version, platform, deltas)
}

// AddTo is Add into the delegated role (tuf.Repo.Delegate); role "" is the
// top-level targets role. The target names must match the role's paths
// (for instance "linux/arm64/*" for a role that publishes arm64 builds).
func AddTo(r *tuf.Repo, role, binary, version, platform string, deltas int) (_ *AddResult, err error) {
	var stored []string
	store := r.AddTarget
	if role != "" {
		store = func(name, src string, custom any) (tuf.TargetFile, error) {
			return r.AddDelegatedTarget(role, name, src, custom)
		}
	}
	add := func(name, src string, custom any) (tuf.TargetFile, error) {
		tf, err := store(name, src, custom)
		if err == nil {
			stored = append(stored, name)
		}
		return tf, err
	}
	defer func() {
		if err != nil {
			// Nothing is left behind by a failed add.
			for _, n := range stored {
				os.Remove(r.TargetFilePath(n))
			}
		}
	}()
	if err := ota.CanonicalVersion(version); err != nil {
		return nil, fmt.Errorf("release: %w", err)
	}
	if _, err := os.Stat(binary); err != nil {
		return nil, fmt.Errorf("release: %w", err)
	}
	nw, err := os.ReadFile(binary)
	if err != nil {
		return nil, fmt.Errorf("release: %w", err)
	}
	sum := sha256.Sum256(nw)
	full := ota.FullTargetName(platform, version)
	all := r.AllTargets()
	if _, dup := all[full]; dup {
		return nil, fmt.Errorf("release: %s is already in the repository", full)
	}
	// One version, one release: an older repository may hold another
	// spelling of it (v1.2.0, 1.2.0+build) that gateways order equal.
	for name, tf := range all {
		if c, err := ota.ParseCustom(tf); err == nil && c.Kind == "full" && c.Platform == platform && ota.CompareVersions(c.Version, version) == 0 {
			return nil, fmt.Errorf("release: version %s is already in the repository as %s", version, name)
		}
	}
	res := &AddResult{Full: full, Size: int64(len(nw)), Deltas: map[string]int64{}, From: map[string]string{}}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBestCompression), zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(8<<20))
	if err != nil {
		return nil, err
	}
	packed := enc.EncodeAll(nw, nil)
	tmp, err := writeTemp(r.TargetsDir(), packed)
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp)
	custom := ota.Custom{Kind: "full", Version: version, Platform: platform, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(nw))}
	if _, err := add(full, tmp, custom); err != nil {
		return nil, err
	}
	res.Packed = int64(len(packed))

	// Previous versions of this platform, newest first.
	type prev struct {
		name string
		c    *ota.Custom
	}
	var prevs []prev
	for name, tf := range all {
		c, err := ota.ParseCustom(tf)
		if err != nil || c.Kind != "full" || c.Platform != platform || ota.CompareVersions(c.Version, version) >= 0 {
			continue
		}
		prevs = append(prevs, prev{name, c})
	}
	sort.Slice(prevs, func(i, j int) bool { return ota.CompareVersions(prevs[i].c.Version, prevs[j].c.Version) > 0 })
	if len(prevs) > deltas {
		prevs = prevs[:deltas]
	}
	for _, p := range prevs {
		old, err := readFull(r.TargetFilePath(p.name))
		if err != nil {
			return nil, fmt.Errorf("release: delta from %s: %w", p.c.Version, err)
		}
		var patch bytes.Buffer
		if err := delta.Diff(old, nw, &patch); err != nil {
			return nil, fmt.Errorf("release: delta from %s: %w", p.c.Version, err)
		}
		if int64(patch.Len()) >= res.Packed {
			continue // not worth it
		}
		tmp, err := writeTemp(r.TargetsDir(), patch.Bytes())
		if err != nil {
			return nil, err
		}
		name := ota.DeltaTargetName(platform, p.c.Version, version)
		dc := custom
		dc.Kind, dc.From, dc.FromSHA256 = "delta", p.c.Version, p.c.SHA256
		_, err = add(name, tmp, dc)
		os.Remove(tmp)
		if err != nil {
			return nil, err
		}
		res.Deltas[name] = int64(patch.Len())
		res.From[name] = p.c.Version
	}
	return res, nil
}

// CheckKeys loads (and decrypts) every key that publishing with role
// needs: role (default the targets role), snapshot and timestamp. Call it
// before Add so that a wrong passphrase fails before anything is written.
func CheckKeys(r *tuf.Repo, role string) error {
	if role == "" {
		role = tuf.RoleTargets
	}
	for _, k := range []string{role, tuf.RoleSnapshot, tuf.RoleTimestamp} {
		if _, err := r.LoadKey(k); err != nil {
			return fmt.Errorf("release: %s key: %w", k, err)
		}
	}
	return nil
}

// Discard removes the target files Add stored (when what follows it, such
// as signing, failed), so a failed add leaves nothing behind.
func Discard(r *tuf.Repo, res *AddResult) {
	if res == nil {
		return
	}
	names := []string{res.Full}
	for n := range res.Deltas {
		names = append(names, n)
	}
	for _, n := range names {
		os.Remove(r.TargetFilePath(n))
	}
}

// readFull decompresses a full target.
func readFull(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	dec, err := zstd.NewReader(f, zstd.WithDecoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	defer dec.Close()
	return io.ReadAll(dec)
}

func writeTemp(dir string, b []byte) (string, error) {
	f, err := os.CreateTemp(dir, ".release*")
	if err != nil {
		return "", fmt.Errorf("release: %w", err)
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("release: %w", err)
	}
	return f.Name(), nil
}

// Handler serves a repository directory as static files, with HTTP Range
// support (http.FileServer), for `outpost release serve`. Directories are
// not listed (404): clients only ever ask for names that signed metadata
// gives them, and a listing would show staged or unpublished files.
func Handler(dir string) http.Handler {
	fs := http.FileServer(filesOnly{http.Dir(dir)})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Cache-Control", "no-cache")
		fs.ServeHTTP(w, r)
	})
}

// filesOnly is a file system whose directories do not exist (no listing,
// no index.html).
type filesOnly struct{ http.FileSystem }

func (f filesOnly) Open(name string) (http.File, error) {
	file, err := f.FileSystem.Open(name)
	if err != nil {
		return nil, err
	}
	st, err := file.Stat()
	if err != nil || st.IsDir() {
		file.Close()
		return nil, os.ErrNotExist
	}
	return file, nil
}
