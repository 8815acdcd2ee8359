package tuf

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestKeyFileEncryption(t *testing.T) {
	k := GenerateKey()
	pass := []byte("correct horse battery staple")
	raw, err := MarshalKey(k, pass)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte(`"private"`)) || bytes.Contains(raw, pass) {
		t.Fatalf("encrypted key file shows the seed or the passphrase:\n%s", raw)
	}
	if enc, err := KeyIsEncrypted(raw); err != nil || !enc {
		t.Fatalf("KeyIsEncrypted = %v, %v", enc, err)
	}
	got, err := ParseKey(raw, pass)
	if err != nil || !got.Equal(k) {
		t.Fatalf("round trip: %v", err)
	}
	if _, err := ParseKey(raw, nil); !errors.Is(err, ErrPassphraseRequired) {
		t.Fatalf("no passphrase: %v", err)
	}
	if _, err := ParseKey(raw, []byte("wrong")); !errors.Is(err, ErrBadPassphrase) {
		t.Fatalf("wrong passphrase: %v", err)
	}
	// Flip one ciphertext byte: the AEAD refuses it.
	var f keyFile
	json.Unmarshal(raw, &f)
	c, _ := hex.DecodeString(f.Encrypted.Ciphertext)
	c[0] ^= 1
	f.Encrypted.Ciphertext = hex.EncodeToString(c)
	tampered, _ := json.Marshal(f)
	if _, err := ParseKey(tampered, pass); !errors.Is(err, ErrBadPassphrase) {
		t.Fatalf("tampered: %v", err)
	}
	// A file asking for an absurd scrypt cost is refused before any work.
	f.Encrypted.N = 1 << 30
	huge, _ := json.Marshal(f)
	if _, err := ParseKey(huge, pass); !errors.Is(err, ErrKeyFile) {
		t.Fatalf("huge N: %v", err)
	}
	// Unencrypted keys still read, with or without a passphrase.
	plain, _ := MarshalKey(k, nil)
	for _, p := range [][]byte{nil, pass} {
		if got, err := ParseKey(plain, p); err != nil || !got.Equal(k) {
			t.Fatalf("plain key: %v", err)
		}
	}
}

// A repository made with a passphrase has encrypted keys; it signs with
// the passphrase, refuses without it, and rotation keeps keys encrypted.
func TestRepoEncryptedKeys(t *testing.T) {
	defer func(n int) { newKeyScryptN = n }(newKeyScryptN)
	newKeyScryptN = 1 << 10 // the format is the same; only slower by default
	d := t.TempDir()
	pass := []byte("s3cret")
	r, err := InitRepo(filepath.Join(d, "repo"), filepath.Join(d, "keys"), true, pass)
	if err != nil {
		t.Fatal(err)
	}
	for _, role := range []string{RoleRoot, RoleTargets, RoleSnapshot, RoleTimestamp} {
		raw, err := os.ReadFile(filepath.Join(r.KeyDir, role+".key"))
		if err != nil {
			t.Fatal(err)
		}
		if enc, err := KeyIsEncrypted(raw); err != nil || !enc {
			t.Fatalf("%s key not encrypted: %v", role, err)
		}
		if st, _ := os.Stat(filepath.Join(r.KeyDir, role+".key")); st.Mode().Perm() != 0o600 {
			t.Fatalf("%s key mode %v", role, st.Mode())
		}
	}
	r2, err := OpenRepo(r.Dir, r.KeyDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := r2.SignTimestamp(); !errors.Is(err, ErrPassphraseRequired) {
		t.Fatalf("sign without passphrase: %v", err)
	}
	r2.Passphrase = []byte("nope")
	if err := r2.SignTimestamp(); !errors.Is(err, ErrBadPassphrase) {
		t.Fatalf("sign with a wrong passphrase: %v", err)
	}
	r2.Passphrase = pass
	if err := r2.SignTimestamp(); err != nil {
		t.Fatal(err)
	}
	if err := r2.RotateKey(RoleTimestamp); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"timestamp.key", "timestamp.key.old"} {
		raw, _ := os.ReadFile(filepath.Join(r.KeyDir, name))
		if enc, err := KeyIsEncrypted(raw); err != nil || !enc {
			t.Fatalf("%s not encrypted after rotate: %v", name, err)
		}
	}
	if err := r2.Publish(); err != nil {
		t.Fatal(err)
	}
}

// FuzzParseKey feeds arbitrary bytes to the key file parser: it never
// panics, never accepts a malformed file, and what it accepts round-trips.
func FuzzParseKey(f *testing.F) {
	k := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32))
	plain, _ := MarshalKey(k, nil)
	cheap, _ := marshalKey(k, []byte("pw"), 16, 1, 1)
	f.Add(plain)
	f.Add(cheap)
	f.Add([]byte(`{"keytype":"ed25519","encrypted":{"kdf":"scrypt","n":1048576,"r":64,"p":16}}`))
	f.Add([]byte(`{"keytype":"rsa","private":"00"}`))
	f.Add([]byte(`{"keytype":"ed25519","private":"` + strings.Repeat("ab", 32) + `","encrypted":{}}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		pk, err := parseKeyFile(raw)
		if err != nil {
			if !errors.Is(err, ErrKeyFile) {
				t.Fatalf("error not ErrKeyFile: %v", err)
			}
			return
		}
		if !pk.encrypted {
			key, err := pk.open(nil)
			if err != nil {
				t.Fatal(err)
			}
			again, _ := MarshalKey(key, nil)
			if k2, err := ParseKey(again, nil); err != nil || !k2.Equal(key) {
				t.Fatalf("plain round trip: %v", err)
			}
			return
		}
		if pk.n*pk.r > 1<<10 {
			return // valid but costly: not the parser's business
		}
		key, err := pk.open([]byte("pw"))
		if err != nil {
			if !errors.Is(err, ErrBadPassphrase) {
				t.Fatalf("open: %v", err)
			}
			return
		}
		if len(key) != ed25519.PrivateKeySize {
			t.Fatalf("key of %d bytes", len(key))
		}
	})
}
