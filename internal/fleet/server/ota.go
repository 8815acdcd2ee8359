package server

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// OTA hosting (docs/ota.md, "Host it on outpost-server"): the server keeps
// the TUF repository that `outpost update` verifies, as published by
// `outpost release push`. It never signs: it stores signed metadata and
// targets as they come (checked for shape, name and content hash) and
// serves them with HTTP Range. Files live in Options.OTADir:
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

// otaPath checks a repository path from the URL ("metadata/..." or
// "targets/...") and returns the file path under the OTA directory.
func (s *Server) otaPath(kind, rel string) (string, error) {
	if s.opt.OTADir == "" {
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
	return filepath.Join(s.opt.OTADir, kind, filepath.FromSlash(rel)), nil
}

var errOTADisabled = errors.New("OTA hosting is off on this server (run it with --data)")

// handleOTAGet serves a repository file (no auth: everything in it is
// signed, and gateways fetch it like any static repository), with Range.
func (s *Server) handleOTAGet(kind string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		path, err := s.otaPath(kind, r.PathValue("path"))
		if errors.Is(err, errOTADisabled) {
			writeErr(w, http.StatusNotFound, err.Error())
			return
		}
		if err != nil {
			writeErr(w, http.StatusNotFound, err.Error())
			return
		}
		f, err := os.Open(path)
		if err != nil {
			writeErr(w, http.StatusNotFound, kind+"/"+r.PathValue("path")+": not found")
			return
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil || !st.Mode().IsRegular() {
			writeErr(w, http.StatusNotFound, kind+"/"+r.PathValue("path")+": not found")
			return
		}
		w.Header().Set("Cache-Control", "no-cache")
		if kind == "metadata" {
			w.Header().Set("Content-Type", "application/json")
		} else {
			w.Header().Set("Content-Type", "application/octet-stream")
		}
		s.otaServed.Inc()
		http.ServeContent(w, r, "", st.ModTime(), f) // Range, If-Range, HEAD
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
		path, err := s.otaPath(kind, rel)
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
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			s.internal(w, "ota", err)
			return
		}
		tmp, err := os.CreateTemp(filepath.Dir(path), ".upload-*")
		if err != nil {
			s.internal(w, "ota", err)
			return
		}
		defer os.Remove(tmp.Name())
		h := sha256.New()
		n, err := io.Copy(io.MultiWriter(tmp, h), http.MaxBytesReader(w, r.Body, limit))
		if err != nil {
			tmp.Close()
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
			if want := otaTargetBase.FindStringSubmatch(filepath.Base(path))[1]; want != sum {
				tmp.Close()
				writeErr(w, http.StatusBadRequest, fmt.Sprintf("targets/%s: content sha256 %s does not match the name", rel, sum))
				return
			}
		} else {
			m := otaMetaName.FindStringSubmatch(rel)
			role := m[2]
			mutable = m[1] == ""
			if mutable && role != "root" && role != "timestamp" {
				tmp.Close()
				writeErr(w, http.StatusBadRequest, fmt.Sprintf("metadata/%s: only root.json and timestamp.json are unversioned; want N.%s.json", rel, role))
				return
			}
			if err := checkMetadata(tmp, rel, m[1], role); err != nil {
				tmp.Close()
				writeErr(w, http.StatusBadRequest, err.Error())
				return
			}
		}
		if !mutable {
			if old, err := fileSHA256(path); err == nil {
				tmp.Close()
				if old != sum {
					writeErr(w, http.StatusConflict, fmt.Sprintf("%s/%s exists with other content (versioned metadata and targets never change; publish a new version)", kind, rel))
					return
				}
				w.WriteHeader(http.StatusNoContent) // the same file again: idempotent
				return
			}
		}
		if err := tmp.Sync(); err != nil {
			tmp.Close()
			s.internal(w, "ota", err)
			return
		}
		if err := tmp.Close(); err != nil {
			s.internal(w, "ota", err)
			return
		}
		os.Chmod(tmp.Name(), 0o644)
		if err := os.Rename(tmp.Name(), path); err != nil {
			s.internal(w, "ota", err)
			return
		}
		if d, err := os.Open(filepath.Dir(path)); err == nil {
			d.Sync()
			d.Close()
		}
		s.otaStored.Inc()
		s.log.Info("fleet: OTA file stored", "file", kind+"/"+rel, "bytes", n)
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
