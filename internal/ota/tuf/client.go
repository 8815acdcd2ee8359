package tuf

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"
)

// Fetcher gets one repository file (a path relative to the metadata base
// URL). It must return ErrNotFound when the file does not exist and must
// never return more than maxLen bytes: when the server has more, it returns
// an error wrapping ErrTooLarge.
type Fetcher interface {
	Fetch(ctx context.Context, path string, maxLen int64) ([]byte, error)
}

// ErrNotFound is returned by a Fetcher for a missing file (HTTP 404).
var ErrNotFound = errors.New("not found")

// Size caps for files whose length is not referenced by signed metadata.
const (
	MaxRootSize      = 512 << 10
	MaxTimestampSize = 16 << 10
	MaxSnapshotSize  = 2 << 20
	MaxTargetsSize   = 5 << 20
	MaxRootRotations = 32
)

// Client refreshes and verifies a TUF repository's top-level metadata
// following the TUF client workflow (spec §5): root rotation chain, then
// timestamp, snapshot and targets, each checked for signatures against the
// trusted root's role keys and threshold, version monotonicity, expiry and
// consistency with the file that references it. Verified metadata is kept
// in Dir so the next refresh downloads only what changed.
//
// Not supported: delegated targets, key types other than ed25519.
type Client struct {
	Dir   string  // trusted metadata cache (root.json, timestamp.json, ...)
	Fetch Fetcher // remote metadata
	Now   func() time.Time
	// Floor holds the highest versions of each metadata file ("root.json",
	// "timestamp.json", "snapshot.json", "targets.json", "<role>.json")
	// that this device has trusted before, kept outside Dir by the caller
	// (see Versions). Refresh refuses anything older as a rollback, so
	// rollback protection survives a wiped or lost cache directory. A
	// root newer than Floor["root.json"] that rotates the timestamp,
	// snapshot or targets keys removes their entries (fast-forward
	// recovery, TUF 5.3.11); Refresh edits the map in place.
	Floor map[string]int64

	root      *Root
	rootRaw   []byte
	timestamp *Timestamp
	snapshot  *Snapshot
	targets   *Targets
}

// NewClient opens the trusted cache in dir, seeding it with the pinned root
// (the root.json shipped with the device) when the cache has none.
func NewClient(dir string, pinnedRoot []byte, f Fetcher) (*Client, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("tuf: %w", err)
	}
	c := &Client{Dir: dir, Fetch: f, Now: time.Now}
	raw, err := os.ReadFile(filepath.Join(dir, "root.json"))
	if errors.Is(err, os.ErrNotExist) {
		raw = pinnedRoot
	} else if err != nil {
		return nil, fmt.Errorf("tuf: %w", err)
	}
	r, err := loadRoot(raw)
	if err != nil && !bytes.Equal(raw, pinnedRoot) {
		// A corrupt cache falls back to the pinned root.
		raw = pinnedRoot
		r, err = loadRoot(raw)
	}
	if err != nil {
		return nil, fmt.Errorf("tuf: trusted root: %w", err)
	}
	c.root, c.rootRaw = r, raw
	return c, nil
}

// loadRoot parses a root and checks it is self-signed to its threshold.
func loadRoot(raw []byte) (*Root, error) {
	e, err := ParseEnvelope(raw)
	if err != nil {
		return nil, err
	}
	r, err := ParseRoot(e)
	if err != nil {
		return nil, err
	}
	if err := Verify(r, RoleRoot, e); err != nil {
		return nil, err
	}
	return r, nil
}

// Root returns the trusted root.
func (c *Client) Root() *Root { return c.root }

// Targets returns the targets verified by the last successful Refresh.
func (c *Client) Targets() *Targets { return c.targets }

// Refresh runs the client workflow and returns the verified targets. With
// nothing new on the server it costs two small requests: the next root
// version (absent) and timestamp.json.
func (c *Client) Refresh(ctx context.Context) (*Targets, error) {
	c.timestamp, c.snapshot, c.targets = nil, nil, nil
	if err := c.updateRoot(ctx); err != nil {
		return nil, err
	}
	if err := c.updateTimestamp(ctx); err != nil {
		return nil, err
	}
	if err := c.updateSnapshot(ctx); err != nil {
		return nil, err
	}
	if err := c.updateTargets(ctx); err != nil {
		return nil, err
	}
	if err := c.updateDelegated(ctx); err != nil {
		c.targets = nil
		return nil, err
	}
	return c.targets, nil
}

