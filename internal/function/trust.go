package function

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/outpost-edge/outpost/internal/ota/tuf"
)

// SignatureFile is the signed TUF targets metadata beside a function's
// manifest.
const SignatureFile = "targets.json"

// Errors of signature checks (besides the tuf package's ErrBadSignature,
// ErrUnknownKey, ErrThreshold, ErrExpired, which are wrapped as they are).
var (
	// ErrUnsigned is returned for a function without targets.json when
	// signatures are required.
	ErrUnsigned = errors.New("function: unsigned (no " + SignatureFile + ")")
	// ErrTampered is returned when the module or manifest does not match
	// the signed length and hashes, or is not listed.
	ErrTampered = errors.New("function: does not match its signed metadata")
)

// Trust verifies functions against the release root (the same pinned
// root.json, keys and roles as OTA, docs/ota.md): a function is signed like
// a release target, by the targets role. Its targets.json is a TUF targets
// document listing functions/NAME/VERSION/function.yaml and
// functions/NAME/VERSION/MODULE with their lengths and hashes; it is
// verified against the root's targets keys and threshold and its expiry.
type Trust struct {
	Root *tuf.Root
	// Now is the clock for expiry (nil = time.Now).
	Now func() time.Time
}

// LoadTrust reads a pinned root.json (self-signed by the root role).
func LoadTrust(path string) (*Trust, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("function: trust root: %w", err)
	}
	env, err := tuf.ParseEnvelope(raw)
	if err != nil {
		return nil, fmt.Errorf("function: trust root %s: %w", path, err)
	}
	root, err := tuf.ParseRoot(env)
	if err != nil {
		return nil, fmt.Errorf("function: trust root %s: %w", path, err)
	}
	if err := tuf.Verify(root, tuf.RoleRoot, env); err != nil {
		return nil, fmt.Errorf("function: trust root %s: %w", path, err)
	}
	return &Trust{Root: root}, nil
}

// TargetName is the TUF target name of a function's file.
func TargetName(man *Manifest, file string) string {
	return "functions/" + man.Name + "/" + strconv.Itoa(man.Version) + "/" + file
}

// Verify checks sig (targets.json) and that manifest and module are the
// signed bytes.
func (t *Trust) Verify(man *Manifest, manifestRaw, wasm, sig []byte) error {
	if sig == nil {
		return ErrUnsigned
	}
	env, err := tuf.ParseEnvelope(sig)
	if err != nil {
		return fmt.Errorf("function: %s: %w", SignatureFile, err)
	}
	if err := tuf.Verify(t.Root, tuf.RoleTargets, env); err != nil {
		return fmt.Errorf("function: %s: %w", SignatureFile, err)
	}
	tg, err := tuf.ParseTargets(env)
	if err != nil {
		return fmt.Errorf("function: %s: %w", SignatureFile, err)
	}
	now := time.Now()
	if t.Now != nil {
		now = t.Now()
	}
	if tg.Expired(now) {
		return fmt.Errorf("function: %s: %w: expired %s", SignatureFile, tuf.ErrExpired, tg.Expires.Format(time.RFC3339))
	}
	for _, f := range []struct {
		file string
		data []byte
	}{{ManifestFile, manifestRaw}, {man.Module, wasm}} {
		name := TargetName(man, f.file)
		ref, ok := tg.Targets[name]
		if !ok {
			return fmt.Errorf("%w: %s is not a signed target", ErrTampered, name)
		}
		if err := tuf.CheckHashes(f.data, ref.Length, ref.Hashes); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrTampered, name, err)
		}
	}
	return nil
}

// Sign writes DIR/targets.json for the function in dir, signed with the
// release targets key(s), expiring after validity.
func Sign(dir string, validity time.Duration, keys ...ed25519.PrivateKey) error {
	manRaw, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return fmt.Errorf("function: sign: %w", err)
	}
	man, err := ParseManifest(filepath.Join(dir, ManifestFile), manRaw)
	if err != nil {
		return err
	}
	wasm, err := os.ReadFile(filepath.Join(dir, man.Module))
	if err != nil {
		return fmt.Errorf("function: sign: %w", err)
	}
	tg := tuf.Targets{
		Common:  tuf.Common{Type: tuf.RoleTargets, SpecVersion: tuf.SpecVersion, Version: 1, Expires: time.Now().UTC().Add(validity).Truncate(time.Second)},
		Targets: map[string]tuf.TargetFile{},
	}
	for _, f := range []struct {
		file string
		data []byte
	}{{ManifestFile, manRaw}, {man.Module, wasm}} {
		tf := tuf.TargetFile{Length: int64(len(f.data)), Hashes: tuf.Hashes{}}
		h := hashHex(f.data)
		tf.Hashes["sha256"] = h
		tf.Custom, _ = json.Marshal(map[string]any{"function": man.Name, "version": man.Version})
		tg.Targets[TargetName(man, f.file)] = tf
	}
	raw, err := tuf.Sign(tg, keys...)
	if err != nil {
		return fmt.Errorf("function: sign: %w", err)
	}
	return tuf.WriteFileAtomic(filepath.Join(dir, SignatureFile), raw, 0o644)
}
