package tuf

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Role names.
const (
	RoleRoot      = "root"
	RoleTargets   = "targets"
	RoleSnapshot  = "snapshot"
	RoleTimestamp = "timestamp"
)

// SpecVersion is the TUF specification version written into metadata.
const SpecVersion = "1.0.31"

// Signature is one signature over the canonical form of Signed.
type Signature struct {
	KeyID string `json:"keyid"`
	Sig   string `json:"sig"` // hex
}

// Envelope is a signed metadata file as stored: the signed part is kept as
// raw bytes so that its canonical form is what is verified, unknown fields
// included.
type Envelope struct {
	Signatures []Signature     `json:"signatures"`
	Signed     json.RawMessage `json:"signed"`
}

// Key is a public key in TUF form. Only ed25519 is supported.
type Key struct {
	Type   string `json:"keytype"`
	Scheme string `json:"scheme"`
	Value  struct {
		Public string `json:"public"` // hex
	} `json:"keyval"`
}

// ID is the key id: hex SHA-256 of the key's canonical JSON.
func (k *Key) ID() string {
	c, err := canonicalValue(k)
	if err != nil {
		panic(err) // a Key always marshals
	}
	s := sha256.Sum256(c)
	return hex.EncodeToString(s[:])
}

// PublicKey returns the ed25519 key, or an error for any other type.
func (k *Key) PublicKey() (ed25519.PublicKey, error) {
	if k.Type != "ed25519" || k.Scheme != "ed25519" {
		return nil, fmt.Errorf("unsupported key type %q scheme %q", k.Type, k.Scheme)
	}
	b, err := hex.DecodeString(k.Value.Public)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("malformed ed25519 public key")
	}
	return ed25519.PublicKey(b), nil
}

// NewKey wraps an ed25519 public key.
func NewKey(pub ed25519.PublicKey) *Key {
	k := &Key{Type: "ed25519", Scheme: "ed25519"}
	k.Value.Public = hex.EncodeToString(pub)
	return k
}

// RoleKeys lists the keys trusted for a role and how many must sign.
type RoleKeys struct {
	KeyIDs    []string `json:"keyids"`
	Threshold int      `json:"threshold"`
}

// Common is the part every signed metadata shares.
type Common struct {
	Type        string    `json:"_type"`
	SpecVersion string    `json:"spec_version"`
	Version     int64     `json:"version"`
	Expires     time.Time `json:"expires"`
}

// Root is root.json's signed part.
type Root struct {
	Common
	ConsistentSnapshot bool                 `json:"consistent_snapshot"`
	Keys               map[string]*Key      `json:"keys"`
	Roles              map[string]*RoleKeys `json:"roles"`
}

// MetaFile describes a metadata file referenced by snapshot or timestamp.
type MetaFile struct {
	Version int64  `json:"version"`
	Length  int64  `json:"length,omitempty"`
	Hashes  Hashes `json:"hashes,omitempty"`
}

// Hashes maps an algorithm ("sha256", "sha512") to a hex digest.
type Hashes map[string]string

// Timestamp is timestamp.json's signed part.
type Timestamp struct {
	Common
	Meta map[string]MetaFile `json:"meta"` // exactly "snapshot.json"
}

// Snapshot is snapshot.json's signed part.
type Snapshot struct {
	Common
	Meta map[string]MetaFile `json:"meta"` // "targets.json"
}

// TargetFile is one target: its length, hashes and custom data.
type TargetFile struct {
	Length int64           `json:"length"`
	Hashes Hashes          `json:"hashes"`
	Custom json.RawMessage `json:"custom,omitempty"`
}

// Targets is the signed part of targets.json and of a delegated role's
// metadata (same _type). Only the top-level targets role may delegate (one
// level; see delegation.go).
type Targets struct {
	Common
	Targets     map[string]TargetFile `json:"targets"`
	Delegations *Delegations          `json:"delegations,omitempty"`
}

