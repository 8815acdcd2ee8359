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

// SubdirRecipeNames are the file names a recipe has in its own
// subdirectory of the recipes directory (DIR/NAME/recipe.yaml, the layout
// of examples/components, next to the component's artifacts).
var SubdirRecipeNames = []string{"recipe.yaml", "recipe.yml"}

// LoadDir loads every recipe file in dir, in file name order: the recipe
// files in dir itself, and DIR/SUB/recipe.yaml (or recipe.yml) of each
// subdirectory (one level; hidden subdirectories are skipped). A
// subdirectory that holds YAML files but no recipe.yaml is reported as an
// error rather than silently ignored. Files that fail are reported in errs
// (one joined error per file), keyed by path; the others are returned.
func LoadDir(dir string) (recipes []*Recipe, errs map[string]error, err error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("recipe: read %s: %w", dir, err)
	}
	errs = map[string]error{}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })
	load := func(p string) {
		r, err := LoadFile(p)
		if err != nil {
			errs[p] = err
			return
		}
		recipes = append(recipes, r)
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		if e.IsDir() {
			if strings.HasPrefix(e.Name(), ".") {
				continue
			}
			if f, ok, ferr := subdirRecipe(p); ferr != nil {
				errs[p] = ferr
			} else if ok {
				load(f)
			}
			continue
		}
		if !IsRecipeFile(e.Name()) {
			continue
		}
		load(p)
	}
	return recipes, errs, nil
}

// subdirRecipe finds the recipe file of a component subdirectory.
func subdirRecipe(sub string) (file string, ok bool, err error) {
	for _, n := range SubdirRecipeNames {
		p := filepath.Join(sub, n)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, true, nil
		}
	}
	entries, err := os.ReadDir(sub)
	if err != nil {
		return "", false, &Error{File: sub, Err: fmt.Errorf("%w: %v", ErrInvalid, err)}
	}
	for _, e := range entries {
		if !e.IsDir() && IsRecipeFile(e.Name()) {
			return "", false, &Error{File: filepath.Join(sub, e.Name()), Err: fmt.Errorf("%w: a recipe in a subdirectory must be named %s (this file is not loaded)", ErrInvalid, SubdirRecipeNames[0])}
		}
	}
	return "", false, nil // a directory of artifacts, not a component
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
