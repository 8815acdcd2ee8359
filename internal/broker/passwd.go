package broker

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// Password hash formats accepted in config.
const (
	HashBcrypt   = "bcrypt"
	HashArgon2id = "argon2id"
)

// ErrBadHash is returned for a password_hash in neither supported format.
var ErrBadHash = errors.New("password hash is neither bcrypt ($2a$/$2b$/$2y$) nor argon2id ($argon2id$...)")

// Argon2id parameters of HashPassword: m=7 MiB, t=5, p=1, the
// lowest-memory of OWASP's equivalent minimum settings (19 MiB/t=2,
// 12 MiB/t=3, 9 MiB/t=4, 7 MiB/t=5). A gateway pays m for every
// verification in progress (at most login.max_parallel_hashes of them), so
// for the same CPU cost per guess the smallest m is the one to use.
const (
	Argon2Memory  = 7 * 1024 // KiB
	Argon2Time    = 5
	Argon2Threads = 1
)

// HashPassword returns a hash of pw in the given format. bcrypt uses cost 10;
// argon2id uses Argon2Memory, Argon2Time and Argon2Threads.
func HashPassword(pw []byte, format string) (string, error) {
	switch format {
	case HashBcrypt, "":
		h, err := bcrypt.GenerateFromPassword(pw, 10)
		if err != nil {
			return "", fmt.Errorf("broker: bcrypt: %w", err)
		}
		return string(h), nil
	case HashArgon2id:
		salt := make([]byte, 16)
		if _, err := rand.Read(salt); err != nil {
			return "", err
		}
		const m, t, p = Argon2Memory, Argon2Time, Argon2Threads
		key := argon2.IDKey(pw, salt, t, m, p, 32)
		b64 := base64.RawStdEncoding
		return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, m, t, p, b64.EncodeToString(salt), b64.EncodeToString(key)), nil
	}
	return "", fmt.Errorf("broker: unknown hash format %q (want bcrypt or argon2id)", format)
}

type argonParams struct {
	m    uint32
	t    uint32
	p    uint8
	salt []byte
	key  []byte
}

func parseArgon2id(h string) (argonParams, error) {
	var a argonParams
	parts := strings.Split(h, "$")
	// "", "argon2id", "v=19", "m=..,t=..,p=..", salt, key
	if len(parts) != 6 || parts[1] != "argon2id" {
		return a, ErrBadHash
	}
	var v int
	if _, err := fmt.Sscanf(parts[2], "v=%d", &v); err != nil || v != argon2.Version {
		return a, fmt.Errorf("argon2id: unsupported version %q", parts[2])
	}
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &a.m, &a.t, &a.p); err != nil {
		return a, fmt.Errorf("argon2id: bad parameters %q", parts[3])
	}
	if a.m < 8 || a.m > 1<<20 || a.t < 1 || a.t > 64 || a.p < 1 {
		return a, fmt.Errorf("argon2id: parameters out of range (m=%d KiB, t=%d, p=%d)", a.m, a.t, a.p)
	}
	var err error
	if a.salt, err = base64.RawStdEncoding.DecodeString(parts[4]); err != nil || len(a.salt) < 8 {
		return a, errors.New("argon2id: bad salt")
	}
	if a.key, err = base64.RawStdEncoding.DecodeString(parts[5]); err != nil || len(a.key) < 16 {
		return a, errors.New("argon2id: bad key")
	}
	return a, nil
}

func checkHashFormat(h string) error {
	switch {
	case strings.HasPrefix(h, "$2a$"), strings.HasPrefix(h, "$2b$"), strings.HasPrefix(h, "$2y$"):
		if _, err := bcrypt.Cost([]byte(h)); err != nil {
			return fmt.Errorf("bcrypt hash: %v", err)
		}
		return nil
	case strings.HasPrefix(h, "$argon2id$"):
		_, err := parseArgon2id(h)
		return err
	}
	return ErrBadHash
}

// verifyPassword reports whether pw matches hash, in constant time with
// respect to the password.
func verifyPassword(hash string, pw []byte) bool {
	if strings.HasPrefix(hash, "$argon2id$") {
		a, err := parseArgon2id(hash)
		if err != nil {
			return false
		}
		key := argon2.IDKey(pw, a.salt, a.t, a.m, a.p, uint32(len(a.key)))
		return subtle.ConstantTimeCompare(key, a.key) == 1
	}
	return bcrypt.CompareHashAndPassword([]byte(hash), pw) == nil
}
