package broker

import (
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
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/outpost-edge/outpost/internal/config"
	"github.com/outpost-edge/outpost/internal/loadgen"
)

// TestClientIDBinding: devices sharing an ACL with %c cannot impersonate
// each other once client ids are bound to users: dev1 may use dev1-*, not
// dev2's ids (CONNACK 0x85; 3.1.1: 0x02 identifier rejected).
func TestClientIDBinding(t *testing.T) {
	c := baseConfig(t)
	c.ClientIDPattern = "%u.*"
	devACL := []ACLRule{{Topic: "sensors/%c/#", Access: AccessPublish}}
	c.Users = append(c.Users,
		User{Username: "dev1", PasswordHash: testHash, ACL: devACL},
		User{Username: "dev2", PasswordHash: testHash, ACL: devACL})
	c.Users[1].ClientIDPattern = "admin:*" // "*" would overlap every binding
	c.Users[0].ClientIDPattern = "%u"
	tb := startBroker(t, c, "")
	cases := []struct {
		id, user string
		want     int
	}{
		{"dev1.a", "dev1", 0},
		{"dev1.", "dev1", 0},
		{"dev2.a", "dev1", 0x02},
		{"dev1", "dev1", 0x02},
		{"", "dev1", 0x02},
		{"dev2.x", "dev2", 0},
		{"alice", "alice", 0},
		{"alice.1", "alice", 0x02},
		{"admin:tool", "admin", 0},
		{"whatever", "admin", 0x02},
	}
	for _, tc := range cases {
		if rc := rawConnect(t, tb.addr, tc.id, tc.user, "secret"); rc != tc.want {
			t.Errorf("user %s client id %q: return code %d, want %d", tc.user, tc.id, rc, tc.want)
		}
	}
	if _, ca, err := dialV5(t, "tcp", tb.addr, "dev2.a", "dev1", "secret", true); err == nil || ca == nil || ca.ReasonCode != 0x85 {
		t.Fatalf("MQTT 5 dev1 as dev2.a: err=%v connack=%+v, want 0x85", err, ca)
	}
	if got := tb.counter(t, `outpost_broker_login_refusals_total{reason="client_id"}`); got != 6 {
		t.Fatalf("client_id refusals = %d, want 6", got)
	}
}

func TestClientIDPatternMatchAndOverlap(t *testing.T) {
	for _, tc := range []struct {
		pattern, user, id string
		want              bool
	}{
		{"%u", "dev", "dev", true},
		{"%u", "dev", "dev2", false},
		{"%u-*", "dev", "dev-", true},
		{"%u-*", "dev", "dev-a-b", true},
		{"%u-*", "dev", "dev", false},
		{"*-%u", "dev", "x-dev", true},
		{"a*b*c", "", "abxbc", true},
		{"a*b*c", "", "acb", false},
		{"%u*", "d*v", "d*v1", true},
		{"%u*", "d*v", "dxv1", false}, // a * in a username is literal
	} {
		if got := compileClientIDPattern(tc.pattern, tc.user).match(tc.id); got != tc.want {
			t.Errorf("%q for %q matches %q = %v, want %v", tc.pattern, tc.user, tc.id, got, tc.want)
		}
	}
	for _, tc := range []struct {
		a, ua, b, ub string
		overlap      bool
	}{
		{"%u-*", "dev", "%u-*", "dev-1", true},
		{"%u-*", "dev", "%u-*", "dev1", false},
		{"%u", "dev", "%u", "dev1", false},
		{"%u*", "dev", "%u", "dev1", true},
		{"*", "a", "%u", "b", true},
		{"%u.*", "a", "*.%u", "b", true},
		{"%u.*", "a", "%u.*", "b", false},
	} {
		pa, pb := compileClientIDPattern(tc.a, tc.ua), compileClientIDPattern(tc.b, tc.ub)
		id, got := pa.overlap(pb)
		if got != tc.overlap {
			t.Errorf("%q/%s and %q/%s overlap = %v (%q), want %v", tc.a, tc.ua, tc.b, tc.ub, got, id, tc.overlap)
		}
		if got && (!pa.match(id) || !pb.match(id)) {
			t.Errorf("%q/%s and %q/%s: witness %q does not match both", tc.a, tc.ua, tc.b, tc.ub, id)
		}
	}
}

func TestLoginConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string // "" = valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"bound users", func(c *Config) { c.ClientIDPattern = "%u-*" }, ""},
		{"overlapping bindings", func(c *Config) {
			c.ClientIDPattern = "%u-*"
			c.Users = append(c.Users, User{Username: "alice-1", PasswordHash: testHash})
		}, `client_id_pattern: users "alice" and "alice-1" may both use client id "alice-1-"`},
		{"overlap per user", func(c *Config) { c.Users[1].ClientIDPattern = "*"; c.Users[0].ClientIDPattern = "%u" },
			`users[1].client_id_pattern: users "alice" and "admin" may both use client id "alice"`},
		{"bad pattern", func(c *Config) { c.Users[0].ClientIDPattern = "%c-*" }, "users[0].client_id_pattern"},
		{"connect_timeout", func(c *Config) { c.Limits.ConnectTimeout = config.Duration(time.Hour) }, "limits.connect_timeout"},
		{"max_parallel_hashes", func(c *Config) { c.Login.MaxParallelHashes = -1 }, "login.max_parallel_hashes"},
		{"backoff_max", func(c *Config) { c.Login.BackoffMax = config.Duration(time.Millisecond) }, "login.backoff_max"},
		{"tracked", func(c *Config) { c.Login.Tracked = 1 }, "login.tracked"},
		{"hash_wait vs connect_timeout", func(c *Config) {
			c.Limits.ConnectTimeout = config.Duration(time.Second)
			c.Login.HashWait = config.Duration(time.Second)
		}, "login.hash_wait: must be shorter than limits.connect_timeout (1s)"},
		{"identity", func(c *Config) {
			c.Listeners = []Listener{{Type: TypeTLS, Address: "127.0.0.1:0", TLS: TLS{Identity: "cert_uid"}}}
		}, `unknown identity "cert_uid"`},
		{"identity needs ca", func(c *Config) {
			c.Listeners = []Listener{{Type: TypeTLS, Address: "127.0.0.1:0", TLS: TLS{Identity: IdentityCertCN}}}
		}, "identity cert_cn needs client_ca_file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := baseConfig(t)
			tc.edit(c)
			c.SetDefaults()
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// writeClientCert writes a client certificate signed by s with the given
// common name and DNS names.
func writeClientCert(t *testing.T, dir, name, cn string, dns []string, s *signer) (certFile, keyFile string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: dns,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.cert, &key.PublicKey, s.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return certFile, keyFile
}

// TestCertificateIdentity: on a listener with identity cert_cn (cert_san)
// the verified certificate's CN (its one DNS name) is the username, whatever
// the CONNECT says; no certificate, or an identity that is not a user, is
// refused (0x87); with client_id_pattern "%u" the client id is bound to the
// certificate too.
func TestCertificateIdentity(t *testing.T) {
	dir := t.TempDir()
	ca, caKey := newCA(t)
	s := &signer{ca, caKey}
	serverCert, serverKey := writeCert(t, dir, "server", s)
	caFile := filepath.Join(dir, "ca.pem")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw}), 0o600)
	aliceCN, aliceCNKey := writeClientCert(t, dir, "cn-alice", "alice", nil, s)
	aliceSAN, aliceSANKey := writeClientCert(t, dir, "san-alice", "someone", []string{"alice"}, s)
	twoSAN, twoSANKey := writeClientCert(t, dir, "san-two", "x", []string{"alice", "admin"}, s)
	mallory, malloryKey := writeClientCert(t, dir, "cn-mallory", "mallory", nil, s)

	c := baseConfig(t)
	c.Users[0].ClientIDPattern = "%u"
	tlsConf := TLS{CertFile: serverCert, KeyFile: serverKey, ClientCAFile: caFile}
	cn, san := tlsConf, tlsConf
	cn.Identity, san.Identity = IdentityCertCN, IdentityCertSAN
	c.Listeners = []Listener{
		{Name: "cn", Type: TypeTLS, Address: "127.0.0.1:0", TLS: cn},
		{Name: "san", Type: TypeTLS, Address: "127.0.0.2:0", TLS: san},
	}
	tb := startBroker(t, c, "")
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	connect := func(listener, cert, key, id, user string) byte {
		t.Helper()
		tc := &tls.Config{RootCAs: pool, ServerName: "localhost"}
		if cert != "" {
			kp, err := tls.LoadX509KeyPair(cert, key)
			if err != nil {
				t.Fatal(err)
			}
			tc.Certificates = []tls.Certificate{kp}
		}
		conn, err := tls.Dial("tcp", tb.Addr(listener), tc)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		// wrapConn: over TLS paho needs a connection that serialises whole
		// packets (tls_stress_test.go); with the raw *tls.Conn its first
		// PINGREQ, sent at once after CONNACK, sometimes landed between the
		// PUBLISH's fixed header and its body: the broker refused the
		// malformed packet and this publish waited for a PUBACK until the
		// timeout (about 1 run in 50 under load).
		cl := paho.NewClient(paho.ClientConfig{ClientID: id, Conn: wrapConn(conn)})
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		cp := &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true}
		if user != "" {
			cp.Username, cp.UsernameFlag, cp.Password, cp.PasswordFlag = user, true, []byte("secret"), true
		}
		ca, err := cl.Connect(ctx, cp)
		if ca == nil {
			t.Fatalf("%s %s: no CONNACK: %v", listener, id, err)
		}
		if ca.ReasonCode == 0 {
			// The ACL of the certificate's user applies: alice may publish
			// only under sensors/<client id>/.
			r, perr := cl.Publish(ctx, &paho.Publish{Topic: "admin/x", QoS: 1, Payload: []byte("1")})
			if r == nil || r.ReasonCode != 0x87 {
				t.Fatalf("%s: publish to admin/x as the certificate's user: %+v (err %v)", listener, r, perr)
			}
			cl.Disconnect(&paho.Disconnect{})
		}
		return ca.ReasonCode
	}
	for _, tc := range []struct {
		listener, cert, key, id, user string
		want                          byte
		what                          string
	}{
		{"cn", aliceCN, aliceCNKey, "alice", "", 0, "CN alice"},
		{"cn", aliceCN, aliceCNKey, "alice", "admin", 0, "CN alice claiming to be admin (username ignored)"},
		{"cn", aliceCN, aliceCNKey, "bob", "", 0x85, "CN alice with a client id not bound to her"},
		{"cn", "", "", "alice", "alice", 0x87, "no certificate, a right password"},
		{"cn", mallory, malloryKey, "mallory", "", 0x87, "CN that is not a user"},
		{"san", aliceSAN, aliceSANKey, "alice", "", 0, "SAN alice"},
		{"san", twoSAN, twoSANKey, "alice", "", 0x87, "two DNS names"},
		{"san", aliceCN, aliceCNKey, "alice", "", 0x87, "no DNS name"},
	} {
		if got := connect(tc.listener, tc.cert, tc.key, tc.id, tc.user); got != tc.want {
			t.Errorf("%s: reason 0x%x, want 0x%x", tc.what, got, tc.want)
		}
	}
}

