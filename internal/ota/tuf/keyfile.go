package tuf

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/scrypt"
)

// Private key files. One JSON object per key, mode 0600:
//
//	{"keytype":"ed25519","private":"<hex seed>"}            unencrypted
//	{"keytype":"ed25519","encrypted":{                       passphrase-encrypted
//	  "kdf":"scrypt","n":32768,"r":8,"p":1,"salt":"<hex, 32 bytes>",
//	  "cipher":"xchacha20-poly1305","nonce":"<hex, 24 bytes>",
//	  "ciphertext":"<hex: the 32-byte seed sealed, 48 bytes>"}}
//
// The passphrase is stretched with scrypt into a 32-byte key for
// XChaCha20-Poly1305; the key type is the additional data. A wrong
// passphrase and a tampered file are the same error (ErrBadPassphrase).
// The parser bounds the scrypt cost a file may ask for (memory 128·N·r
// bytes ≤ 256 MiB), so a hostile key file cannot exhaust memory.

// Errors reading key files.
var (
	// ErrKeyFile is returned for a key file that is not one of the formats
	// above.
	ErrKeyFile = errors.New("tuf: malformed key file")
	// ErrPassphraseRequired is returned for an encrypted key read without
	// a passphrase.
	ErrPassphraseRequired = errors.New("tuf: key is encrypted: a passphrase is required ($OUTPOST_RELEASE_PASSPHRASE or --passphrase-file)")
	// ErrBadPassphrase is returned when an encrypted key does not open:
	// a wrong passphrase, or a corrupted file.
	ErrBadPassphrase = errors.New("tuf: wrong passphrase (or corrupted key file)")
)

// Scrypt cost for new keys (about 0.1 s and 32 MiB) and the bounds a key
// file is held to.
const (
	scryptN, scryptR, scryptP = 1 << 15, 8, 1
	maxScryptNR               = 1 << 21 // 128·N·r ≤ 256 MiB
	keyAAD                    = "outpost-release-key ed25519"
)

type keyFile struct {
	Type      string        `json:"keytype"`
	Private   string        `json:"private,omitempty"` // hex ed25519 seed
	Encrypted *encryptedKey `json:"encrypted,omitempty"`
}

type encryptedKey struct {
	KDF        string `json:"kdf"`
	N          int    `json:"n"`
	R          int    `json:"r"`
	P          int    `json:"p"`
	Salt       string `json:"salt"`
	Cipher     string `json:"cipher"`
	Nonce      string `json:"nonce"`
	Ciphertext string `json:"ciphertext"`
}

// parsedKey is a key file checked for shape, not yet decrypted.
type parsedKey struct {
	seed             []byte // unencrypted
	n, r, p          int
	salt, nonce, box []byte
	encrypted        bool
}

// parseKeyFile checks a key file's structure and bounds.
func parseKeyFile(raw []byte) (*parsedKey, error) {
	var k keyFile
	if err := json.Unmarshal(raw, &k); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKeyFile, err)
	}
	if k.Type != "ed25519" {
		return nil, fmt.Errorf("%w: keytype %q, want ed25519", ErrKeyFile, k.Type)
	}
	switch {
	case k.Encrypted == nil:
		seed, err := hex.DecodeString(k.Private)
		if err != nil || len(seed) != ed25519.SeedSize {
			return nil, fmt.Errorf("%w: private: not a %d-byte hex ed25519 seed", ErrKeyFile, ed25519.SeedSize)
		}
		return &parsedKey{seed: seed}, nil
	case k.Private != "":
		return nil, fmt.Errorf("%w: both private and encrypted", ErrKeyFile)
	}
	e := k.Encrypted
	if e.KDF != "scrypt" {
		return nil, fmt.Errorf("%w: encrypted.kdf %q, want scrypt", ErrKeyFile, e.KDF)
	}
	if e.Cipher != "xchacha20-poly1305" {
		return nil, fmt.Errorf("%w: encrypted.cipher %q, want xchacha20-poly1305", ErrKeyFile, e.Cipher)
	}
	if e.N < 2 || e.N&(e.N-1) != 0 || e.R < 1 || e.R > 64 || e.P < 1 || e.P > 16 || e.N > maxScryptNR/e.R {
		return nil, fmt.Errorf("%w: encrypted: scrypt parameters n=%d r=%d p=%d out of bounds", ErrKeyFile, e.N, e.R, e.P)
	}
	pk := &parsedKey{encrypted: true, n: e.N, r: e.R, p: e.P}
	var err error
	if pk.salt, err = hex.DecodeString(e.Salt); err != nil || len(pk.salt) < 16 || len(pk.salt) > 64 {
		return nil, fmt.Errorf("%w: encrypted.salt: want 16 to 64 hex bytes", ErrKeyFile)
	}
	if pk.nonce, err = hex.DecodeString(e.Nonce); err != nil || len(pk.nonce) != chacha20poly1305.NonceSizeX {
		return nil, fmt.Errorf("%w: encrypted.nonce: want %d hex bytes", ErrKeyFile, chacha20poly1305.NonceSizeX)
	}
	if pk.box, err = hex.DecodeString(e.Ciphertext); err != nil || len(pk.box) != ed25519.SeedSize+chacha20poly1305.Overhead {
		return nil, fmt.Errorf("%w: encrypted.ciphertext: want %d hex bytes", ErrKeyFile, ed25519.SeedSize+chacha20poly1305.Overhead)
	}
	return pk, nil
}

