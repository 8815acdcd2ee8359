package mosq

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Certs is a throwaway PKI written as PEM files: an ECDSA P-256 CA, a server
// certificate for 127.0.0.1 / localhost and a client certificate (for mTLS),
// both signed by the CA.
type Certs struct {
	Dir        string
	CAFile     string // CA certificate (PEM)
	CAKeyFile  string
	ServerCert string // server certificate, SANs 127.0.0.1, ::1, localhost
	ServerKey  string
	ClientCert string // client certificate, CN ClientCN, ExtKeyUsage client auth
	ClientKey  string
	ClientCN   string
}

// GenerateCerts writes a fresh CA, server and client certificate into dir,
// with file names starting with prefix (e.g. "" or "other-"). Each call makes
// a new, unrelated CA, so a second call gives a "wrong CA" for negative tests.
func GenerateCerts(dir, prefix string) (*Certs, error) {
	c := &Certs{
		Dir:        dir,
		CAFile:     filepath.Join(dir, prefix+"ca.pem"),
		CAKeyFile:  filepath.Join(dir, prefix+"ca-key.pem"),
		ServerCert: filepath.Join(dir, prefix+"server.pem"),
		ServerKey:  filepath.Join(dir, prefix+"server-key.pem"),
		ClientCert: filepath.Join(dir, prefix+"client.pem"),
		ClientKey:  filepath.Join(dir, prefix+"client-key.pem"),
		ClientCN:   "outpost-test-client",
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("mosq: ca key: %w", err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: prefix + "outpost test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("mosq: ca cert: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	if err := writeCert(c.CAFile, caDER); err != nil {
		return nil, err
	}
	if err := writeKey(c.CAKeyFile, caKey); err != nil {
		return nil, err
	}
	leaf := func(certFile, keyFile string, tmpl *x509.Certificate) error {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return fmt.Errorf("mosq: key: %w", err)
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
		if err != nil {
			return fmt.Errorf("mosq: sign %s: %w", certFile, err)
		}
		if err := writeCert(certFile, der); err != nil {
			return err
		}
		return writeKey(keyFile, k)
	}
	if err := leaf(c.ServerCert, c.ServerKey, &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}); err != nil {
		return nil, err
	}
	if err := leaf(c.ClientCert, c.ClientKey, &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: c.ClientCN},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return nil, err
	}
	return c, nil
}

// ClientTLS returns a tls.Config trusting the CA, presenting the client
// certificate when withClientCert is true.
func (c *Certs) ClientTLS(withClientCert bool) (*tls.Config, error) {
	pemBytes, err := os.ReadFile(c.CAFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		return nil, fmt.Errorf("mosq: no certificate in %s", c.CAFile)
	}
	cfg := &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS12}
	if withClientCert {
		kp, err := tls.LoadX509KeyPair(c.ClientCert, c.ClientKey)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{kp}
	}
	return cfg, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		panic(err)
	}
	return n
}

func writeCert(path string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func writeKey(path string, k *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return err
	}
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}