func (c *Client) persist(name string, data []byte) error {
	if err := WriteFileAtomic(filepath.Join(c.Dir, name), data, 0o644); err != nil {
		return fmt.Errorf("tuf: save %s: %w", name, err)
	}
	return nil
}

func (c *Client) updateRoot(ctx context.Context) error {
	for i := 0; i < MaxRootRotations; i++ {
		next := c.root.Version + 1
		name := strconv.FormatInt(next, 10) + ".root.json"
		raw, err := c.Fetch.Fetch(ctx, name, MaxRootSize)
		if errors.Is(err, ErrNotFound) {
			break
		}
		if err != nil {
			return fmt.Errorf("tuf: fetch %s: %w", name, err)
		}
		e, err := ParseEnvelope(raw)
		if err != nil {
			return fmt.Errorf("tuf: %s: %w", name, err)
		}
		nr, err := ParseRoot(e)
		if err != nil {
			return fmt.Errorf("tuf: %s: %w", name, err)
		}
		// §5.3.4: signed by a threshold of the old root's keys and of the
		// new root's own keys.
		if err := Verify(c.root, RoleRoot, e); err != nil {
			return fmt.Errorf("tuf: %s (by trusted root v%d): %w", name, c.root.Version, err)
		}
		if err := Verify(nr, RoleRoot, e); err != nil {
			return fmt.Errorf("tuf: %s (by its own keys): %w", name, err)
		}
		if nr.Version != next {
			return fmt.Errorf("tuf: %s: %w: has version %d", name, ErrRollback, nr.Version)
		}
		// §5.3.11: fast-forward attack recovery: when timestamp or snapshot
		// keys rotate, forget the trusted files signed by the old keys so
		// that a fast-forwarded version cannot block the new ones.
		// The floor recorded under an older root is forgotten the same
		// way, so the recovery works with a floor too; a rotation the
		// floor was already recorded after (a wiped cache walking the
		// chain again) keeps it.
		newer := nr.Version > c.Floor["root.json"]
		if !sameRoleKeys(c.root, nr, RoleTimestamp) || !sameRoleKeys(c.root, nr, RoleSnapshot) {
			os.Remove(filepath.Join(c.Dir, "timestamp.json"))
			os.Remove(filepath.Join(c.Dir, "snapshot.json"))
			if newer {
				delete(c.Floor, "timestamp.json")
				delete(c.Floor, "snapshot.json")
			}
		}
		if !sameRoleKeys(c.root, nr, RoleTargets) {
			os.Remove(filepath.Join(c.Dir, "targets.json"))
			if newer {
				delete(c.Floor, "targets.json")
			}
		}
		if err := c.persist("root.json", raw); err != nil {
			return err
		}
		c.root, c.rootRaw = nr, raw
	}
	if f := c.Floor["root.json"]; c.root.Version < f {
		return fmt.Errorf("tuf: root: %w: newest root the repository offers is v%d, v%d seen before", ErrRollback, c.root.Version, f)
	}
	if c.root.Expired(c.Now()) {
		return fmt.Errorf("tuf: root v%d expired %s: %w", c.root.Version, c.root.Expires.Format(time.RFC3339), ErrExpired)
	}
	return nil
}

func sameRoleKeys(a, b *Root, role string) bool {
	x, y := a.Roles[role], b.Roles[role]
	if x.Threshold != y.Threshold {
		return false
	}
	ka, kb := slices.Clone(x.KeyIDs), slices.Clone(y.KeyIDs)
	slices.Sort(ka)
	slices.Sort(kb)
	return slices.Equal(ka, kb)
}

// loadTrusted reads a cached file and verifies it against the current root;
// anything that does not verify is ignored (and the remote copy decides).
// With ref, the cached bytes must also match ref's length and hashes (the
// reference in the newer timestamp or snapshot): a cached file is reused
// only when it is exactly the file that signed metadata now points at, not
// merely one with the same version number.
func (c *Client) loadTrusted(name, role string, ref *MetaFile) *Envelope {
	return c.loadTrustedBy(name, ref, func(e *Envelope) error { return Verify(c.root, role, e) })
}

func (c *Client) loadTrustedBy(name string, ref *MetaFile, verify func(*Envelope) error) *Envelope {
	raw, err := os.ReadFile(filepath.Join(c.Dir, name))
	if err != nil {
		return nil
	}
	if ref != nil && CheckHashes(raw, ref.Length, ref.Hashes) != nil {
		return nil
	}
	e, err := ParseEnvelope(raw)
	if err != nil {
		return nil
	}
	if verify(e) != nil {
		return nil
	}
	return e
}

