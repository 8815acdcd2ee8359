package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	pathpkg "path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/store"
)

// OTA hosting (docs/ota.md, "Host it on outpost-server"): the server keeps
// the TUF repository that `outpost update` verifies, as published by
// `outpost release push`. It never signs: it stores signed metadata and
// targets as they come (checked for shape, name and content hash) and
// serves them with HTTP Range. Files live in the store when it keeps them
// (PostgreSQL: replicas share them), else in Options.OTADir as
// metadata/NAME and targets/PATH, like a static repository.
//
// Invariants: a versioned metadata file (N.role.json) and a target
// (content-addressed: <sha256>.name) never change once stored (a different
// upload is 409); root.json and timestamp.json are replaced atomically.

var (
	otaMetaName   = regexp.MustCompile(`^(?:([1-9][0-9]{0,9})\.)?([a-z0-9][a-z0-9_-]{0,63})\.json$`)
	otaPathSeg    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$`)
	otaTargetBase = regexp.MustCompile(`^([0-9a-f]{64})\.[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$`)
)

// otaMaxMeta bounds a metadata upload.
const otaMaxMeta = 4 << 20

// OTAFiles keeps the hosted repository's files, named "metadata/NAME" and
// "targets/PATH". A Store that implements it (PostgreSQL) keeps them for
// every replica; otherwise they are files under Options.OTADir.
type OTAFiles interface {
	// OpenOTA opens a file for reading with Seek (HTTP Range);
	// store.ErrNotFound when there is none.
	OpenOTA(ctx context.Context, name string) (io.ReadSeekCloser, int64, time.Time, error)
	// PutOTA stores size bytes from r, whose sha256 (hex) is sum. An
	// existing file is replaced only with replace; else the same content
	// is a no-op (created false) and other content store.ErrExists.
	PutOTA(ctx context.Context, name string, r io.Reader, size int64, sum string, replace bool) (created bool, err error)
}

// otaDir keeps OTA files in a directory (one server, or replicas sharing
// a file system).
type otaDir string

func (d otaDir) OpenOTA(_ context.Context, name string) (io.ReadSeekCloser, int64, time.Time, error) {
	f, err := os.Open(filepath.Join(string(d), filepath.FromSlash(name)))
	if err != nil {
		return nil, 0, time.Time{}, fmt.Errorf("ota file %s: %w", name, store.ErrNotFound)
	}
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		f.Close()
		return nil, 0, time.Time{}, fmt.Errorf("ota file %s: %w", name, store.ErrNotFound)
	}
	return f, st.Size(), st.ModTime(), nil
}

func (d otaDir) PutOTA(_ context.Context, name string, r io.Reader, size int64, sum string, replace bool) (bool, error) {
	path := filepath.Join(string(d), filepath.FromSlash(name))
	if !replace {
		if old, err := fileSHA256(path); err == nil {
			if old != sum {
				return false, fmt.Errorf("ota file %s: %w", name, store.ErrExists)
			}
			return false, nil
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return false, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".upload-*")
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp.Name())
	if n, err := io.Copy(tmp, r); err != nil || n != size {
		tmp.Close()
		return false, fmt.Errorf("ota file %s: copied %d of %d bytes: %v", name, n, size, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Close(); err != nil {
		return false, err
	}
	os.Chmod(tmp.Name(), 0o644)
	if err := os.Rename(tmp.Name(), path); err != nil {
		return false, err
	}
	if dir, err := os.Open(filepath.Dir(path)); err == nil {
		dir.Sync()
		dir.Close()
	}
	return true, nil
}

// otaName checks a repository path from the URL ("metadata/..." or
// "targets/...") and returns the file's name ("kind/rel").
func (s *Server) otaName(kind, rel string) (string, error) {
	if s.ota == nil {
		return "", errOTADisabled
	}
	switch kind {
	case "metadata":
		if !otaMetaName.MatchString(rel) {
			return "", fmt.Errorf("metadata name %q: want root.json, timestamp.json or N.ROLE.json (ROLE: lower-case letters, digits, - _)", rel)
		}
	case "targets":
		segs := strings.Split(rel, "/")
		if len(segs) > 8 {
			return "", fmt.Errorf("target path %q: more than 8 levels", rel)
		}
		for i, seg := range segs {
			if !otaPathSeg.MatchString(seg) || seg == "." || seg == ".." {
				return "", fmt.Errorf("target path %q: segment %d %q: want letters, digits and . _ + - (not starting with one of them)", rel, i+1, seg)
			}
		}
		if !otaTargetBase.MatchString(segs[len(segs)-1]) {
			return "", fmt.Errorf("target path %q: the file name must be <sha256 of the content>.NAME (consistent snapshots)", rel)
		}
	}
	return kind + "/" + rel, nil
}

var errOTADisabled = errors.New("OTA hosting is off on this server (run it with --data)")

// handleOTAGet serves a repository file (no auth: everything in it is
// signed, and gateways fetch it like any static repository), with Range.
func (s *Server) handleOTAGet(kind string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name, err := s.otaName(kind, r.PathValue("path"))
		if err != nil {
			writeErr(w, http.StatusNotFound, err.Error())
			return
		}
		f, _, mod, err := s.ota.OpenOTA(r.Context(), name)
		if errors.Is(err, store.ErrNotFound) {
			writeErr(w, http.StatusNotFound, name+": not found")
			return
		}
		if err != nil {
			s.internal(w, "ota", err)
			return
		}
		defer f.Close()
		w.Header().Set("Cache-Control", "no-cache")
		if kind == "metadata" {
			w.Header().Set("Content-Type", "application/json")
		} else {
			w.Header().Set("Content-Type", "application/octet-stream")
		}
		s.otaServed.Inc()
		http.ServeContent(w, r, "", mod, f) // Range, If-Range, HEAD
	}
}

// tufEnvelope is the shape every TUF metadata file has.
type tufEnvelope struct {
	Signed struct {
		Type    string    `json:"_type"`
		Version int64     `json:"version"`
		Expires time.Time `json:"expires"`
	} `json:"signed"`
	Signatures []struct {
		KeyID string `json:"keyid"`
		Sig   string `json:"sig"`
	} `json:"signatures"`
}

// handleOTAPut stores one repository file (operator role).
func (s *Server) handleOTAPut(kind string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rel := r.PathValue("path")
		name, err := s.otaName(kind, rel)
		if errors.Is(err, errOTADisabled) {
			writeErr(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		if err != nil {
			writeErr(w, http.StatusBadRequest, err.Error())
			return
		}
		limit := s.opt.OTAMaxTarget
		if kind == "metadata" {
			limit = otaMaxMeta
		}
		if r.ContentLength > limit {
			writeErr(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("%s/%s: %d bytes, at most %d", kind, rel, r.ContentLength, limit))
			return
		}
		// The upload is checked in a temporary file (in OTADir: on the
		// same file system as a directory-kept repository) before it is
		// stored.
		if err := os.MkdirAll(s.opt.OTADir, 0o755); err != nil {
			s.internal(w, "ota", err)
			return
		}
		tmp, err := os.CreateTemp(s.opt.OTADir, ".upload-*")
		if err != nil {
			s.internal(w, "ota", err)
			return
		}
		defer os.Remove(tmp.Name())
		defer tmp.Close()
		h := sha256.New()
		n, err := io.Copy(io.MultiWriter(tmp, h), http.MaxBytesReader(w, r.Body, limit))
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				writeErr(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("%s/%s: more than %d bytes", kind, rel, limit))
				return
			}
			writeErr(w, http.StatusBadRequest, fmt.Sprintf("%s/%s: reading the body: %v", kind, rel, err))
			return
		}
		sum := hex.EncodeToString(h.Sum(nil))
		mutable := false
		if kind == "targets" {
			if want := otaTargetBase.FindStringSubmatch(pathpkg.Base(name))[1]; want != sum {
				writeErr(w, http.StatusBadRequest, fmt.Sprintf("targets/%s: content sha256 %s does not match the name", rel, sum))
				return
			}
		} else {
			m := otaMetaName.FindStringSubmatch(rel)
			role := m[2]
			mutable = m[1] == ""
			if mutable && role != "root" && role != "timestamp" {
				writeErr(w, http.StatusBadRequest, fmt.Sprintf("metadata/%s: only root.json and timestamp.json are unversioned; want N.%s.json", rel, role))
				return
			}
			if err := checkMetadata(tmp, rel, m[1], role); err != nil {
				writeErr(w, http.StatusBadRequest, err.Error())
				return
			}
		}
		if _, err := tmp.Seek(0, io.SeekStart); err != nil {
			s.internal(w, "ota", err)
			return
		}
		created, err := s.ota.PutOTA(r.Context(), name, tmp, n, sum, mutable)
		if errors.Is(err, store.ErrExists) {
			writeErr(w, http.StatusConflict, fmt.Sprintf("%s exists with other content (versioned metadata and targets never change; publish a new version)", name))
			return
		}
		if err != nil {
			s.internal(w, "ota", err)
			return
		}
		if !created {
			w.WriteHeader(http.StatusNoContent) // the same file again: idempotent
			return
		}
		s.otaStored.Inc()
		s.log.Info("fleet: OTA file stored", "file", name, "bytes", n)
		w.WriteHeader(http.StatusCreated)
	}
}

// checkMetadata checks that f holds one TUF metadata object whose type and
// version match its name. Signatures are the gateways' business (the
// server holds no keys and trusts none).
func checkMetadata(f *os.File, rel, version, role string) error {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return err
	}
	var env tufEnvelope
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&env); err != nil {
		return fmt.Errorf("metadata/%s: not TUF metadata: %v", rel, err)
	}
	want := role
	switch role {
	case "root", "timestamp", "snapshot", "targets":
	default:
		want = "targets" // a delegated targets role
	}
	switch {
	case env.Signed.Type != want:
		return fmt.Errorf("metadata/%s: signed._type %q, want %q", rel, env.Signed.Type, want)
	case len(env.Signatures) == 0:
		return fmt.Errorf("metadata/%s: signatures: none (the server stores signed metadata only)", rel)
	case env.Signed.Version < 1:
		return fmt.Errorf("metadata/%s: signed.version: want >= 1", rel)
	case version != "" && strconv.FormatInt(env.Signed.Version, 10) != version:
		return fmt.Errorf("metadata/%s: signed.version %d does not match the name", rel, env.Signed.Version)
	}
	return nil
}

func fileSHA256(path string) (string, error) {
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