// open returns the private key, decrypting with passphrase if needed.
func (pk *parsedKey) open(passphrase []byte) (ed25519.PrivateKey, error) {
	if !pk.encrypted {
		return ed25519.NewKeyFromSeed(pk.seed), nil
	}
	if len(passphrase) == 0 {
		return nil, ErrPassphraseRequired
	}
	dk, err := scrypt.Key(passphrase, pk.salt, pk.n, pk.r, pk.p, chacha20poly1305.KeySize)
	if err != nil {
		return nil, fmt.Errorf("%w: scrypt: %v", ErrKeyFile, err)
	}
	aead, err := chacha20poly1305.NewX(dk)
	if err != nil {
		return nil, err
	}
	seed, err := aead.Open(nil, pk.nonce, pk.box, []byte(keyAAD))
	if err != nil {
		return nil, ErrBadPassphrase
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// ParseKey decodes a private key file; passphrase opens an encrypted one
// (it is ignored for an unencrypted key).
func ParseKey(raw, passphrase []byte) (ed25519.PrivateKey, error) {
	pk, err := parseKeyFile(raw)
	if err != nil {
		return nil, err
	}
	return pk.open(passphrase)
}

// KeyIsEncrypted reports whether a key file's content is
// passphrase-encrypted.
func KeyIsEncrypted(raw []byte) (bool, error) {
	pk, err := parseKeyFile(raw)
	if err != nil {
		return false, err
	}
	return pk.encrypted, nil
}

// MarshalKey encodes a private key file, encrypted with passphrase unless
// it is empty.
func MarshalKey(k ed25519.PrivateKey, passphrase []byte) ([]byte, error) {
	return marshalKey(k, passphrase, newKeyScryptN, scryptR, scryptP)
}

// newKeyScryptN is the cost for new keys; tests lower it (the race
// detector makes scrypt very slow).
var newKeyScryptN = scryptN

func marshalKey(k ed25519.PrivateKey, passphrase []byte, n, r, p int) ([]byte, error) {
	if len(passphrase) == 0 {
		return json.Marshal(keyFile{Type: "ed25519", Private: hex.EncodeToString(k.Seed())})
	}
	salt := make([]byte, 32)
	nonce := make([]byte, chacha20poly1305.NonceSizeX)
	if _, err := rand.Read(salt); err != nil {
		return nil, err
	}
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	dk, err := scrypt.Key(passphrase, salt, n, r, p, chacha20poly1305.KeySize)
	if err != nil {
		return nil, err
	}
	aead, err := chacha20poly1305.NewX(dk)
	if err != nil {
		return nil, err
	}
	box := aead.Seal(nil, nonce, k.Seed(), []byte(keyAAD))
	return json.MarshalIndent(keyFile{Type: "ed25519", Encrypted: &encryptedKey{
		KDF: "scrypt", N: n, R: r, P: p, Salt: hex.EncodeToString(salt),
		Cipher: "xchacha20-poly1305", Nonce: hex.EncodeToString(nonce), Ciphertext: hex.EncodeToString(box),
	}}, "", "  ")
}

// ReadKey reads a private key file, decrypting it with passphrase when it
// is encrypted.
func ReadKey(path string, passphrase []byte) (ed25519.PrivateKey, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tuf: key: %w", err)
	}
	k, err := ParseKey(raw, passphrase)
	if err != nil {
		return nil, fmt.Errorf("tuf: key %s: %w", path, err)
	}
	return k, nil
}

// WriteKey writes a private key file with mode 0600, encrypted with
// passphrase unless it is empty.
func WriteKey(path string, k ed25519.PrivateKey, passphrase []byte) error {
	raw, err := MarshalKey(k, passphrase)
	if err != nil {
		return fmt.Errorf("tuf: key %s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return WriteFileAtomic(path, raw, 0o600)
}

// WriteKeyNew is WriteKey that refuses to replace an existing file.
func WriteKeyNew(path string, k ed25519.PrivateKey, passphrase []byte) error {
	if _, err := os.Stat(path); err == nil {
		return fmt.Errorf("tuf: key %s exists; refusing to overwrite", path)
	}
	return WriteKey(path, k, passphrase)
}