func (c *Client) updateTimestamp(ctx context.Context) error {
	var old *Timestamp
	if e := c.loadTrusted("timestamp.json", RoleTimestamp, nil); e != nil {
		old, _ = ParseTimestamp(e)
	}
	raw, err := c.Fetch.Fetch(ctx, "timestamp.json", MaxTimestampSize)
	if err != nil {
		return fmt.Errorf("tuf: fetch timestamp.json: %w", err)
	}
	e, err := ParseEnvelope(raw)
	if err != nil {
		return fmt.Errorf("tuf: timestamp.json: %w", err)
	}
	if err := Verify(c.root, RoleTimestamp, e); err != nil {
		return fmt.Errorf("tuf: timestamp.json: %w", err)
	}
	ts, err := ParseTimestamp(e)
	if err != nil {
		return fmt.Errorf("tuf: timestamp.json: %w", err)
	}
	if f := c.Floor["timestamp.json"]; ts.Version < f {
		return fmt.Errorf("tuf: timestamp.json: %w: version %d < %d seen before", ErrRollback, ts.Version, f)
	}
	if err := c.checkFloor("timestamp.json", ts.Meta); err != nil {
		return err
	}
	unchanged := false
	if old != nil {
		if ts.Version < old.Version {
			return fmt.Errorf("tuf: timestamp.json: %w: version %d < trusted %d", ErrRollback, ts.Version, old.Version)
		}
		if ts.Meta["snapshot.json"].Version < old.Meta["snapshot.json"].Version {
			return fmt.Errorf("tuf: timestamp.json: %w: snapshot version %d < trusted %d",
				ErrRollback, ts.Meta["snapshot.json"].Version, old.Meta["snapshot.json"].Version)
		}
		if ts.Version == old.Version {
			ts, unchanged = old, true // §5.4.3.2: keep the trusted one
		}
	}
	if ts.Expired(c.Now()) {
		return fmt.Errorf("tuf: timestamp.json v%d expired %s: %w", ts.Version, ts.Expires.Format(time.RFC3339), ErrExpired)
	}
	if !unchanged {
		if err := c.persist("timestamp.json", raw); err != nil {
			return err
		}
	}
	c.timestamp = ts
	return nil
}

func (c *Client) updateSnapshot(ctx context.Context) error {
	ref := c.timestamp.Meta["snapshot.json"]
	var old, same *Snapshot
	if e := c.loadTrusted("snapshot.json", RoleSnapshot, nil); e != nil {
		old, _ = ParseSnapshot(e)
	}
	if e := c.loadTrusted("snapshot.json", RoleSnapshot, &ref); e != nil {
		same, _ = ParseSnapshot(e)
	}
	if same != nil && same.Version == ref.Version && !same.Expired(c.Now()) {
		if err := c.checkFloor("snapshot.json", same.Meta); err != nil {
			return err
		}
		c.snapshot = same // nothing new: no request
		return nil
	}
	name, raw, e, err := c.fetchVerified(ctx, "snapshot.json", RoleSnapshot, ref, MaxSnapshotSize)
	if err != nil {
		return err
	}
	s, err := ParseSnapshot(e)
	if err != nil {
		return fmt.Errorf("tuf: %s: %w", name, err)
	}
	if s.Version != ref.Version {
		return fmt.Errorf("tuf: %s: %w: version %d, timestamp says %d", name, ErrMixAndMatch, s.Version, ref.Version)
	}
	if old != nil {
		for file, m := range old.Meta {
			nm, ok := s.Meta[file]
			if !ok {
				return fmt.Errorf("tuf: %s: %w: %s removed", name, ErrRollback, file)
			}
			if nm.Version < m.Version {
				return fmt.Errorf("tuf: %s: %w: %s version %d < trusted %d", name, ErrRollback, file, nm.Version, m.Version)
			}
		}
	}
	if err := c.checkFloor(name, s.Meta); err != nil {
		return err
	}
	if s.Expired(c.Now()) {
		return fmt.Errorf("tuf: %s v%d expired %s: %w", name, s.Version, s.Expires.Format(time.RFC3339), ErrExpired)
	}
	if err := c.persist("snapshot.json", raw); err != nil {
		return err
	}
	c.snapshot = s
	return nil
}

