package broker

import (
	"context"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/config"
)

// verifications is how many slow password verifications the broker ran.
func (tb *testBroker) verifications(t *testing.T) uint64 {
	t.Helper()
	return tb.counter(t, "outpost_broker_password_verifications_total")
}

// rawConnect sends an MQTT 3.1.1 CONNECT and returns the CONNACK return code
// (-1 when the connection closed without one).
func rawConnect(t *testing.T, addr, id, user, pass string) int {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(testTimeout))
	if _, err := c.Write(connectPacket(id, user, pass)); err != nil {
		return -1
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || buf[0] != 0x20 {
		return -1
	}
	return int(buf[3])
}

// TestWrongGuessAfterLoginPaysFullVerification: once a user has logged in,
// a wrong password must still cost a full hash verification (the login
// cache used to reject it with a cheap compare: ~300x faster guessing), and
// the right password is served from the cache.
func TestWrongGuessAfterLoginPaysFullVerification(t *testing.T) {
	tb := startBroker(t, baseConfig(t), "")
	mustV5(t, tb.addr, "c1", "alice", "secret")
	n0 := tb.verifications(t)
	if n0 != 1 {
		t.Fatalf("first login: %d verifications, want 1", n0)
	}
	mustV5(t, tb.addr, "c2", "alice", "secret")
	if n := tb.verifications(t); n != n0 {
		t.Fatalf("second right login: %d verifications, want %d (served from cache)", n, n0)
	}
	for i := range 3 {
		if rc := rawConnect(t, tb.addr, "c3", "alice", "wrong"); rc == 0 || rc == -1 {
			t.Fatalf("wrong password admitted or unanswered: %d", rc)
		}
		if n := tb.verifications(t); n != n0+uint64(i)+1 {
			t.Fatalf("wrong guess %d after a login: %d verifications, want %d (full hash per guess)", i, n, n0+uint64(i)+1)
		}
	}
}

// TestUnknownUserPaysVerification: an unknown username costs a verification
// against a dummy hash, so it answers as slowly as a known one (usernames
// were enumerable: 0.2 ms vs 62 ms).
func TestUnknownUserPaysVerification(t *testing.T) {
	tb := startBroker(t, baseConfig(t), "")
	if rc := rawConnect(t, tb.addr, "c1", "mallory", "secret"); rc == 0 || rc == -1 {
		t.Fatalf("unknown user: %d", rc)
	}
	if n := tb.verifications(t); n != 1 {
		t.Fatalf("unknown user: %d verifications, want 1", n)
	}
}

// TestParallelWrongLoginsBoundedMemory: 16 parallel wrong passwords for an
// argon2id user (m=19 MiB, the old default) must not hash all at once: the
// probe saw RSS go from 54 MB to 1.24 GB. The heap stays within a bound that
// 16 simultaneous verifications (304 MiB) exceed; before the fix 24 of them
// grew the heap by 456 MiB.
func TestParallelWrongLoginsBoundedMemory(t *testing.T) {
	salt := "c2FsdHNhbHRzYWx0c2FsdA" // 16 bytes
	key := "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
	c := baseConfig(t)
	c.Users = append(c.Users, User{Username: "gw", PasswordHash: "$argon2id$v=19$m=19456,t=1,p=1$" + salt + "$" + key,
		ACL: []ACLRule{{Topic: "#", Access: AccessAll}}})
	// Every login is verified (no backoff, long waits): what bounds memory
	// here is max_parallel_hashes alone.
	off := false
	c.Login.RateLimit = &off
	c.Login.MaxParallelHashes = 2
	c.Limits.ConnectTimeout = config.Duration(time.Minute)
	c.Login.HashWait = config.Duration(50 * time.Second)
	tb := startBroker(t, c, "")

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	const n = 16
	var wg sync.WaitGroup
	codes := make([]int, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i] = rawConnect(t, tb.addr, "g", "gw", "wrong")
		}()
	}
	wg.Wait()
	close(stop)
	<-sampled
	growth := int64(peak.Load()) - int64(base)
	t.Logf("heap in use: base %d MiB, peak growth %d MiB", base>>20, growth>>20)
	for i, rc := range codes {
		if rc == 0 || rc == -1 {
			t.Fatalf("login %d: return code %d, want a refusal", i, rc)
		}
	}
	if v := tb.verifications(t); v != n {
		t.Fatalf("%d verifications, want %d", v, n)
	}
	if growth > 180<<20 {
		t.Fatalf("heap grew by %d MiB during %d parallel wrong logins, want < 180 MiB", growth>>20, n)
	}
}