// Errors returned by parsing and verification. Each attack class has its
// own sentinel; they are wrapped with the role and detail.
var (
	// ErrMalformed is returned when metadata does not parse or lacks a
	// required field.
	ErrMalformed = errors.New("malformed metadata")
	// ErrBadSignature is returned when a key trusted for the role signed,
	// but the signature does not verify (tampered or forged metadata) and
	// the threshold is not reached.
	ErrBadSignature = errors.New("bad signature")
	// ErrUnknownKey is returned when metadata is signed only by keys the
	// trusted root does not list for the role.
	ErrUnknownKey = errors.New("signed by unknown key")
	// ErrThreshold is returned when fewer valid signatures than the role's
	// threshold are present.
	ErrThreshold = errors.New("below signature threshold")
	// ErrRollback is returned when a metadata version (or a version it
	// references) is lower than the trusted one: a rollback attack.
	ErrRollback = errors.New("rollback attack: version decreased")
	// ErrExpired is returned when trusted metadata has expired: a freeze
	// attack, or a repository whose publisher stopped re-signing.
	ErrExpired = errors.New("metadata expired (freeze attack?)")
	// ErrMixAndMatch is returned when a snapshot or targets file does not
	// match the version, length or hash its parent references.
	ErrMixAndMatch = errors.New("mix-and-match: file does not match its signed reference")
	// ErrWrongType is returned when a file's _type is not its role.
	ErrWrongType = errors.New("wrong metadata type")
	// ErrTooLarge is returned when a server sends more bytes than the
	// metadata (or the fixed cap for unreferenced files) allows: an
	// endless-data attack.
	ErrTooLarge = errors.New("endless data: more bytes than allowed")
)

// ParseEnvelope parses a signed metadata file.
func ParseEnvelope(data []byte) (*Envelope, error) {
	var e Envelope
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&e); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data", ErrMalformed)
	}
	if len(e.Signed) == 0 || bytes.Equal(e.Signed, []byte("null")) {
		return nil, fmt.Errorf("%w: no signed part", ErrMalformed)
	}
	return &e, nil
}

// decodeSigned decodes the signed part into v and checks its type.
func decodeSigned(e *Envelope, role string, v any, c *Common) error {
	if err := json.Unmarshal(e.Signed, v); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrMalformed, role, err)
	}
	if c.Type != role {
		return fmt.Errorf("%w: %s: _type is %q", ErrWrongType, role, c.Type)
	}
	if c.Version < 1 {
		return fmt.Errorf("%w: %s: version %d < 1", ErrMalformed, role, c.Version)
	}
	if c.Expires.IsZero() {
		return fmt.Errorf("%w: %s: missing expires", ErrMalformed, role)
	}
	return nil
}

// ParseRoot, ParseTimestamp, ParseSnapshot and ParseTargets decode the
// signed part of an envelope without verifying signatures.
func ParseRoot(e *Envelope) (*Root, error) {
	var r Root
	if err := decodeSigned(e, RoleRoot, &r, &r.Common); err != nil {
		return nil, err
	}
	for _, name := range []string{RoleRoot, RoleTargets, RoleSnapshot, RoleTimestamp} {
		rk := r.Roles[name]
		if rk == nil {
			return nil, fmt.Errorf("%w: root: role %s missing", ErrMalformed, name)
		}
		if rk.Threshold < 1 {
			return nil, fmt.Errorf("%w: root: role %s threshold %d < 1", ErrMalformed, name, rk.Threshold)
		}
		if len(rk.KeyIDs) < rk.Threshold {
			return nil, fmt.Errorf("%w: root: role %s has %d keys, threshold %d", ErrMalformed, name, len(rk.KeyIDs), rk.Threshold)
		}
	}
	for id, k := range r.Keys {
		if k == nil {
			return nil, fmt.Errorf("%w: root: key %s is null", ErrMalformed, id)
		}
		if _, err := k.PublicKey(); err != nil {
			return nil, fmt.Errorf("%w: root: key %s: %v", ErrMalformed, id, err)
		}
		if k.ID() != id {
			return nil, fmt.Errorf("%w: root: key id %s does not match key", ErrMalformed, id)
		}
	}
	return &r, nil
}

func ParseTimestamp(e *Envelope) (*Timestamp, error) {
	var t Timestamp
	if err := decodeSigned(e, RoleTimestamp, &t, &t.Common); err != nil {
		return nil, err
	}
	if _, ok := t.Meta["snapshot.json"]; !ok || len(t.Meta) != 1 {
		return nil, fmt.Errorf("%w: timestamp: meta must hold exactly snapshot.json", ErrMalformed)
	}
	return &t, nil
}

func ParseSnapshot(e *Envelope) (*Snapshot, error) {
	var s Snapshot
	if err := decodeSigned(e, RoleSnapshot, &s, &s.Common); err != nil {
		return nil, err
	}
	if _, ok := s.Meta["targets.json"]; !ok {
		return nil, fmt.Errorf("%w: snapshot: meta lacks targets.json", ErrMalformed)
	}
	return &s, nil
}