// fetchVerified downloads the metadata file that ref (from timestamp or
// snapshot metadata) describes: under its versioned name when the repository
// uses consistent snapshots, bounded by ref's length (else maxSize), with
// ref's hashes checked (a mismatch is mix-and-match) and role's signatures
// verified against the trusted root. name is the file name as fetched.
func (c *Client) fetchVerified(ctx context.Context, file, role string, ref MetaFile, maxSize int64) (name string, raw []byte, e *Envelope, err error) {
	return c.fetchVerifiedBy(ctx, file, ref, maxSize, func(e *Envelope) error { return Verify(c.root, role, e) })
}

func (c *Client) fetchVerifiedBy(ctx context.Context, file string, ref MetaFile, maxSize int64, verify func(*Envelope) error) (name string, raw []byte, e *Envelope, err error) {
	name = file
	if c.root.ConsistentSnapshot {
		name = strconv.FormatInt(ref.Version, 10) + "." + file
	}
	max := maxSize
	if ref.Length > 0 {
		max = ref.Length
	}
	if raw, err = c.Fetch.Fetch(ctx, name, max); err != nil {
		return name, nil, nil, fmt.Errorf("tuf: fetch %s: %w", name, err)
	}
	if err := CheckHashes(raw, ref.Length, ref.Hashes); err != nil {
		return name, nil, nil, fmt.Errorf("tuf: %s: %w: %v", name, ErrMixAndMatch, err)
	}
	if e, err = ParseEnvelope(raw); err != nil {
		return name, nil, nil, fmt.Errorf("tuf: %s: %w", name, err)
	}
	if err := verify(e); err != nil {
		return name, nil, nil, fmt.Errorf("tuf: %s: %w", name, err)
	}
	return name, raw, e, nil
}

func (c *Client) updateTargets(ctx context.Context) error {
	ref := c.snapshot.Meta["targets.json"]
	if e := c.loadTrusted("targets.json", RoleTargets, &ref); e != nil {
		if old, err := ParseTargets(e); err == nil && old.Version == ref.Version && !old.Expired(c.Now()) {
			c.targets = old
			return nil
		}
	}
	name, raw, e, err := c.fetchVerified(ctx, "targets.json", RoleTargets, ref, MaxTargetsSize)
	if err != nil {
		return err
	}
	t, err := ParseTargets(e)
	if err != nil {
		return fmt.Errorf("tuf: %s: %w", name, err)
	}
	if t.Version != ref.Version {
		return fmt.Errorf("tuf: %s: %w: version %d, snapshot says %d", name, ErrMixAndMatch, t.Version, ref.Version)
	}
	if t.Expired(c.Now()) {
		return fmt.Errorf("tuf: %s v%d expired %s: %w", name, t.Version, t.Expires.Format(time.RFC3339), ErrExpired)
	}
	if err := c.persist("targets.json", raw); err != nil {
		return err
	}
	c.targets = t
	return nil
}

// checkFloor refuses references (from timestamp or snapshot metadata
// named by) to older versions than Floor holds.
func (c *Client) checkFloor(by string, meta map[string]MetaFile) error {
	for file, m := range meta {
		if f := c.Floor[file]; m.Version < f {
			return fmt.Errorf("tuf: %s: %w: %s version %d < %d seen before", by, ErrRollback, file, m.Version, f)
		}
	}
	return nil
}

// Versions returns the version of every metadata file trusted by the last
// successful Refresh, keyed like Floor. Keep the highest values outside
// the cache directory and pass them back as Floor.
func (c *Client) Versions() map[string]int64 {
	v := map[string]int64{"root.json": c.root.Version}
	if c.timestamp != nil {
		v["timestamp.json"] = c.timestamp.Version
	}
	if c.snapshot != nil {
		v["snapshot.json"] = c.snapshot.Version
		for file, m := range c.snapshot.Meta {
			v[file] = m.Version
		}
	}
	return v
}

// TargetPath returns the path to download a target from, relative to the
// targets base URL: with consistent snapshots the file name is prefixed with
// its sha256 ("linux/arm64/<hash>.outpost-1.4.0.zst").
func (c *Client) TargetPath(name string, f TargetFile) string {
	if !c.root.ConsistentSnapshot {
		return name
	}
	return ConsistentTargetPath(name, f)
}

// ConsistentTargetPath is the hash-prefixed path of a target.
func ConsistentTargetPath(name string, f TargetFile) string {
	dir, base := filepath.Split(name)
	return dir + f.Hashes["sha256"] + "." + base
}

// WriteFileAtomic writes data to a temporary file next to path, fsyncs it,
// renames it over path and fsyncs the directory.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return SyncDir(dir)
}

// SyncDir fsyncs a directory so a rename in it is durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
