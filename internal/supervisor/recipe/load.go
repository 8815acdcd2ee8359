package recipe

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// LoadFile reads, parses and checks one recipe file (see Parse and
// CheckArtifacts).
func LoadFile(path string) (*Recipe, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, &Error{File: path, Err: fmt.Errorf("%w: %v", ErrInvalid, err)}
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, &Error{File: path, Err: fmt.Errorf("%w: read: %v", ErrInvalid, err)}
	}
	r, err := Parse(path, data)
	if err != nil {
		return nil, err
	}
	if err := r.CheckArtifacts(); err != nil {
		return nil, err
	}
	return r, nil
}

// IsRecipeFile reports whether a file name is read as a recipe: *.yaml or
// *.yml, not hidden (editors' swap and backup files are ignored).
func IsRecipeFile(name string) bool {
	base := filepath.Base(name)
	if strings.HasPrefix(base, ".") || strings.HasSuffix(base, "~") {
		return false
	}
	ext := filepath.Ext(base)
	return ext == ".yaml" || ext == ".yml"
}

// LoadDir loads every recipe file in dir (not recursive), in file name
// order. Files that fail are reported in errs (one joined error per file),
// keyed by path; the others are returned.
func LoadDir(dir string) (recipes []*Recipe, errs map[string]error, err error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("recipe: read %s: %w", dir, err)
	}
	errs = map[string]error{}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })
	for _, e := range entries {
		if e.IsDir() || !IsRecipeFile(e.Name()) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		r, err := LoadFile(p)
		if err != nil {
			errs[p] = err
			continue
		}
		recipes = append(recipes, r)
	}
	return recipes, errs, nil
}

// Dir returns the directory the recipe file is in: local artifact paths
// are relative to it.
func (r *Recipe) Dir() string { return filepath.Dir(r.File) }

// LocalPath returns a local artifact's absolute path.
func (r *Recipe) LocalPath(a Artifact) string {
	if filepath.IsAbs(a.Path) {
		return a.Path
	}
	return filepath.Join(r.Dir(), a.Path)
}

// CheckArtifacts verifies that every local artifact exists and, when the
// recipe gives its sha256, that the hash matches. URL artifacts are checked
// when they are downloaded at install time.
func (r *Recipe) CheckArtifacts() error {
	var errs []error
	for i, a := range r.Artifacts {
		if a.Path == "" {
			continue
		}
		at := func(err error) {
			errs = append(errs, &Error{File: r.File, Line: a.Pos.Line, Column: a.Pos.Column, Field: fmt.Sprintf("artifacts[%d]", i), Err: err})
		}
		p := r.LocalPath(a)
		st, err := os.Stat(p)
		if err != nil {
			at(fmt.Errorf("%w: %s: %v", ErrArtifact, a.Path, errors.Unwrap(err)))
			continue
		}
		if !st.Mode().IsRegular() {
			at(fmt.Errorf("%w: %s is not a regular file", ErrArtifact, a.Path))
			continue
		}
		if a.SHA256 == "" {
			continue
		}
		got, err := FileSHA256(p)
		if err != nil {
			at(fmt.Errorf("%w: %s: %v", ErrArtifact, a.Path, err))
			continue
		}
		if got != a.SHA256 {
			at(fmt.Errorf("%w: %s has sha256 %s, recipe says %s", ErrHashMismatch, a.Path, got, a.SHA256))
		}
	}
	return errors.Join(errs...)
}

// FileSHA256 returns the lower-case hex SHA-256 of a file.
func FileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
