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
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/proto"
)

// Files of a renewal in progress (in the fleet directory, mode 0600):
//   - renew-key.pem: the new key, written before the CSR is sent, so a
//     renewal whose answer was lost asks again with the same key (the
//     server accepts that from the superseded certificate: the serial is
//     derived from the key);
//   - renewed.pem: the new key and certificate in one file, written
//     atomically when the answer arrives; key.pem and cert.pem are then
//     replaced and both files removed. LoadIdentity finishes an install
//     that a crash cut off, so key.pem and cert.pem never stay mismatched.
const (
	renewKeyFile = "renew-key.pem"
	renewedFile  = "renewed.pem"
)

// RenewAt is when the identity's certificate should be renewed: at 2/3 of
// its lifetime.
func (id *Identity) RenewAt() time.Time {
	l := id.cert.Leaf
	return l.NotBefore.Add(l.NotAfter.Sub(l.NotBefore) * 2 / 3)
}

// NotAfter is the certificate's expiry.
func (id *Identity) NotAfter() time.Time { return id.cert.Leaf.NotAfter }

// Serial is the certificate's serial in hex (as the registry shows it).
func (id *Identity) Serial() string { return id.cert.Leaf.SerialNumber.Text(16) }

// Renew asks the server (over mTLS with the current certificate) for a
// certificate for a new key, stores it in dir and returns the new
// identity. A *StatusError 403 means the gateway is revoked.
func Renew(ctx context.Context, dir string, id *Identity, server string) (*Identity, error) {
	key, err := pendingKey(dir)
	if err != nil {
		return nil, err
	}
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: id.ID}}, key)
	if err != nil {
		return nil, fmt.Errorf("fleet: renew: csr: %w", err)
	}
	body, _ := json.Marshal(proto.RenewRequest{CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER}))})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, server+"/api/v1/agent/renew", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	hc := id.HTTPClient()
	defer hc.CloseIdleConnections()
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fleet: renew: %w", err)
	}
	defer resp.Body.Close()
	if err := httpError(resp); err != nil {
		return nil, fmt.Errorf("fleet: renew: %w", err)
	}
	var er proto.EnrollResponse
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&er); err != nil {
		return nil, fmt.Errorf("fleet: renew: response: %w", err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
	if _, err := tls.X509KeyPair([]byte(er.Certificate), keyPEM); err != nil {
		return nil, fmt.Errorf("fleet: renew: the server's certificate does not match the key: %w", err)
	}
	if err := writeFile(filepath.Join(dir, renewedFile), append(keyPEM, er.Certificate...)); err != nil {
		return nil, err
	}
	if err := finishRenewal(dir); err != nil {
		return nil, err
	}
	return LoadIdentity(dir)
}

// pendingKey returns the key of an unfinished renewal or makes (and
// stores) a new one.
func pendingKey(dir string) (*ecdsa.PrivateKey, error) {
	path := filepath.Join(dir, renewKeyFile)
	if b, err := os.ReadFile(path); err == nil {
		if blk, _ := pem.Decode(b); blk != nil {
			if k, err := x509.ParsePKCS8PrivateKey(blk.Bytes); err == nil {
				if ek, ok := k.(*ecdsa.PrivateKey); ok {
					return ek, nil
				}
			}
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	if err := writeFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})); err != nil {
		return nil, err
	}
	return key, nil
}

// finishRenewal installs renewed.pem (if present) as key.pem + cert.pem.
func finishRenewal(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, renewedFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("fleet: %w", err)
	}
	var keyPEM, certPEM []byte
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		switch blk.Type {
		case "PRIVATE KEY":
			keyPEM = pem.EncodeToMemory(blk)
		case "CERTIFICATE":
			certPEM = append(certPEM, pem.EncodeToMemory(blk)...)
		}
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		// Cannot happen for a file this package wrote (atomic, checked);
		// keep the old pair rather than install a broken one.
		os.Remove(filepath.Join(dir, renewedFile))
		return fmt.Errorf("fleet: %s: %w", renewedFile, err)
	}
	if err := writeFile(filepath.Join(dir, "key.pem"), keyPEM); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(dir, "cert.pem"), certPEM); err != nil {
		return err
	}
	os.Remove(filepath.Join(dir, renewKeyFile))
	if err := os.Remove(filepath.Join(dir, renewedFile)); err != nil {
		return fmt.Errorf("fleet: %w", err)
	}
	return nil
}
