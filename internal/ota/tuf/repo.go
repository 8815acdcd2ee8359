package tuf

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// Repo is the publisher's view of a static TUF repository on disk:
//
//	DIR/metadata/1.root.json, 2.root.json, ...   every root version
//	DIR/metadata/root.json                       newest root
//	DIR/metadata/N.targets.json, N.snapshot.json consistent snapshots
//	DIR/metadata/timestamp.json
//	DIR/targets/<path>/<sha256>.<name>           target files
//
// Keys live apart from the repository (KeyDir), one file per role.
type Repo struct {
	Dir    string
	KeyDir string
	// Passphrase opens encrypted key files; new keys (InitRepo,
	// RotateKey) are encrypted with it unless it is empty. Never logged.
	Passphrase []byte

	Root      *Root
	Targets   *Targets
	Snapshot  *Snapshot
	Timestamp *Timestamp
	// Delegated holds each delegated role's targets (see Delegate).
	Delegated map[string]*Targets
	// signed: canonical form of each delegated role as last signed or
	// loaded (Publish re-signs only roles that differ).
	signed map[string][]byte

	// Expiry periods applied when a role is re-signed.
	RootExpiry, TargetsExpiry, SnapshotExpiry, TimestampExpiry time.Duration
	Now                                                        func() time.Time
}

// Default expiry periods: the timestamp is short so a frozen repository is
// noticed within a day; re-sign it from cron (`outpost release sign
// --timestamp`).
const (
	DefaultRootExpiry      = 365 * 24 * time.Hour
	DefaultTargetsExpiry   = 90 * 24 * time.Hour
	DefaultSnapshotExpiry  = 30 * 24 * time.Hour
	DefaultTimestampExpiry = 24 * time.Hour
)

// ErrNoRepo is returned by OpenRepo when DIR holds no repository.
var ErrNoRepo = errors.New("tuf: no repository (run `outpost release keygen` first)")

func (r *Repo) now() time.Time {
	if r.Now != nil {
		return r.Now().UTC().Truncate(time.Second)
	}
	return time.Now().UTC().Truncate(time.Second)
}

func (r *Repo) setDefaults() {
	if r.RootExpiry == 0 {
		r.RootExpiry = DefaultRootExpiry
	}
	if r.TargetsExpiry == 0 {
		r.TargetsExpiry = DefaultTargetsExpiry
	}
	if r.SnapshotExpiry == 0 {
		r.SnapshotExpiry = DefaultSnapshotExpiry
	}
	if r.TimestampExpiry == 0 {
		r.TimestampExpiry = DefaultTimestampExpiry
	}
}

// MetaDir and TargetsDir are the two halves of the repository.
func (r *Repo) MetaDir() string    { return filepath.Join(r.Dir, "metadata") }
func (r *Repo) TargetsDir() string { return filepath.Join(r.Dir, "targets") }

// LoadKey reads a role's private key from KeyDir (decrypting it with
// Passphrase when it is encrypted).
func (r *Repo) LoadKey(role string) (ed25519.PrivateKey, error) {
	return ReadKey(filepath.Join(r.KeyDir, role+".key"), r.Passphrase)
}

// GenerateKey returns a new ed25519 key.
func GenerateKey() ed25519.PrivateKey {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
}

