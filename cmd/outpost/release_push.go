package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/internal/cli"
)

// pushMetaName is what outpost-server stores as metadata (root.json,
// timestamp.json, N.ROLE.json).
var pushMetaName = regexp.MustCompile(`^(?:([1-9][0-9]{0,9})\.)?([a-z0-9][a-z0-9_-]{0,63})\.json$`)

// pushResult counts what push did.
type pushResult struct {
	Uploaded, Skipped int
	Bytes             int64
}

// pushRepo publishes a local repository to outpost-server's OTA hosting
// (docs/ota.md): targets first, then versioned metadata, then root.json and
// timestamp.json last, so a gateway never sees metadata that names a file
// the server does not have yet. Targets the server already has (same name,
// same length: names are content hashes) are skipped. The server stores
// what it gets and never signs: the keys stay here.
func pushRepo(ctx context.Context, dir, server, caFile, token string) (pushResult, error) {
	var res pushResult
	if _, err := os.Stat(filepath.Join(dir, "metadata", "root.json")); err != nil {
		return res, fmt.Errorf("%s is not a repository: %w", dir, err)
	}
	if !strings.HasPrefix(server, "https://") {
		return res, fmt.Errorf("--server %q: want https://host:port", server)
	}
	if token == "" {
		return res, errors.New("no API token: set OUTPOST_SERVER_TOKEN (an operator or admin token of outpost-server)")
	}
	tr := &http.Transport{ForceAttemptHTTP2: true, TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12}}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return res, fmt.Errorf("--ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return res, fmt.Errorf("--ca %s: no PEM certificate", caFile)
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	hc := &http.Client{Transport: tr}
	defer hc.CloseIdleConnections()
	base := strings.TrimRight(server, "/") + "/api/v1/ota/"

	var targets []string
	err := filepath.WalkDir(filepath.Join(dir, "targets"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), ".") && p != filepath.Join(dir, "targets") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.Type().IsRegular() {
			rel, _ := filepath.Rel(filepath.Join(dir, "targets"), p)
			targets = append(targets, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		return res, err
	}
	sort.Strings(targets)
	ents, err := os.ReadDir(filepath.Join(dir, "metadata"))
	if err != nil {
		return res, err
	}
	type meta struct {
		name string
		v    int
	}
	var versioned []meta
	for _, e := range ents {
		m := pushMetaName.FindStringSubmatch(e.Name())
		if m == nil || m[1] == "" || !e.Type().IsRegular() {
			continue // root.json and timestamp.json go last; others are not published
		}
		v, _ := strconv.Atoi(m[1])
		versioned = append(versioned, meta{e.Name(), v})
	}
	// Roots in version order (a gateway walks the chain), then the rest.
	sort.Slice(versioned, func(i, j int) bool {
		ri, rj := strings.HasSuffix(versioned[i].name, ".root.json"), strings.HasSuffix(versioned[j].name, ".root.json")
		if ri != rj {
			return ri
		}
		if versioned[i].v != versioned[j].v {
			return versioned[i].v < versioned[j].v
		}
		return versioned[i].name < versioned[j].name
	})
	for _, t := range targets {
		if err := pushFile(ctx, hc, base+"targets/"+t, filepath.Join(dir, "targets", filepath.FromSlash(t)), token, true, &res); err != nil {
			return res, err
		}
	}
	for _, m := range versioned {
		if err := pushFile(ctx, hc, base+"metadata/"+m.name, filepath.Join(dir, "metadata", m.name), token, false, &res); err != nil {
			return res, err
		}
	}
	for _, name := range []string{"root.json", "timestamp.json"} {
		if err := pushFile(ctx, hc, base+"metadata/"+name, filepath.Join(dir, "metadata", name), token, false, &res); err != nil {
			return res, err
		}
	}
	return res, nil
}

func pushFile(ctx context.Context, hc *http.Client, url, path, token string, target bool, res *pushResult) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if target {
		// Names are content hashes: the same name and length is the same file.
		req, _ := http.NewRequestWithContext(ctx, http.MethodHead, url, nil)
		if resp, err := hc.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && resp.ContentLength == st.Size() {
				res.Skipped++
				return nil
			}
		}
	} else {
		// Metadata is small: compare the bytes (root.json and
		// timestamp.json are replaced on the server when they differ).
		local, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if resp, err := hc.Do(req); err == nil {
			remote, _ := io.ReadAll(io.LimitReader(resp.Body, int64(len(local))+1))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && bytes.Equal(remote, local) {
				res.Skipped++
				return nil
			}
		}
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPut, url, f)
	if err != nil {
		return err
	}
	req.ContentLength = st.Size()
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("PUT %s: %w", url, err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusCreated:
		res.Uploaded++
		res.Bytes += st.Size()
		return nil
	case http.StatusNoContent:
		res.Skipped++
		return nil
	}
	return fmt.Errorf("PUT %s: server answered %d: %s", url, resp.StatusCode, cli.AnswerError(resp))
}
