package loadgen

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// waitDial polls until addr accepts TCP connections.
func waitDial(t *testing.T, network, addr string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		c, err := net.DialTimeout(network, addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s %s not accepting connections after %s: %v", network, addr, within, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// mosquitto runs a real Mosquitto as a child process with a temporary
// config on a free loopback port. Without the binary the test is skipped,
// except under CI (CI=true) where it fails.
type mosquitto struct {
	url string
	pid int
	log *syncBuffer
}

func startMosquitto(t *testing.T, users map[string]string, extra ...string) *mosquitto {
	t.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		for _, p := range []string{"/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"} {
			if _, e := os.Stat(p); e == nil {
				bin, err = p, nil
			}
		}
	}
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("mosquitto not installed (apt-get install -y mosquitto)")
		}
		t.Skip("mosquitto not installed (apt-get install -y mosquitto)")
	}
	dir := t.TempDir()
	addr := freeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	conf := []string{"listener " + port + " 127.0.0.1", "max_queued_messages 100000", "set_tcp_nodelay true",
		"user root"} // root: no privilege drop, so it can read files in the 0700 temp dir
	if users == nil {
		conf = append(conf, "allow_anonymous true")
	} else {
		var pw bytes.Buffer
		pwFile := filepath.Join(dir, "passwd")
		if err := os.WriteFile(pwFile, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		for u, p := range users {
			out, err := exec.Command("mosquitto_passwd", "-b", pwFile, u, p).CombinedOutput()
			if err != nil {
				t.Fatalf("mosquitto_passwd: %v: %s", err, out)
			}
		}
		_ = pw
		conf = append(conf, "allow_anonymous false", "password_file "+pwFile)
	}
	conf = append(conf, extra...)
	cf := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(cf, []byte(strings.Join(conf, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	m := &mosquitto{url: "tcp://" + addr, log: &syncBuffer{}}
	cmd := exec.Command(bin, "-c", cf)
	cmd.Stdout, cmd.Stderr = m.log, m.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m.pid = cmd.Process.Pid
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("mosquitto log:\n%s", m.log.String())
		}
	})
	waitDial(t, "tcp", addr, 5*time.Second)
	return m
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// selfSigned writes a CA-less self-signed certificate for 127.0.0.1 and
// returns the server TLS config and the PEM path a client trusts.
func selfSigned(t *testing.T) (*tls.Config, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	kb, _ := x509.MarshalECPrivateKey(key)
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
	kp, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{kp}, MinVersion: tls.VersionTLS12}, ca
}

// runBench runs a bounded benchmark with a test-sized drain.
func runBench(t *testing.T, c Config) *Result {
	t.Helper()
	if c.Drain == 0 {
		c.Drain = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := Run(ctx, c)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	return res
}

// checkComplete asserts a low-rate run delivered everything exactly once.
func checkComplete(t *testing.T, res *Result, wantSent uint64) {
	t.Helper()
	if res.Sent != wantSent {
		t.Errorf("sent %d, want %d", res.Sent, wantSent)
	}
	want := wantSent * uint64(res.Subscribers)
	if res.Received != want || res.Unique != want || res.Expected != want {
		t.Errorf("received %d unique %d expected %d, want %d", res.Received, res.Unique, res.Expected, want)
	}
	if res.Lost != 0 || res.Duplicates != 0 || res.Foreign != 0 {
		t.Errorf("lost %d duplicates %d foreign %d", res.Lost, res.Duplicates, res.Foreign)
	}
	if res.Subscribers > 0 && (res.Latency.Count != int64(want) || res.Latency.P50 <= 0 || res.Latency.Max < res.Latency.P99) {
		t.Errorf("latency %+v", res.Latency)
	}
	if res.Loadgen.UserSeconds+res.Loadgen.SystemSeconds <= 0 {
		t.Errorf("loadgen cpu %+v", res.Loadgen)
	}
	if len(res.Errors) != 0 || res.Interrupted {
		t.Errorf("errors %v interrupted %v", res.Errors, res.Interrupted)
	}
}
