// Package mosq runs a real Mosquitto broker as a child process for tests, and
// collects what it delivers with a small paho.golang subscriber.
//
// Outpost's tests talk to real components (docs/CONVENTIONS.md): the cloud
// broker of the uplink is a real Mosquitto, outages are real process stops.
//
// # Usage
//
//	b := mosq.Start(t, mosq.Options{Persistence: true})
//	sub := mosq.Subscribe(t, b, "outpost/#")
//	// ... point the code under test at b.URL() ...
//	msgs := sub.WaitN(t, 100, 10*time.Second)
//	b.Stop()  // SIGTERM: an orderly outage (Mosquitto saves its database)
//	b.Start() // same port, same config, same persistence directory
//	b.Kill()  // SIGKILL: a crash
//
// NewPublisher gives a paho.golang QoS 1 publisher for the broker (e.g. to
// send downlink commands); Broker.CPUTime reads the broker's CPU time for
// benchmarks; Broker.WaitLog polls its log.
//
// Start writes mosquitto.conf (and certificates, password file, ACL file) into
// t.TempDir(), picks a free loopback port, starts `mosquitto -c`, and returns
// once the port accepts connections. The process is killed at test cleanup;
// when the test failed, the broker's log is written to the test log.
//
// # Options
//
//   - Persistence: `persistence true` with the database in the temp dir, so
//     queued messages for persistent sessions survive Stop/Start.
//   - TLS: generates an ECDSA P-256 CA, a server certificate for
//     127.0.0.1/localhost and a client certificate (Broker.Certs); the listener
//     speaks TLS only. RequireCertificate adds `require_certificate true`
//     (mTLS).
//   - Users: a password file made with mosquitto_passwd; anonymous access is
//     then refused.
//   - ACL: the text of an acl_file.
//   - MaxInflight / MaxQueued: `max_inflight_messages` (also the Receive
//     Maximum Mosquitto announces to MQTT v5 clients) and
//     `max_queued_messages`. Zero keeps Mosquitto's defaults (20 and 1000),
//     which shape throughput results: state what you use.
//
// # Requirements
//
// The Debian package `mosquitto` (2.0.11 measured) must be installed:
// `apt-get install -y mosquitto mosquitto-clients`. Tests fail (not skip) when
// it is missing, so a CI without it cannot pass silently. The broker runs as
// the current user (`user root` is set when running as root, so it can read
// the temp dir).
package mosq

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Options configure the broker. The zero value is a plain anonymous TCP
// listener without persistence.
type Options struct {
	Persistence        bool
	TLS                bool
	RequireCertificate bool              // mTLS: clients must present a certificate signed by the CA (implies TLS)
	Users              map[string]string // user name → password; set: allow_anonymous false
	ACL                string            // acl_file content ("" = none)
	MaxInflight        int               // max_inflight_messages (0 = Mosquitto default 20)
	MaxQueued          int               // max_queued_messages (0 = Mosquitto default 1000; -1 = unlimited)
	Extra              string            // extra lines appended to the global section
	Verbose            bool              // log_type all (every packet is logged: slow)
}

// Broker is a Mosquitto child process.
type Broker struct {
	t     testing.TB
	Dir   string // temp dir holding mosquitto.conf, certificates, database, log
	Port  int
	Addr  string // 127.0.0.1:Port
	Certs *Certs // non-nil with TLS
	Conf  string // path of mosquitto.conf
	opts  Options

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	log    *lockedBuffer
}

// Start writes the configuration, starts Mosquitto and waits until it
// listens. Failures are fatal to the test.
func Start(t testing.TB, o Options) *Broker {
	t.Helper()
	if _, err := exec.LookPath("mosquitto"); err != nil {
		t.Fatalf("mosq: mosquitto not installed (apt-get install -y mosquitto mosquitto-clients): %v", err)
	}
	if o.RequireCertificate {
		o.TLS = true
	}
	b := &Broker{t: t, Dir: t.TempDir(), opts: o, log: &lockedBuffer{}}
	b.Port = FreePort(t)
	b.Addr = fmt.Sprintf("127.0.0.1:%d", b.Port)
	if err := b.writeConfig(); err != nil {
		t.Fatalf("mosq: %v", err)
	}
	t.Cleanup(func() {
		b.Kill()
		if t.Failed() {
			log := b.log.tail(64 << 10)
			t.Logf("mosquitto log (%s):\n%s", b.Addr, log)
			if strings.Contains(log, "Outgoing messages are being dropped") {
				t.Logf("mosq: Mosquitto itself dropped messages for a slow or offline subscriber (max_queued_messages); set Options.MaxQueued: -1 if the test counts every message")
			}
		}
	})
	b.Start()
	return b
}

// URL returns the broker URL in the form the uplink config takes:
// mqtt://127.0.0.1:PORT, or mqtts:// with TLS.
func (b *Broker) URL() string {
	if b.opts.TLS {
		return "mqtts://" + b.Addr
	}
	return "mqtt://" + b.Addr
}

// Options returns the options the broker was started with.
func (b *Broker) Options() Options { return b.opts }