func ParseTargets(e *Envelope) (*Targets, error) {
	var t Targets
	if err := decodeSigned(e, RoleTargets, &t, &t.Common); err != nil {
		return nil, err
	}
	for p, f := range t.Targets {
		if f.Length < 0 || len(f.Hashes) == 0 {
			return nil, fmt.Errorf("%w: targets: %s: needs length and hashes", ErrMalformed, p)
		}
	}
	if err := t.Delegations.validate(); err != nil {
		return nil, err
	}
	return &t, nil
}

// Verify checks that at least threshold distinct keys trusted for role in
// root signed e. The error distinguishes a forged signature by a trusted key
// (ErrBadSignature), signatures only by unknown keys (ErrUnknownKey) and too
// few valid signatures (ErrThreshold).
func Verify(root *Root, role string, e *Envelope) error {
	rk := root.Roles[role]
	if rk == nil {
		return fmt.Errorf("%w: role %s not in root", ErrMalformed, role)
	}
	return verifyKeys(root.Keys, rk, role, e)
}

// verifyKeys is Verify with the keys and threshold given (root's for a
// top-level role, the delegating targets' for a delegated one).
func verifyKeys(keys map[string]*Key, rk *RoleKeys, role string, e *Envelope) error {
	msg, err := Canonical(e.Signed)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrMalformed, role, err)
	}
	allowed := make(map[string]bool, len(rk.KeyIDs))
	for _, id := range rk.KeyIDs {
		allowed[id] = true
	}
	valid := map[string]bool{}
	var bad, unknown int
	for _, s := range e.Signatures {
		k := keys[s.KeyID]
		if !allowed[s.KeyID] || k == nil {
			unknown++
			continue
		}
		pub, err := k.PublicKey()
		if err != nil {
			bad++
			continue
		}
		sig, err := hex.DecodeString(s.Sig)
		if err != nil || !ed25519.Verify(pub, msg, sig) {
			bad++
			continue
		}
		valid[s.KeyID] = true
	}
	if len(valid) >= rk.Threshold {
		return nil
	}
	detail := fmt.Sprintf("%s: %d of threshold %d valid signatures (%d bad, %d by keys not trusted for %s)",
		role, len(valid), rk.Threshold, bad, unknown, role)
	switch {
	case bad > 0:
		return fmt.Errorf("%w: %s", ErrBadSignature, detail)
	case unknown > 0 && len(valid) == 0:
		return fmt.Errorf("%w: %s", ErrUnknownKey, detail)
	default:
		return fmt.Errorf("%w: %s", ErrThreshold, detail)
	}
}

// Sign adds signatures by each private key over the canonical form of
// signed and returns the encoded envelope.
func Sign(signed any, keys ...ed25519.PrivateKey) ([]byte, error) {
	raw, err := canonicalValue(signed)
	if err != nil {
		return nil, err
	}
	e := Envelope{Signed: raw, Signatures: []Signature{}}
	for _, k := range keys {
		id := NewKey(k.Public().(ed25519.PublicKey)).ID()
		e.Signatures = append(e.Signatures, Signature{KeyID: id, Sig: hex.EncodeToString(ed25519.Sign(k, raw))})
	}
	return json.MarshalIndent(e, "", " ")
}

// CheckHashes verifies data's length and every hash the reference lists
// that this package knows (sha256, sha512); at least one must be known.
func CheckHashes(data []byte, length int64, h Hashes) error {
	if length > 0 && int64(len(data)) != length {
		return fmt.Errorf("length %d, want %d", len(data), length)
	}
	if len(h) == 0 {
		return nil
	}
	known := 0
	for alg, want := range h {
		var got string
		switch alg {
		case "sha256":
			s := sha256.Sum256(data)
			got = hex.EncodeToString(s[:])
		case "sha512":
			s := sha512.Sum512(data)
			got = hex.EncodeToString(s[:])
		default:
			continue
		}
		known++
		if got != want {
			return fmt.Errorf("%s %s, want %s", alg, got, want)
		}
	}
	if known == 0 {
		return fmt.Errorf("no supported hash algorithm")
	}
	return nil
}

// Expired reports whether c has expired at now.
func (c *Common) Expired(now time.Time) bool { return !now.Before(c.Expires) }