// TestConnectTimeout: a connection that never sends CONNECT, or sends only
// part of it, is closed after limits.connect_timeout and counted.
func TestConnectTimeout(t *testing.T) {
	c := baseConfig(t)
	c.Limits.ConnectTimeout = config.Duration(300 * time.Millisecond)
	tb := startBroker(t, c, "")
	idle, err := net.Dial("tcp", tb.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	partial, err := net.Dial("tcp", tb.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer partial.Close()
	partial.Write(connectPacket("p", "alice", "secret")[:5])
	start := time.Now()
	expectClosed(t, idle)
	expectClosed(t, partial)
	if d := time.Since(start); d > 4*time.Second {
		t.Fatalf("closed after %v, want about 300ms", d)
	}
	waitFor(t, func() bool { return tb.counter(t, `outpost_broker_disconnects_total{reason="connect_timeout"}`) == 2 },
		"2 connect timeouts counted")
	// A client that connects in time keeps its connection beyond the timeout.
	cl := mustV5(t, tb.addr, "ok", "alice", "secret")
	time.Sleep(600 * time.Millisecond) // longer than connect_timeout: nothing to poll for
	if rc, err := cl.pub(t, "sensors/ok/t", 1, "x"); err != nil || rc != 0 {
		t.Fatalf("a connected client was closed by the connect timeout: 0x%x %v", rc, err)
	}
}

// TestPendingConnectionsCountAgainstMaxConnections: sockets that have not
// sent CONNECT count against max_connections (300 such sockets pinned
// 73 MiB and were not counted); when they go away, clients are admitted again.
func TestPendingConnectionsCountAgainstMaxConnections(t *testing.T) {
	c := baseConfig(t)
	c.Limits.MaxConnections = 3
	c.Limits.ConnectTimeout = config.Duration(time.Minute)
	tb := startBroker(t, c, "")
	var idle []net.Conn
	for range 3 {
		s, err := net.Dial("tcp", tb.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		idle = append(idle, s)
	}
	waitFor(t, func() bool { return tb.counter(t, "outpost_broker_connections_pending") == 3 }, "3 pending connections")
	if rc := rawConnect(t, tb.addr, "late", "alice", "secret"); rc != -1 {
		t.Fatalf("4th connection with 3 pending and max_connections 3: return code %d, want closed", rc)
	}
	if got := tb.counter(t, `outpost_broker_limit_refusals_total{limit="max_connections"}`); got != 1 {
		t.Fatalf("max_connections refusals = %d, want 1", got)
	}
	for _, s := range idle {
		s.Close()
	}
	waitFor(t, func() bool { return tb.counter(t, "outpost_broker_connections_pending") == 0 }, "no pending connections")
	if rc := rawConnect(t, tb.addr, "late", "alice", "secret"); rc != 0 {
		t.Fatalf("after the idle sockets closed: return code %d, want 0", rc)
	}
}

var _ = context.Background

// rawConnectFrom is rawConnect from a given loopback source address.
func rawConnectFrom(t *testing.T, src, addr, id, user, pass string) int {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: testTimeout}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(testTimeout))
	if _, err := c.Write(connectPacket(id, user, pass)); err != nil {
		return -1
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || buf[0] != 0x20 {
		return -1
	}
	return int(buf[3])
}

// TestVerificationSlotsBusy: with every verification slot taken, a login
// waits login.hash_wait and is refused "server busy" (3.1.1: server
// unavailable) instead of hashing in parallel.
func TestVerificationSlotsBusy(t *testing.T) {
	c := baseConfig(t)
	c.Login.MaxParallelHashes = 1
	c.Login.HashWait = config.Duration(50 * time.Millisecond)
	tb := startBroker(t, c, "")
	entered, release := make(chan struct{}, 1), make(chan struct{})
	hook := func() {
		select {
		case entered <- struct{}{}:
			<-release
		default:
		}
	}
	verifyHook.Store(&hook)
	t.Cleanup(func() { verifyHook.Store(nil) })
	first := make(chan int, 1)
	go func() { first <- rawConnect(t, tb.addr, "c1", "alice", "secret") }()
	<-entered // the only slot is held
	if rc := rawConnect(t, tb.addr, "c2", "admin", "secret"); rc != 0x03 {
		t.Fatalf("3.1.1 login with all slots busy: return code %d, want 3 (server unavailable)", rc)
	}
	if _, ca, err := dialV5(t, "tcp", tb.addr, "c3", "admin", "secret", true); err == nil || ca == nil || ca.ReasonCode != 0x89 {
		t.Fatalf("MQTT 5 login with all slots busy: err=%v connack=%+v, want 0x89", err, ca)
	}
	close(release)
	if rc := <-first; rc != 0 {
		t.Fatalf("the login holding the slot: return code %d", rc)
	}
	if got := tb.counter(t, `outpost_broker_login_refusals_total{reason="verification_busy"}`); got != 2 {
		t.Fatalf("verification_busy refusals = %d, want 2", got)
	}
	mustV5(t, tb.addr, "c4", "admin", "secret") // slot free again
}

// TestFailedLoginBackoff: after login.free_failures failures an address is
// refused without verification, and so is the username from addresses it
// has not logged in from; other addresses and users are not slowed.
func TestFailedLoginBackoff(t *testing.T) {
	c := baseConfig(t)
	c.Login.FreeFailures = 2
	c.Login.BackoffInitial = config.Duration(time.Minute) // no expiry during the test
	tb := startBroker(t, c, "")
	const attacker, other, device = "127.0.0.1", "127.0.0.2", "127.0.0.3"
	if rc := rawConnectFrom(t, device, tb.addr, "dev", "alice", "secret"); rc != 0 {
		t.Fatalf("alice from her device: %d", rc)
	}
	for i := range 2 {
		// 3.1.1 "bad user name or password" is 4; mochi answers 5 (not authorized).
		if rc := rawConnectFrom(t, attacker, tb.addr, "x", "alice", "guess"); rc != 0x04 && rc != 0x05 {
			t.Fatalf("guess %d: return code %d, want 4 or 5", i, rc)
		}
	}
	v := tb.verifications(t)
	steps := []struct {
		src, user, pass string
		want            int
		what            string
	}{
		{attacker, "admin", "secret", 0x03, "any login from the backed-off address"},
		{attacker, "alice", "guess", 0x03, "another guess from the backed-off address"},
		{other, "alice", "secret", 0x03, "alice from an address she never logged in from"},
		{other, "admin", "secret", 0, "another user from another address"},
		{device, "alice", "secret", 0, "alice from the address she logged in from before"},
	}
	for i, s := range steps {
		// A client id per step: reusing one would take over the previous
		// step's connection (possibly still attached), which a different
		// user may not do (foreign_session: refuse).
		if rc := rawConnectFrom(t, s.src, tb.addr, fmt.Sprintf("y%d", i), s.user, s.pass); rc != s.want {
			t.Fatalf("%s: return code %d, want %d", s.what, rc, s.want)
		}
	}
	if got := tb.verifications(t); got != v+1 { // admin from `other`; alice hits the cache
		t.Fatalf("verifications during backoff: %d, want %d (refusals must not hash)", got, v+1)
	}
	if got := tb.counter(t, `outpost_broker_login_refusals_total{reason="rate_limited_address"}`); got != 2 {
		t.Fatalf("rate_limited_address = %d, want 2", got)
	}
	if got := tb.counter(t, `outpost_broker_login_refusals_total{reason="rate_limited_username"}`); got != 1 {
		t.Fatalf("rate_limited_username = %d, want 1", got)
	}
	if _, ca, err := dialV5(t, "tcp", tb.addr, "z", "admin", "secret", true); err == nil || ca == nil || ca.ReasonCode != 0x9F {
		t.Fatalf("MQTT 5 from the backed-off address: err=%v connack=%+v, want 0x9F", err, ca)
	}
}

func TestFailLimiter(t *testing.T) {
	p := Login{FreeFailures: 3, BackoffInitial: config.Duration(time.Second), BackoffMax: config.Duration(10 * time.Second), Tracked: 16}
	var l failLimiter
	now := time.Unix(1000, 0)
	want := []time.Duration{0, 0, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second}
	for i, w := range want {
		if d := l.fail("a", now, p); d != w {
			t.Fatalf("failure %d: backoff %v, want %v", i+1, d, w)
		}
		if got := l.blockedFor("a", now); got != w {
			t.Fatalf("failure %d: blocked for %v, want %v", i+1, got, w)
		}
	}
	if d := l.blockedFor("a", now.Add(11*time.Second)); d != 0 {
		t.Fatalf("still blocked after the backoff: %v", d)
	}
	// Quiet for twice backoff_max: forgiven.
	if d := l.fail("a", now.Add(time.Minute), p); d != 0 {
		t.Fatalf("after a quiet minute: backoff %v, want 0", d)
	}
	// Bounded: the least recently failed keys are forgotten.
	for i := range 100 {
		l.fail(fmt.Sprint("k", i), now, p)
	}
	if n := l.ll.Len(); n != 16 || len(l.m) != 16 {
		t.Fatalf("tracked %d/%d keys, want 16", n, len(l.m))
	}
	if l.has("a") || !l.has("k99") {
		t.Fatal("LRU kept the wrong keys")
	}
}

func TestAddrKey(t *testing.T) {
	for _, tc := range []struct{ remote, want string }{
		{"127.0.0.1:5555", "127.0.0.1"},
		{"[::ffff:10.0.0.1]:1", "10.0.0.1"},
		{"[2001:db8:1:2:3:4:5:6]:1883", "2001:db8:1:2::/64"},
		{"[2001:db8:1:2:ffff::1]:1883", "2001:db8:1:2::/64"},
		{"@", "local:unix"},
		{"", "local:unix"},
	} {
		if got := addrKey(tc.remote, "unix"); got != tc.want {
			t.Errorf("addrKey(%q) = %q, want %q", tc.remote, got, tc.want)
		}
	}
}
