// Package client is the gateway side of the fleet: enrollment (a key pair
// made here, a CSR, a client certificate from the fleet CA), and the Syncer,
// an informer that Lists then Watches the gateway's desired state over one
// long-lived mTLS HTTP/2 stream, keeps it in a persisted cache (so a
// gateway rebooted without network runs its last desired state), hands
// every changed object to an Applier and reports status back.
//
// Files in the fleet directory (default DATA_DIR/fleet, all 0600):
// key.pem, cert.pem, ca.pem, server.json (server URL and gateway id),
// cache.json (the desired state, what was applied, the last status).
package client

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/proto"
)

// ErrNotEnrolled is returned when the fleet directory holds no identity.
var ErrNotEnrolled = errors.New("fleet: not enrolled (run: outpost enroll --server URL --token TOKEN --ca CA.pem)")

// Identity is an enrolled gateway's credentials.
type Identity struct {
	Server string `json:"server"`
	ID     string `json:"id"`
	cert   tls.Certificate
	pool   *x509.CertPool
}

// EnrollOptions are the inputs of Enroll.
type EnrollOptions struct {
	Server string // https://host:port
	Token  string
	CAPEM  []byte // the fleet CA (trusted for the server's certificate)
	ID     string // the gateway id (its node_id)
	Dir    string // the fleet directory
	Facts  map[string]string
}

// Enroll makes a key pair, sends a CSR with the bootstrap token and stores
// key, certificate, CA and server in opt.Dir.
func Enroll(ctx context.Context, opt EnrollOptions) error {
	if !strings.HasPrefix(opt.Server, "https://") {
		return fmt.Errorf("fleet: enroll: server %q: want https://host:port", opt.Server)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(opt.CAPEM) {
		return errors.New("fleet: enroll: the CA file holds no PEM certificate")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: opt.ID}}, key)
	if err != nil {
		return fmt.Errorf("fleet: enroll: csr: %w", err)
	}
	body, _ := json.Marshal(proto.EnrollRequest{Token: opt.Token, ID: opt.ID, Facts: opt.Facts,
		CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER}))})
	// One request: no idle keep-alive connection is left behind (a
	// program enrolling thousands of gateways ran out of descriptors).
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, ForceAttemptHTTP2: true, DisableKeepAlives: true}}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(opt.Server, "/")+"/api/v1/enroll", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("fleet: enroll: %w", err)
	}
	defer resp.Body.Close()
	if err := httpError(resp); err != nil {
		return fmt.Errorf("fleet: enroll: %w", err)
	}
	var er proto.EnrollResponse
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&er); err != nil {
		return fmt.Errorf("fleet: enroll: response: %w", err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(opt.Dir, 0o700); err != nil {
		return fmt.Errorf("fleet: enroll: %w", err)
	}
	meta, _ := json.MarshalIndent(Identity{Server: strings.TrimRight(opt.Server, "/"), ID: er.ID}, "", "  ")
	for name, data := range map[string][]byte{
		"key.pem":  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}),
		"cert.pem": []byte(er.Certificate),
		"ca.pem":   []byte(er.CA),
	} {
		if err := writeFile(filepath.Join(opt.Dir, name), data); err != nil {
			return err
		}
	}
	// server.json last: its presence means "enrolled".
	return writeFile(filepath.Join(opt.Dir, "server.json"), meta)
}

// httpError turns a non-2xx answer into an error carrying the server's
// message and the status code.
func httpError(resp *http.Response) error {
	if resp.StatusCode/100 == 2 {
		return nil
	}
	var e proto.Error
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(b, &e) != nil || e.Error == "" {
		e.Error = strings.TrimSpace(string(b))
	}
	return &StatusError{Code: resp.StatusCode, Msg: e.Error}
}

// StatusError is a non-2xx answer from the server.
type StatusError struct {
	Code int
	Msg  string
}

func (e *StatusError) Error() string { return fmt.Sprintf("server answered %d: %s", e.Code, e.Msg) }

// writeFile writes atomically with mode 0600 (temp file, fsync, rename).
func writeFile(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("fleet: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("fleet: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("fleet: fsync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("fleet: %w", err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// LoadIdentity reads an enrolled identity from dir.
func LoadIdentity(dir string) (*Identity, error) {
	meta, err := os.ReadFile(filepath.Join(dir, "server.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNotEnrolled
	}
	if err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	var id Identity
	if err := json.Unmarshal(meta, &id); err != nil {
		return nil, fmt.Errorf("fleet: %s: %w", filepath.Join(dir, "server.json"), err)
	}
	if err := finishRenewal(dir); err != nil {
		return nil, err
	}
	id.cert, err = tls.LoadX509KeyPair(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		return nil, fmt.Errorf("fleet: identity: %w", err)
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	id.pool = x509.NewCertPool()
	if !id.pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("fleet: ca.pem holds no certificate")
	}
	return &id, nil
}

// HTTPClient returns an mTLS HTTP/2 client for the identity (no overall
// timeout: watch requests are long-lived; use contexts).
func (id *Identity) HTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: id.pool, Certificates: []tls.Certificate{id.cert}, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2: true, IdleConnTimeout: 90 * time.Second, TLSHandshakeTimeout: 10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
	}}
}