// TestPeerCertThroughWrapper: the verified certificate is found behind a
// connection wrapper that exposes its net.Conn with NetConn, as mochi's WebSocket
// connection does (wss listeners).
func TestPeerCertThroughWrapper(t *testing.T) {
	dir := t.TempDir()
	ca, caKey := newCA(t)
	s := &signer{ca, caKey}
	serverCert, serverKey := writeCert(t, dir, "server", s)
	clientCert, clientKey := writeClientCert(t, dir, "dev", "dev7", nil, s)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	skp, _ := tls.LoadX509KeyPair(serverCert, serverKey)
	ckp, _ := tls.LoadX509KeyPair(clientCert, clientKey)
	a, b := net.Pipe()
	srv := tls.Server(a, &tls.Config{Certificates: []tls.Certificate{skp}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert})
	cli := tls.Client(b, &tls.Config{RootCAs: pool, ServerName: "localhost", Certificates: []tls.Certificate{ckp}})
	done := make(chan error, 1)
	go func() { done <- cli.Handshake() }()
	if err := srv.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	defer cli.Close()
	for _, c := range []net.Conn{srv, &wrapper{Conn: srv}, &wrapper{Conn: &wrapper{Conn: srv}}} {
		if name, err := certIdentity(c, IdentityCertCN); err != nil || name != "dev7" {
			t.Fatalf("%T: identity %q, %v; want dev7", c, name, err)
		}
	}
	if cert := peerCert(&wrapper{Conn: a}); cert != nil {
		t.Fatal("a plain connection has no certificate")
	}
}

// wrapper wraps a connection the way mochi's WebSocket connection does,
// exposing it with NetConn.
type wrapper struct{ net.Conn }

func (w *wrapper) NetConn() net.Conn { return w.Conn }

// TestCertificateIdentityOverWSS: identity cert_cn works on a wss listener,
// where the TLS connection sits under mochi's WebSocket wrapper; without a
// certificate the client is refused.
func TestCertificateIdentityOverWSS(t *testing.T) {
	dir := t.TempDir()
	ca, caKey := newCA(t)
	s := &signer{ca, caKey}
	serverCert, serverKey := writeCert(t, dir, "server", s)
	caFile := filepath.Join(dir, "ca.pem")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw}), 0o600)
	adminCert, adminKey := writeClientCert(t, dir, "cn-admin", "admin", nil, s)
	addr := freeAddr(t)
	c := baseConfig(t)
	c.Listeners = []Listener{{Name: "wss", Type: TypeWSS, Address: addr,
		TLS: TLS{CertFile: serverCert, KeyFile: serverKey, ClientCAFile: caFile, Identity: IdentityCertCN}}}
	startBroker(t, c, "")
	run := func(cert, key string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		res, err := loadgen.Run(ctx, loadgen.Config{URL: "wss://" + addr + "/", CAFile: caFile, CertFile: cert, KeyFile: key,
			Publishers: 1, Subscribers: 1, QoS: 1, Count: 20, Topic: "lt/{client}/x"})
		if err == nil && (res.Sent != 20 || res.Lost != 0) {
			t.Fatalf("sent %d lost %d", res.Sent, res.Lost)
		}
		return err
	}
	if err := run(adminCert, adminKey); err != nil {
		t.Fatalf("wss with certificate CN admin: %v", err)
	}
	if err := run("", ""); err == nil {
		t.Fatal("wss without a certificate was admitted")
	}
}