// InitRepo creates keys for the four roles in keyDir (threshold 1 each),
// encrypted with passphrase unless it is empty, a first root and empty
// targets, snapshot and timestamp. It refuses to overwrite an existing
// repository or key.
func InitRepo(dir, keyDir string, consistent bool, passphrase []byte) (*Repo, error) {
	r := &Repo{Dir: dir, KeyDir: keyDir, Passphrase: passphrase, Delegated: map[string]*Targets{}}
	r.setDefaults()
	if _, err := os.Stat(filepath.Join(r.MetaDir(), "root.json")); err == nil {
		return nil, fmt.Errorf("tuf: %s already holds a repository", dir)
	}
	for _, d := range []string{r.MetaDir(), r.TargetsDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("tuf: %w", err)
		}
	}
	now := r.now()
	root := &Root{
		Common:             Common{Type: RoleRoot, SpecVersion: SpecVersion, Version: 1, Expires: now.Add(r.RootExpiry)},
		ConsistentSnapshot: consistent,
		Keys:               map[string]*Key{},
		Roles:              map[string]*RoleKeys{},
	}
	for _, role := range []string{RoleRoot, RoleTargets, RoleSnapshot, RoleTimestamp} {
		path := filepath.Join(keyDir, role+".key")
		if _, err := os.Stat(path); err == nil {
			return nil, fmt.Errorf("tuf: key %s exists; refusing to overwrite", path)
		}
		k := GenerateKey()
		if err := WriteKey(path, k, passphrase); err != nil {
			return nil, fmt.Errorf("tuf: %w", err)
		}
		pk := NewKey(k.Public().(ed25519.PublicKey))
		root.Keys[pk.ID()] = pk
		root.Roles[role] = &RoleKeys{KeyIDs: []string{pk.ID()}, Threshold: 1}
	}
	r.Root = root
	if err := r.WriteRoot(); err != nil {
		return nil, err
	}
	r.Targets = &Targets{Common: Common{Type: RoleTargets, SpecVersion: SpecVersion}, Targets: map[string]TargetFile{}}
	if err := r.Publish(); err != nil {
		return nil, err
	}
	return r, nil
}

// OpenRepo loads the newest metadata of the repository in dir.
func OpenRepo(dir, keyDir string) (*Repo, error) {
	r := &Repo{Dir: dir, KeyDir: keyDir, Delegated: map[string]*Targets{}}
	r.setDefaults()
	load := func(name string) (*Envelope, error) {
		raw, err := os.ReadFile(filepath.Join(r.MetaDir(), name))
		if errors.Is(err, os.ErrNotExist) {
			return nil, ErrNoRepo
		}
		if err != nil {
			return nil, fmt.Errorf("tuf: %w", err)
		}
		e, err := ParseEnvelope(raw)
		if err != nil {
			return nil, fmt.Errorf("tuf: %s: %w", name, err)
		}
		return e, nil
	}
	var err error
	var e *Envelope
	if e, err = load("root.json"); err == nil {
		r.Root, err = ParseRoot(e)
	}
	if err == nil {
		if e, err = load("timestamp.json"); err == nil {
			r.Timestamp, err = ParseTimestamp(e)
		}
	}
	if err == nil {
		if e, err = load(r.metaName("snapshot.json", r.Timestamp.Meta["snapshot.json"].Version)); err == nil {
			r.Snapshot, err = ParseSnapshot(e)
		}
	}
	if err == nil {
		if e, err = load(r.metaName("targets.json", r.Snapshot.Meta["targets.json"].Version)); err == nil {
			r.Targets, err = ParseTargets(e)
		}
	}
	if err == nil && r.Targets.Delegations != nil {
		for _, dr := range r.Targets.Delegations.Roles {
			file := dr.Name + ".json"
			if e, err = load(r.metaName(file, r.Snapshot.Meta[file].Version)); err != nil {
				break
			}
			if r.Delegated[dr.Name], err = ParseTargets(e); err != nil {
				break
			}
			r.markSigned(dr.Name)
		}
	}
	if err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Repo) metaName(base string, version int64) string {
	if r.Root.ConsistentSnapshot {
		return strconv.FormatInt(version, 10) + "." + base
	}
	return base
}

func (r *Repo) signWith(role string, signed any) ([]byte, error) {
	k, err := r.LoadKey(role)
	if err != nil {
		return nil, err
	}
	return Sign(signed, k)
}

// WriteRoot signs the current Root with the root key and writes
// N.root.json and root.json.
func (r *Repo) WriteRoot(extra ...ed25519.PrivateKey) error {
	k, err := r.LoadKey(RoleRoot)
	if err != nil {
		return err
	}
	raw, err := Sign(r.Root, append(extra, k)...)
	if err != nil {
		return err
	}
	name := strconv.FormatInt(r.Root.Version, 10) + ".root.json"
	if err := WriteFileAtomic(filepath.Join(r.MetaDir(), name), raw, 0o644); err != nil {
		return fmt.Errorf("tuf: %w", err)
	}
	return WriteFileAtomic(filepath.Join(r.MetaDir(), "root.json"), raw, 0o644)
}