func (b *Broker) writeConfig() error {
	o := b.opts
	var c strings.Builder
	fmt.Fprintf(&c, "# written by internal/testutil/mosq\n")
	if os.Geteuid() == 0 {
		c.WriteString("user root\n")
	}
	c.WriteString("log_dest stderr\nconnection_messages true\nlog_timestamp_format %H:%M:%S\n")
	if o.Verbose {
		c.WriteString("log_type all\n")
	}
	if o.Persistence {
		fmt.Fprintf(&c, "persistence true\npersistence_location %s/\nautosave_interval 1800\n", b.Dir)
	}
	if o.MaxInflight != 0 {
		fmt.Fprintf(&c, "max_inflight_messages %d\n", o.MaxInflight)
	}
	switch {
	case o.MaxQueued < 0:
		c.WriteString("max_queued_messages 0\n")
	case o.MaxQueued > 0:
		fmt.Fprintf(&c, "max_queued_messages %d\n", o.MaxQueued)
	}
	if len(o.Users) > 0 {
		pw := filepath.Join(b.Dir, "passwd")
		names := make([]string, 0, len(o.Users))
		for u := range o.Users {
			names = append(names, u)
		}
		sort.Strings(names)
		for i, u := range names {
			args := []string{"-b", pw, u, o.Users[u]}
			if i == 0 {
				args = append([]string{"-c"}, args...)
			}
			if out, err := exec.Command("mosquitto_passwd", args...).CombinedOutput(); err != nil {
				return fmt.Errorf("mosquitto_passwd: %v: %s", err, out)
			}
		}
		fmt.Fprintf(&c, "allow_anonymous false\npassword_file %s\n", pw)
	} else {
		c.WriteString("allow_anonymous true\n")
	}
	if o.ACL != "" {
		acl := filepath.Join(b.Dir, "acl")
		if err := os.WriteFile(acl, []byte(o.ACL), 0o600); err != nil {
			return err
		}
		fmt.Fprintf(&c, "acl_file %s\n", acl)
	}
	if o.Extra != "" {
		c.WriteString(o.Extra + "\n")
	}
	fmt.Fprintf(&c, "\nlistener %d 127.0.0.1\n", b.Port)
	if o.TLS {
		certs, err := GenerateCerts(b.Dir, "")
		if err != nil {
			return err
		}
		b.Certs = certs
		fmt.Fprintf(&c, "cafile %s\ncertfile %s\nkeyfile %s\ntls_version tlsv1.2\n", certs.CAFile, certs.ServerCert, certs.ServerKey)
		if o.RequireCertificate {
			c.WriteString("require_certificate true\n")
		}
	}
	b.Conf = filepath.Join(b.Dir, "mosquitto.conf")
	return os.WriteFile(b.Conf, []byte(c.String()), 0o600)
}

// Start (re)starts the process on the same port with the same config and
// persistence directory, and waits until it accepts connections. It is a
// no-op when the broker is running.
func (b *Broker) Start() {
	b.t.Helper()
	b.mu.Lock()
	if b.cmd != nil {
		b.mu.Unlock()
		return
	}
	fmt.Fprintf(b.log, "--- mosq: starting mosquitto -c %s\n", b.Conf)
	cmd := exec.Command("mosquitto", "-c", b.Conf)
	cmd.Stdout = b.log
	cmd.Stderr = b.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		b.mu.Unlock()
		b.t.Fatalf("mosq: start mosquitto: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	b.cmd, b.exited = cmd, exited
	b.mu.Unlock()
	if err := b.waitListening(10 * time.Second); err != nil {
		b.t.Fatalf("mosq: %v\nlog:\n%s", err, b.log.tail(16<<10))
	}
}

// waitListening polls the port until it accepts a TCP connection, the
// process exits, or timeout passes.
func (b *Broker) waitListening(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		b.mu.Lock()
		exited := b.exited
		b.mu.Unlock()
		select {
		case <-exited:
			return errors.New("mosquitto exited before listening on " + b.Addr)
		default:
		}
		c, err := net.DialTimeout("tcp", b.Addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("mosquitto not listening on %s after %v: %w", b.Addr, timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Stop sends SIGTERM and waits for the process to exit (Mosquitto saves its
// persistence database on the way out). After 10 s it is killed.
func (b *Broker) Stop() { b.signal(syscall.SIGTERM, 10*time.Second) }

// Kill sends SIGKILL (a crash: nothing is saved) and waits for the exit.
func (b *Broker) Kill() { b.signal(syscall.SIGKILL, 10*time.Second) }

// Running reports whether the process is running.
func (b *Broker) Running() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.cmd != nil
}

func (b *Broker) signal(sig syscall.Signal, timeout time.Duration) {
	b.mu.Lock()
	cmd, exited := b.cmd, b.exited
	b.cmd = nil
	b.mu.Unlock()
	if cmd == nil {
		return
	}
	fmt.Fprintf(b.log, "--- mosq: sending %v\n", sig)
	_ = cmd.Process.Signal(sig)
	select {
	case <-exited:
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-exited
	}
}

// Log returns everything the broker logged so far (all runs).
func (b *Broker) Log() string { return b.log.String() }

// WaitLog polls the broker log until it contains s or ctx ends.
func (b *Broker) WaitLog(ctx context.Context, s string) error {
	for !strings.Contains(b.log.String(), s) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("mosq: %q not in log: %w", s, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("mosq: free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *lockedBuffer) tail(n int) string {
	s := l.String()
	if len(s) > n {
		return "...\n" + s[len(s)-n:]
	}
	return s
}

// Pid returns the process id of the running broker (0 when stopped).
func (b *Broker) Pid() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cmd == nil {
		return 0
	}
	return b.cmd.Process.Pid
}

// CPUTime returns the user+system CPU time the running broker has used,
// read from /proc (0 when stopped or unavailable).
func (b *Broker) CPUTime() time.Duration {
	pid := b.Pid()
	if pid == 0 {
		return 0
	}
	return ProcCPUTime(pid)
}

// ProcCPUTime reads utime+stime of a process from /proc/PID/stat.
func ProcCPUTime(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	var ut, st int64
	fmt.Sscan(f[11], &ut)
	fmt.Sscan(f[12], &st)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ is 100 on Linux
}
