package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"testing"
	"time"
)

func testTLSCert(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(c)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool
}

// The listener hands out connections whose handshake is complete (done in
// a goroutine of its own, not in net/http's per-connection goroutine), a
// client that never speaks does not hold up the others and is dropped
// after the timeout, and Close ends Accept.
func TestHandshakeListener(t *testing.T) {
	cert, pool := testTLSCert(t)
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}}
	l := newHandshakeListener(raw, cfg, 500*time.Millisecond)
	defer l.Close()

	silent, err := net.Dial("tcp", raw.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		c, err := tls.Dial("tcp", raw.Addr().String(), &tls.Config{RootCAs: pool, NextProtos: []string{"h2"}})
		if err == nil {
			c.Write([]byte("x"))
			c.Close()
		}
	}()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			t.Error(err)
		}
		accepted <- c
	}()
	select {
	case c := <-accepted:
		if c == nil {
			t.FailNow()
		}
		tc, ok := c.(*tls.Conn)
		if !ok {
			t.Fatalf("Accept returned %T, want *tls.Conn", c)
		}
		if st := tc.ConnectionState(); !st.HandshakeComplete || st.NegotiatedProtocol != "h2" {
			t.Fatalf("accepted a connection before its handshake: complete %v, protocol %q", st.HandshakeComplete, st.NegotiatedProtocol)
		}
		c.Close()
	case <-time.After(30 * time.Second):
		t.Fatal("the TLS client was not accepted (held up by the silent one?)")
	}
	// The silent client is dropped after the handshake timeout.
	silent.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadAll(silent); err != nil {
		t.Fatalf("silent client: want the server to close it after 500ms, got %v", err)
	}
	go func() { time.Sleep(50 * time.Millisecond); l.Close() }()
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
	}
}