// RotateKey replaces role's key with a new one and publishes root version
// N+1, signed by the old and (for the root role) the new root key. The new
// private key replaces the old one in KeyDir; the old one is kept as
// <role>.key.old.
func (r *Repo) RotateKey(role string) error {
	if r.Targets.Delegations.role(role) != nil {
		return r.rotateDelegated(role)
	}
	if r.Root.Roles[role] == nil {
		return fmt.Errorf("tuf: rotate: no role %q (root, targets, snapshot, timestamp or a delegated role)", role)
	}
	oldRoot, err := r.LoadKey(RoleRoot)
	if err != nil {
		return err
	}
	oldID, pk, save, err := r.successorKey(role)
	if err != nil {
		return err
	}
	delete(r.Root.Keys, oldID)
	r.Root.Keys[pk.ID()] = pk
	r.Root.Roles[role] = &RoleKeys{KeyIDs: []string{pk.ID()}, Threshold: 1}
	r.Root.Version++
	r.Root.Expires = r.now().Add(r.RootExpiry)
	if err := save(); err != nil {
		return err
	}
	var extra []ed25519.PrivateKey
	if role == RoleRoot {
		extra = append(extra, oldRoot)
	}
	return r.WriteRoot(extra...)
}

// successorKey reads role's private key from KeyDir and generates the key
// that replaces it: the old key's id, the new public key, and save, which
// keeps the old private key as <role>.key.old and writes the new one as
// <role>.key (both under the repository's passphrase).
func (r *Repo) successorKey(role string) (oldID string, pk *Key, save func() error, err error) {
	path := filepath.Join(r.KeyDir, role+".key")
	old, err := ReadKey(path, r.Passphrase)
	if err != nil {
		return "", nil, nil, err
	}
	nk := GenerateKey()
	pk = NewKey(nk.Public().(ed25519.PublicKey))
	save = func() error {
		if err := WriteKey(path+".old", old, r.Passphrase); err != nil {
			return err
		}
		return WriteKey(path, nk, r.Passphrase)
	}
	return NewKey(old.Public().(ed25519.PublicKey)).ID(), pk, save, nil
}

// AddTarget copies the file at src into the targets tree under name (e.g.
// "linux/arm64/outpost-1.4.0.zst") and records its length, hashes and custom
// data. It is published by the next Publish.
func (r *Repo) AddTarget(name string, src string, custom any) (TargetFile, error) {
	tf, err := r.storeTarget(name, src, custom)
	if err != nil {
		return TargetFile{}, err
	}
	r.Targets.Targets[name] = tf
	return tf, nil
}

// storeTarget copies src into the targets tree and returns its description.
func (r *Repo) storeTarget(name string, src string, custom any) (TargetFile, error) {
	in, err := os.Open(src)
	if err != nil {
		return TargetFile{}, fmt.Errorf("tuf: add target: %w", err)
	}
	defer in.Close()
	h256, h512 := sha256.New(), sha512.New()
	tmp, err := os.CreateTemp(r.TargetsDir(), ".add*")
	if err != nil {
		return TargetFile{}, fmt.Errorf("tuf: add target: %w", err)
	}
	defer os.Remove(tmp.Name())
	n, err := io.Copy(io.MultiWriter(tmp, h256, h512), in)
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return TargetFile{}, fmt.Errorf("tuf: add target: %w", err)
	}
	tf := TargetFile{Length: n, Hashes: Hashes{
		"sha256": hex.EncodeToString(h256.Sum(nil)),
		"sha512": hex.EncodeToString(h512.Sum(nil)),
	}}
	if custom != nil {
		if tf.Custom, err = json.Marshal(custom); err != nil {
			return TargetFile{}, err
		}
	}
	dst := filepath.Join(r.TargetsDir(), filepath.FromSlash(name))
	if r.Root.ConsistentSnapshot {
		dst = filepath.Join(r.TargetsDir(), filepath.FromSlash(ConsistentTargetPath(name, tf)))
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return TargetFile{}, err
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return TargetFile{}, fmt.Errorf("tuf: add target: %w", err)
	}
	if err := SyncDir(filepath.Dir(dst)); err != nil {
		return TargetFile{}, err
	}
	return tf, nil
}

// TargetFilePath is where a published target (top-level or delegated)
// lives on disk.
func (r *Repo) TargetFilePath(name string) string {
	tf := r.AllTargets()[name]
	if r.Root.ConsistentSnapshot {
		return filepath.Join(r.TargetsDir(), filepath.FromSlash(ConsistentTargetPath(name, tf)))
	}
	return filepath.Join(r.TargetsDir(), filepath.FromSlash(name))
}

// Publish signs a new targets version, new versions of the delegated
// roles that changed (or were never signed, or whose key was rotated), a
// new snapshot referencing them and a new timestamp referencing that.
// Unchanged delegated roles keep their signed metadata, so their keys are
// not needed.
func (r *Repo) Publish() error {
	now := r.now()
	meta, err := r.publishDelegated(now, "")
	if err != nil {
		return err
	}
	r.Targets.Version++
	r.Targets.Expires = now.Add(r.TargetsExpiry)
	traw, err := r.signWith(RoleTargets, r.Targets)
	if err != nil {
		return err
	}
	if err := r.writeMeta("targets.json", r.Targets.Version, traw); err != nil {
		return err
	}
	meta["targets.json"] = metaFor(r.Targets.Version, traw)
	return r.writeSnapshot(now, meta)
}

// PublishRole signs a new version of one delegated role, a new snapshot
// and timestamp, leaving targets.json as it is: what a holder of only that
// role's key (and the snapshot and timestamp keys) can publish.
func (r *Repo) PublishRole(role string) error {
	if r.Targets.Delegations.role(role) == nil {
		return fmt.Errorf("tuf: no delegated role %q", role)
	}
	prev, ok := r.Snapshot.Meta["targets.json"]
	if !ok {
		return fmt.Errorf("tuf: snapshot lacks targets.json")
	}
	now := r.now()
	meta, err := r.publishDelegated(now, role)
	if err != nil {
		return err
	}
	meta["targets.json"] = prev
	return r.writeSnapshot(now, meta)
}

func (r *Repo) writeSnapshot(now time.Time, meta map[string]MetaFile) error {
	var sv int64 = 1
	if r.Snapshot != nil {
		sv = r.Snapshot.Version + 1
	}
	r.Snapshot = &Snapshot{
		Common: Common{Type: RoleSnapshot, SpecVersion: SpecVersion, Version: sv, Expires: now.Add(r.SnapshotExpiry)},
		Meta:   meta,
	}
	sraw, err := r.signWith(RoleSnapshot, r.Snapshot)
	if err != nil {
		return err
	}
	if err := r.writeMeta("snapshot.json", r.Snapshot.Version, sraw); err != nil {
		return err
	}
	return r.writeTimestamp(metaFor(r.Snapshot.Version, sraw))
}

// SignTimestamp re-signs the timestamp with a fresh expiry and a new
// version (run it periodically so clients do not see a freeze).
func (r *Repo) SignTimestamp() error {
	return r.writeTimestamp(r.Timestamp.Meta["snapshot.json"])
}

func (r *Repo) writeTimestamp(snap MetaFile) error {
	var tv int64 = 1
	if r.Timestamp != nil {
		tv = r.Timestamp.Version + 1
	}
	r.Timestamp = &Timestamp{
		Common: Common{Type: RoleTimestamp, SpecVersion: SpecVersion, Version: tv, Expires: r.now().Add(r.TimestampExpiry)},
		Meta:   map[string]MetaFile{"snapshot.json": snap},
	}
	raw, err := r.signWith(RoleTimestamp, r.Timestamp)
	if err != nil {
		return err
	}
	return WriteFileAtomic(filepath.Join(r.MetaDir(), "timestamp.json"), raw, 0o644)
}

func metaFor(version int64, raw []byte) MetaFile {
	s := sha256.Sum256(raw)
	return MetaFile{Version: version, Length: int64(len(raw)), Hashes: Hashes{"sha256": hex.EncodeToString(s[:])}}
}

func (r *Repo) writeMeta(base string, version int64, raw []byte) error {
	if r.Root.ConsistentSnapshot {
		name := strconv.FormatInt(version, 10) + "." + base
		if err := WriteFileAtomic(filepath.Join(r.MetaDir(), name), raw, 0o644); err != nil {
			return fmt.Errorf("tuf: %w", err)
		}
	}
	if err := WriteFileAtomic(filepath.Join(r.MetaDir(), base), raw, 0o644); err != nil {
		return fmt.Errorf("tuf: %w", err)
	}
	return nil
}
