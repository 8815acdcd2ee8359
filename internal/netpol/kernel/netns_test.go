package kernel

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"github.com/outpost-edge/outpost/internal/netpol"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// lab is two network namespaces joined by a veth pair: the "client" side
// sends, the "gateway" side runs the policy and receives. Traffic never
// leaves the namespaces the test made.
type lab struct {
	client, gw string // namespace names
	clientIP   string
	gwIP       string
	clientIP6  string // IPv6 on the same veth pair, in net6
	gwIP6      string
	net6       string
	gwIf       string
	pinRoot    string
}

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("netpol integration tests need root (network namespaces, BPF, nftables)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatalf("the ip command (iproute2) is missing: %v", err)
	}
}

func newLab(t testing.TB) *lab {
	t.Helper()
	needRoot(t)
	var r [3]byte
	rand.Read(r[:])
	id := hex.EncodeToString(r[:])
	l := &lab{client: "npc-" + id, gw: "npg-" + id, clientIP: "10.211.7.1", gwIP: "10.211.7.2", gwIf: "vg" + id[:6],
		pinRoot: "/sys/fs/bpf/outpost-test-" + id,
		net6:    "fd71:" + id[:4] + "::/64", clientIP6: "fd71:" + id[:4] + "::1", gwIP6: "fd71:" + id[:4] + "::2"}
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("netns", "add", l.client)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", l.client).Run() })
	run("netns", "add", l.gw)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", l.gw).Run(); os.RemoveAll(l.pinRoot) })
	vc := "vc" + id[:6]
	run("link", "add", vc, "netns", l.client, "type", "veth", "peer", "name", l.gwIf, "netns", l.gw)
	run("-n", l.client, "addr", "add", l.clientIP+"/24", "dev", vc)
	run("-n", l.gw, "addr", "add", l.gwIP+"/24", "dev", l.gwIf)
	// nodad: usable at once, no duplicate address detection to wait for.
	run("-n", l.client, "addr", "add", l.clientIP6+"/64", "dev", vc, "nodad")
	run("-n", l.gw, "addr", "add", l.gwIP6+"/64", "dev", l.gwIf, "nodad")
	run("-n", l.client, "link", "set", vc, "up")
	run("-n", l.gw, "link", "set", l.gwIf, "up")
	run("-n", l.client, "link", "set", "lo", "up")
	run("-n", l.gw, "link", "set", "lo", "up")
	// IPv6 comes up on a link when the kernel's link watcher sees its
	// carrier, up to a second later: until then a neighbour solicitation
	// to the gateway finds no multicast route and the first datagrams wait
	// in the neighbour queue. Wait for both ends.
	for _, ns := range [][2]string{{l.client, vc}, {l.gw, l.gwIf}} {
		deadline := time.Now().Add(5 * time.Second)
		for {
			out, _ := exec.Command("ip", "-n", ns[0], "-6", "route", "show", "table", "local", "ff00::/8").CombinedOutput()
			if strings.Contains(string(out), "dev "+ns[1]) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("IPv6 did not come up on %s in %s: %s", ns[1], ns[0], out)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// Static neighbours: no ARP round trip that a deny-all could disturb.
	return l
}

func (l *lab) manager(t testing.TB) *Manager {
	return New(Options{Netns: filepath.Join("/var/run/netns", l.gw), PinRoot: l.pinRoot})
}

// receiver counts UDP datagrams on port in the gateway namespace until
// stopped.
type receiver struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
}

func (l *lab) listen(t *testing.T, port int) *receiver { return l.listenOn(t, l.gwIP, port) }

// listenOn is listen on one of the gateway's addresses (gwIP or gwIP6).
func (l *lab) listenOn(t *testing.T, addr string, port int) *receiver {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", l.gw, os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("NETPOL_HELPER=recv,%s,%d", addr, port))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := &receiver{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	line, err := r.out.ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		t.Fatalf("receiver: %q %v", line, err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return r
}

// stop ends the receiver after a short quiet period and returns its count.
func (r *receiver) stop(t *testing.T) int {
	t.Helper()
	r.stdin.Close()
	line, err := r.out.ReadString('\n')
	if err != nil {
		t.Fatalf("receiver result: %v", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("receiver result %q: %v", line, err)
	}
	r.cmd.Wait()
	return n
}

// send sends n UDP datagrams from the client namespace, paced by gap.
func (l *lab) send(t *testing.T, port, n int, gap time.Duration) {
	l.sendTo(t, l.gwIP, port, n, gap, 64)
}

// sendTo sends n datagrams of size bytes to addr (gwIP or gwIP6): larger
// than the link's MTU, each leaves as fragments.
func (l *lab) sendTo(t *testing.T, addr string, port, n int, gap time.Duration, size int) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", l.client, os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("NETPOL_HELPER=send,%s,%d,%d,%d,%d", addr, port, n, gap.Microseconds(), size))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sender: %v\n%s", err, out)
	}
}

// TestHelperProcess is the traffic generator, run inside a namespace.
func TestHelperProcess(t *testing.T) {
	spec := os.Getenv("NETPOL_HELPER")
	if spec == "" {
		t.Skip("helper process for the netns tests")
	}
	f := strings.Split(spec, ",")
	switch f[0] {
	case "recv":
		c, err := net.ListenPacket("udp", net.JoinHostPort(f[1], f[2]))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println("ready")
		count := make(chan int)
		go func() {
			n := 0
			buf := make([]byte, 2048)
			for {
				if _, _, err := c.ReadFrom(buf); err != nil {
					count <- n
					return
				}
				n++
			}
		}()
		io.Copy(io.Discard, os.Stdin)
		time.Sleep(300 * time.Millisecond) // let the last datagrams land
		c.Close()
		fmt.Println(<-count)
		os.Exit(0)
	case "send":
		n, _ := strconv.Atoi(f[3])
		gap, _ := strconv.Atoi(f[4])
		size, _ := strconv.Atoi(f[5])
		c, err := net.Dial("udp", net.JoinHostPort(f[1], f[2]))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		msg := make([]byte, size)
		for i := 0; i < n; i++ {
			c.Write(msg)
			if gap > 0 {
				time.Sleep(time.Duration(gap) * time.Microsecond)
			}
		}
		os.Exit(0)
	}
	os.Exit(2)
}

var backends = []string{"ebpf", "nftables"}

func basePolicy(l *lab) netpol.Config {
	return netpol.Config{Interfaces: []netpol.Interface{{
		Name: l.gwIf, Default: "deny",
		Rules: []netpol.Rule{
			{Name: "allow-5000", Action: "allow", Src: l.clientIP + "/32", Proto: "udp", DPort: "5000"},
			{Name: "deny-5001", Action: "deny", Src: "10.211.0.0/16", Proto: "udp", DPort: "5001-5001"},
			{Name: "allow-range", Action: "allow", Src: "10.211.7.0/24", Dst: l.gwIP, Proto: "udp", DPort: "6000-6010"},
		},
	}}}
}

func TestRulesAllowDenyAndCountExactly(t *testing.T) {
	for _, be := range backends {
		t.Run(be, func(t *testing.T) {
			l := newLab(t)
			m := l.manager(t)
			cfg := basePolicy(l)
			cfg.Backend = be
			if err := m.Apply(cfg); err != nil {
				t.Fatal(err)
			}
			defer func() {
				cfg.Interfaces[0].OnAgentStop = "open"
				m.Close()
			}()
			if got := m.BackendName(); got != be {
				t.Fatalf("backend %s, want %s", got, be)
			}
			cases := []struct {
				port, n, want int
				rule          string
			}{
				{5000, 40, 40, "allow-5000"},
				{5001, 30, 0, "deny-5001"},
				{6005, 20, 20, "allow-range"},
				{5002, 10, 0, "default"},
			}
			for _, c := range cases {
				r := l.listen(t, c.port)
				l.send(t, c.port, c.n, 200*time.Microsecond)
				if got := r.stop(t); got != c.want {
					t.Errorf("port %d: received %d of %d, want %d (%s)", c.port, got, c.n, c.want, c.rule)
				}
			}
			st := m.Status()
			counts := st.Interfaces[l.gwIf].Rules
			for _, c := range cases {
				if got := counts[c.rule].Packets; got != uint64(c.n) {
					t.Errorf("counter %s = %d packets, want %d (all: %+v)", c.rule, got, c.n, counts)
				}
			}
			if counts["allow-5000"].Bytes == 0 {
				t.Error("byte counter is 0")
			}
			d, err := m.Test(l.gwIf, netpol.Packet{Src: netip.MustParseAddr(l.clientIP), Dst: netip.MustParseAddr(l.gwIP), Proto: netpol.ProtoUDP, DPort: 5001})
			if err != nil || d.Allow || d.Rule != "deny-5001" {
				t.Errorf("Test(5001) = %+v, %v", d, err)
			}
		})
	}
}

// IPv6 rules next to IPv4 ones, on both backends: every kind allowed and
// denied, counters exact, a rule without addresses matching both
// families, neighbour discovery passing a deny-all, and fragmented
// datagrams whose first fragment is matched through the fragment header.
func TestIPv6Rules(t *testing.T) {
	for _, be := range backends {
		t.Run(be, func(t *testing.T) {
			l := newLab(t)
			m := l.manager(t)
			defer m.Close()
			cfg := netpol.Config{Backend: be, Interfaces: []netpol.Interface{{
				Name: l.gwIf, Default: "deny", OnAgentStop: "open",
				Rules: []netpol.Rule{
					{Name: "v4-allow-5000", Action: "allow", Src: l.clientIP, Proto: "udp", DPort: "5000"},
					{Name: "v6-allow-5000", Action: "allow", Src: l.clientIP6, Proto: "udp", DPort: "5000"},
					{Name: "v6-deny-5001", Action: "deny", Src: l.net6, Proto: "udp", DPort: "5001"},
					{Name: "v6-range", Action: "allow", Src: l.net6, Dst: l.gwIP6 + "/128", Proto: "udp", DPort: "6000-6010"},
					{Name: "any-7000", Action: "allow", Proto: "udp", DPort: "7000"},
					{Name: "v4-only-6005", Action: "allow", Src: "0.0.0.0/0", Proto: "udp", DPort: "6005"},
				},
			}}}
			if err := m.Apply(cfg); err != nil {
				t.Fatal(err)
			}
			cases := []struct {
				addr          string
				port, n, want int
				rule          string
			}{
				{l.gwIP6, 5000, 40, 40, "v6-allow-5000"},
				{l.gwIP6, 5001, 30, 0, "v6-deny-5001"},
				{l.gwIP6, 6005, 20, 20, "v6-range"},
				{l.gwIP6, 5002, 10, 0, "default"},
				{l.gwIP, 5000, 15, 15, "v4-allow-5000"},
				{l.gwIP, 6005, 12, 12, "v4-only-6005"},
			}
			for _, c := range cases {
				r := l.listenOn(t, c.addr, c.port)
				l.sendTo(t, c.addr, c.port, c.n, 200*time.Microsecond, 64)
				if got := r.stop(t); got != c.want {
					t.Errorf("%s port %d: received %d of %d, want %d (%s)", c.addr, c.port, got, c.n, c.want, c.rule)
				}
			}
			// One rule for both families: its counter is the sum.
			r4, r6 := l.listenOn(t, l.gwIP, 7000), l.listenOn(t, l.gwIP6, 7000)
			l.sendTo(t, l.gwIP, 7000, 7, 200*time.Microsecond, 64)
			l.sendTo(t, l.gwIP6, 7000, 9, 200*time.Microsecond, 64)
			if g4, g6 := r4.stop(t), r6.stop(t); g4 != 7 || g6 != 9 {
				t.Errorf("any-family rule: received %d of 7 (IPv4) and %d of 9 (IPv6)", g4, g6)
			}
			st := m.Status().Interfaces[l.gwIf]
			want := map[string]uint64{"v6-allow-5000": 40, "v6-deny-5001": 30, "v6-range": 20, "v4-allow-5000": 15, "v4-only-6005": 12, "any-7000": 16, "default": 10}
			for rule, n := range want {
				if got := st.Rules[rule].Packets; got != n {
					t.Errorf("counter %s = %d packets, want %d (all: %+v)", rule, got, n, st.Rules)
				}
			}
			if st.Global["ipv6_nd"].Packets == 0 {
				t.Errorf("no neighbour discovery counted: %+v", st.Global)
			}
			if st.Global["ipv6"].Packets < 40+30+20+10+9 {
				t.Errorf("ipv6 counter %d, want at least the %d IPv6 datagrams sent", st.Global["ipv6"].Packets, 40+30+20+10+9)
			}

			// Fragmented datagrams (3,000 bytes over a 1,500 MTU): the first
			// fragment carries the UDP header behind the fragment header,
			// the others no ports at all. A stateless filter passes the
			// datagram only when a rule without ports allows the rest.
			r := l.listenOn(t, l.gwIP6, 7000)
			l.sendTo(t, l.gwIP6, 7000, 5, time.Millisecond, 3000)
			if got := r.stop(t); got != 0 {
				t.Errorf("fragments without a rule for them: %d of 5 datagrams reassembled", got)
			}
			before := m.Status().Interfaces[l.gwIf].Rules["any-7000"].Packets
			cfg.Interfaces[0].Rules = append(cfg.Interfaces[0].Rules, netpol.Rule{Name: "v6-frags", Action: "allow", Src: l.clientIP6, Proto: "udp"})
			if err := m.Apply(cfg); err != nil {
				t.Fatal(err)
			}
			r = l.listenOn(t, l.gwIP6, 7000)
			l.sendTo(t, l.gwIP6, 7000, 5, time.Millisecond, 3000)
			if got := r.stop(t); got != 5 {
				t.Errorf("fragmented datagrams: %d of 5 reassembled", got)
			}
			st = m.Status().Interfaces[l.gwIf]
			if got := st.Rules["any-7000"].Packets - before; got != 5 {
				t.Errorf("first fragments counted on any-7000: %d, want 5 (matched through the fragment header)", got)
			}
			if got := st.Rules["v6-frags"].Packets; got != 5*2 {
				t.Errorf("later fragments on v6-frags: %d, want 10", got)
			}
			d, err := m.Test(l.gwIf, netpol.Packet{Src: netip.MustParseAddr(l.clientIP6), Dst: netip.MustParseAddr(l.gwIP6), Proto: netpol.ProtoUDP, DPort: 5001})
			if err != nil || d.Allow || d.Rule != "v6-deny-5001" {
				t.Errorf("Test(v6 5001) = %+v, %v", d, err)
			}
		})
	}
}

// sendAsync sends in the background; the returned func waits for it.
func (l *lab) sendAsync(t *testing.T, port, n int, gap time.Duration) func() {
	return l.sendAsyncTo(t, l.gwIP, port, n, gap)
}

// sendAsyncTo is sendAsync to one of the gateway's addresses.
func (l *lab) sendAsyncTo(t *testing.T, addr string, port, n int, gap time.Duration) func() {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", l.client, os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("NETPOL_HELPER=send,%s,%d,%d,%d,64", addr, port, n, gap.Microseconds()))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return func() {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("sender: %v", err)
		}
	}
}

// Policy reloads under traffic: with two policies that both allow a port,
// no packet to it is dropped while they are swapped; with two that both
// deny another port, none gets through. No window is unfiltered or
// half-applied.
func TestReloadUnderTrafficHasNoWindow(t *testing.T) {
	for _, be := range backends {
		t.Run(be, func(t *testing.T) {
			l := newLab(t)
			m := l.manager(t)
			defer m.Close()
			policy := func(gen int) netpol.Config {
				rules := []netpol.Rule{
					{Name: "allow-7000", Action: "allow", Src: l.clientIP, Proto: "udp", DPort: "7000"},
					{Name: "allow6-7000", Action: "allow", Src: l.clientIP6, Proto: "udp", DPort: "7000"},
					{Name: "deny-7001", Action: "deny", Proto: "udp", DPort: "7001"}, // both families
				}
				// Filler rules of both families that change each
				// generation, so every swap rewrites the maps or the chain.
				for i := 0; i < 50+gen%7; i++ {
					rules = append(rules,
						netpol.Rule{Name: fmt.Sprintf("fill-%d-%d", gen, i), Action: "deny", Src: fmt.Sprintf("172.16.%d.0/24", i), Proto: "tcp", DPort: strconv.Itoa(1000 + gen)},
						netpol.Rule{Name: fmt.Sprintf("fill6-%d-%d", gen, i), Action: "deny", Src: fmt.Sprintf("fd00:172:%x::/64", i), Proto: "tcp", DPort: strconv.Itoa(1000 + gen)})
				}
				allowOther := "allow"
				return netpol.Config{Backend: be, Interfaces: []netpol.Interface{{Name: l.gwIf, Default: allowOther, OnAgentStop: "open", Rules: rules}}}
			}
			if err := m.Apply(policy(0)); err != nil {
				t.Fatal(err)
			}
			ra, rd := l.listen(t, 7000), l.listen(t, 7001)
			ra6, rd6 := l.listenOn(t, l.gwIP6, 7000), l.listenOn(t, l.gwIP6, 7001)
			const n = 3000
			waits := []func(){
				l.sendAsync(t, 7000, n, 300*time.Microsecond),
				l.sendAsync(t, 7001, n, 300*time.Microsecond),
				l.sendAsyncTo(t, l.gwIP6, 7000, n, 300*time.Microsecond),
				l.sendAsyncTo(t, l.gwIP6, 7001, n, 300*time.Microsecond),
			}
			swaps := 0
			deadline := time.Now().Add(20 * time.Second)
			done := make(chan struct{})
			go func() {
				for _, w := range waits {
					w()
				}
				close(done)
			}()
		loop:
			for time.Now().Before(deadline) {
				select {
				case <-done:
					break loop
				default:
				}
				swaps++
				if err := m.Apply(policy(swaps)); err != nil {
					t.Fatal(err)
				}
				time.Sleep(5 * time.Millisecond)
			}
			<-done
			got, leaked := ra.stop(t), rd.stop(t)
			got6, leaked6 := ra6.stop(t), rd6.stop(t)
			t.Logf("%s: %d swaps under traffic; allowed port received %d (IPv4) and %d (IPv6) of %d each; denied port received %d and %d", be, swaps, got, got6, n, leaked, leaked6)
			if swaps < 5 {
				t.Fatalf("only %d swaps happened during the traffic", swaps)
			}
			if got != n || got6 != n || leaked != 0 || leaked6 != 0 {
				t.Fatalf("allowed %d and %d of %d (want all), denied port leaked %d and %d (want 0)", got, got6, n, leaked, leaked6)
			}
			// A rule that keeps its name keeps counting across swaps.
			rules := m.Status().Interfaces[l.gwIf].Rules
			if a, a6, d := rules["allow-7000"].Packets, rules["allow6-7000"].Packets, rules["deny-7001"].Packets; a != n || a6 != n || d != 2*n {
				t.Errorf("counters across %d swaps: allow-7000 %d, allow6-7000 %d, deny-7001 %d, want %d, %d and %d", swaps, a, a6, d, n, n, 2*n)
			}
		})
	}
}

// A flood from one source to a rate-limited port is cut to the bucket's
// rate; the packets over it are counted as rate_limited.
func TestRateLimitPerSource(t *testing.T) {
	for _, be := range backends {
		t.Run(be, func(t *testing.T) {
			l := newLab(t)
			m := l.manager(t)
			defer m.Close()
			cfg := netpol.Config{Backend: be, Interfaces: []netpol.Interface{{Name: l.gwIf, Default: "allow", OnAgentStop: "open",
				RateLimit: &netpol.RateLimit{Ports: []int{1883}, PPS: 50, Burst: 50}}}}
			if err := m.Apply(cfg); err != nil {
				t.Fatal(err)
			}
			r := l.listen(t, 1883)
			start := time.Now()
			l.send(t, 1883, 2000, 0)
			elapsed := time.Since(start)
			got := r.stop(t)
			// burst + rate × (send time + the receiver's drain), generously.
			limit := 50 + int(50*(elapsed+time.Second).Seconds()) + 20
			st := m.Status().Interfaces[l.gwIf]
			t.Logf("%s: 2000 sent in %s, %d received (limit %d), rate_limited %d", be, elapsed, got, limit, st.Global["rate_limited"].Packets)
			if got < 40 || got > limit {
				t.Fatalf("received %d, want between 40 and %d", got, limit)
			}
			if st.Global["rate_limited"].Packets == 0 {
				t.Fatal("no packet counted as rate_limited")
			}
			// An IPv6 source has its own bucket (by its /64): the IPv4
			// flood above did not use it up, and it is limited the same way.
			before := st.Global["rate_limited"].Packets
			r6 := l.listenOn(t, l.gwIP6, 1883)
			start = time.Now()
			l.sendTo(t, l.gwIP6, 1883, 2000, 0, 64)
			elapsed = time.Since(start)
			got6 := r6.stop(t)
			limit = 50 + int(50*(elapsed+time.Second).Seconds()) + 20
			limited6 := m.Status().Interfaces[l.gwIf].Global["rate_limited"].Packets - before
			t.Logf("%s: IPv6: 2000 sent in %s, %d received (limit %d), rate_limited %d", be, elapsed, got6, limit, limited6)
			if got6 < 40 || got6 > limit || limited6 == 0 {
				t.Fatalf("IPv6: received %d (want 40..%d), %d rate-limited", got6, limit, limited6)
			}
			// Another port is not limited.
			r2 := l.listen(t, 1884)
			l.send(t, 1884, 500, 100*time.Microsecond)
			if got := r2.stop(t); got < 450 {
				t.Fatalf("unlimited port received %d of 500", got)
			}
		})
	}
}

// on_agent_stop: closed keeps the last policy in force when the agent
// stops (or dies: the program and maps are pinned), and the next start
// re-adopts them; open removes the filter.
func TestAgentStopClosedAndOpen(t *testing.T) {
	for _, be := range backends {
		t.Run(be, func(t *testing.T) {
			l := newLab(t)
			deny := func(stop string) netpol.Config {
				return netpol.Config{Backend: be, Interfaces: []netpol.Interface{{Name: l.gwIf, Default: "allow", OnAgentStop: stop,
					Rules: []netpol.Rule{{Name: "deny-8000", Action: "deny", Proto: "udp", DPort: "8000"}}}}}
			}
			m := l.manager(t)
			if err := m.Apply(deny("closed")); err != nil {
				t.Fatal(err)
			}
			if err := m.Close(); err != nil {
				t.Fatal(err)
			}
			r := l.listen(t, 8000)
			l.send(t, 8000, 20, 100*time.Microsecond)
			if got := r.stop(t); got != 0 {
				t.Fatalf("closed: %d packets got through after the agent stopped", got)
			}
			// The next agent re-adopts and can change the policy.
			m2 := l.manager(t)
			if err := m2.Apply(deny("open")); err != nil {
				t.Fatalf("re-adopt: %v", err)
			}
			r = l.listen(t, 8000)
			l.send(t, 8000, 20, 100*time.Microsecond)
			if got := r.stop(t); got != 0 {
				t.Fatalf("re-adopted policy let %d through", got)
			}
			if err := m2.Close(); err != nil {
				t.Fatal(err)
			}
			r = l.listen(t, 8000)
			l.send(t, 8000, 20, 100*time.Microsecond)
			if got := r.stop(t); got != 20 {
				t.Fatalf("open: %d of 20 got through after the agent stopped, want all (filter removed)", got)
			}
		})
	}
}

// An invalid policy is refused whole and the running one stays.
func TestInvalidPolicyKeepsRunningOne(t *testing.T) {
	l := newLab(t)
	m := l.manager(t)
	defer m.Close()
	good := basePolicy(l)
	good.Backend = "auto"
	good.Interfaces[0].OnAgentStop = "open"
	if err := m.Apply(good); err != nil {
		t.Fatal(err)
	}
	bad := basePolicy(l)
	bad.Interfaces[0].Rules[0].Src = "10.211.7.0/33"
	if err := m.Apply(bad); err == nil || !strings.Contains(err.Error(), "rules[0].src") {
		t.Fatalf("bad policy: %v", err)
	}
	r := l.listen(t, 5001)
	l.send(t, 5001, 10, 100*time.Microsecond)
	if got := r.stop(t); got != 0 {
		t.Fatalf("the running policy was lost: %d packets to a denied port got through", got)
	}
	if h := m.Health(); !strings.Contains(h.Detail, "backend") {
		t.Fatalf("health %+v", h)
	}
}

// An agent upgrade that changes the layout of the BPF maps finds the old
// agent's program and maps pinned (on_agent_stop: closed). It cannot
// re-adopt them; it loads fresh ones, writes the policy into them, then
// replaces the program on the pinned link in one step: the old policy
// filters until then, and the gateway is never open nor denied wholesale.
func TestUpgradeReplacesIncompatiblePins(t *testing.T) {
	l := newLab(t)
	policy := func(denyPort string) netpol.Config {
		return netpol.Config{Backend: "ebpf", Interfaces: []netpol.Interface{{Name: l.gwIf, Default: "allow", OnAgentStop: "closed",
			Rules: []netpol.Rule{{Name: "deny", Action: "deny", Proto: "udp", DPort: denyPort}}}}}
	}
	m := l.manager(t)
	if err := m.Apply(policy("8000")); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	// What an older agent left: its stats map had 4 entries, not 5.
	dir := filepath.Join(l.pinRoot, l.gwIf)
	if err := os.Remove(filepath.Join(dir, "stats")); err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: "stats", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 16, MaxEntries: 4})
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Pin(filepath.Join(dir, "stats")); err != nil {
		t.Fatal(err)
	}
	old.Close()
	r := l.listen(t, 8000)
	l.send(t, 8000, 10, 100*time.Microsecond)
	if got := r.stop(t); got != 0 {
		t.Fatalf("the old pinned policy let %d through", got)
	}

	m2 := l.manager(t)
	defer func() {
		m2.Apply(policy("8000")) // leave nothing pinned behind
		m2.Close()
		os.RemoveAll(l.pinRoot)
	}()
	if err := m2.Apply(policy("8001")); err != nil {
		t.Fatalf("upgrade over incompatible pins: %v", err)
	}
	r = l.listen(t, 8000)
	l.send(t, 8000, 10, 100*time.Microsecond)
	if got := r.stop(t); got != 10 {
		t.Fatalf("new policy: %d of 10 to the port no longer denied got through", got)
	}
	r = l.listen(t, 8001)
	l.send(t, 8001, 10, 100*time.Microsecond)
	if got := r.stop(t); got != 0 {
		t.Fatalf("new policy: %d to the denied port got through", got)
	}
	if c := m2.Status().Interfaces[l.gwIf].Rules["deny"].Packets; c != 10 {
		t.Fatalf("deny counter %d, want 10 (the fresh maps count)", c)
	}
	// The pins are the new maps now: a later agent re-adopts them.
	st, err := ebpf.LoadPinnedMap(filepath.Join(dir, "stats"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if st.MaxEntries() != uint32(len(statNames)) {
		t.Fatalf("pinned stats map has %d entries, want %d", st.MaxEntries(), len(statNames))
	}
	if err := m2.Close(); err != nil {
		t.Fatal(err)
	}
	m3 := l.manager(t)
	if err := m3.Apply(policy("8001")); err != nil {
		t.Fatalf("re-adopt after the upgrade: %v", err)
	}
	if len(m3.applied) != 1 {
		t.Fatal("not applied")
	}
	m3.Close()
	r = l.listen(t, 8001)
	l.send(t, 8001, 10, 100*time.Microsecond)
	if got := r.stop(t); got != 0 {
		t.Fatalf("after the last agent stopped (closed): %d to the denied port got through", got)
	}
}

// Block and allow lists of networks (runs of source-only rules) keep their
// first-match meaning when the XDP backend turns them into longest-prefix
// lookups: a shadowed rule stays shadowed whatever the prefix lengths,
// counters land on the rule that decided, both families, both backends.
func TestSourceListsFirstMatch(t *testing.T) {
	for _, be := range backends {
		t.Run(be, func(t *testing.T) {
			l := newLab(t)
			m := l.manager(t)
			defer m.Close()
			filler := func(rules []netpol.Rule) []netpol.Rule {
				for i := 0; i < 12; i++ {
					k := len(rules)
					rules = append(rules,
						netpol.Rule{Name: fmt.Sprintf("f4-%d", k), Action: "deny", Src: fmt.Sprintf("192.0.2.%d/32", k)},
						netpol.Rule{Name: fmt.Sprintf("f6-%d", k), Action: "deny", Src: fmt.Sprintf("2001:db8:%x::/48", k)})
				}
				return rules
			}
			// Policy A: the broad deny comes first, the narrower allow of
			// the client later is shadowed. Policy B: the other way round.
			a := filler(nil)
			a = append(a,
				netpol.Rule{Name: "deny-net4", Action: "deny", Src: "10.211.0.0/16"},
				netpol.Rule{Name: "deny-net6", Action: "deny", Src: l.net6},
				netpol.Rule{Name: "allow-client4", Action: "allow", Src: l.clientIP + "/32"},
				netpol.Rule{Name: "allow-client6", Action: "allow", Src: l.clientIP6 + "/128"})
			a = filler(a)
			b := filler(nil)
			b = append(b,
				netpol.Rule{Name: "allow-client4", Action: "allow", Src: l.clientIP + "/32"},
				netpol.Rule{Name: "allow-client6", Action: "allow", Src: l.clientIP6 + "/128"},
				netpol.Rule{Name: "deny-net4", Action: "deny", Src: "10.211.0.0/16"},
				netpol.Rule{Name: "deny-net6", Action: "deny", Src: l.net6})
			b = filler(b)
			for _, step := range []struct {
				name   string
				rules  []netpol.Rule
				want   int
				r4, r6 string
			}{
				{"deny first", a, 0, "deny-net4", "deny-net6"},
				{"allow first", b, 10, "allow-client4", "allow-client6"},
			} {
				cfg := netpol.Config{Backend: be, Interfaces: []netpol.Interface{{Name: l.gwIf, Default: "allow", OnAgentStop: "open", Rules: step.rules}}}
				if err := m.Apply(cfg); err != nil {
					t.Fatal(err)
				}
				if xb, ok := m.be.(*xdpBackend); ok {
					x := xb.ifaces[l.gwIf]
					if n := len(x.held[x.gen]) + len(x.held6[x.gen]); n != 2 {
						t.Fatalf("%s: the XDP rule lists hold %d entries; want one trie entry per family", step.name, n)
					}
				}
				before := m.Status().Interfaces[l.gwIf].Rules
				for _, dst := range []string{l.gwIP, l.gwIP6} {
					r := l.listenOn(t, dst, 5555)
					l.sendTo(t, dst, 5555, 10, 200*time.Microsecond, 64)
					if got := r.stop(t); got != step.want {
						t.Errorf("%s: to %s: received %d of 10, want %d", step.name, dst, got, step.want)
					}
				}
				after := m.Status().Interfaces[l.gwIf].Rules
				for _, rule := range []string{step.r4, step.r6} {
					if got := after[rule].Packets - before[rule].Packets; got != 10 {
						t.Errorf("%s: counter %s +%d, want +10 (all: %+v)", step.name, rule, got, after)
					}
				}
				for _, src := range []string{l.clientIP, l.clientIP6} {
					dst := l.gwIP
					if strings.Contains(src, ":") {
						dst = l.gwIP6
					}
					d, err := m.Test(l.gwIf, netpol.Packet{Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), Proto: netpol.ProtoUDP, DPort: 5555})
					if err != nil || (d.Rule != step.r4 && d.Rule != step.r6) {
						t.Errorf("%s: Test(%s) = %+v, %v", step.name, src, d, err)
					}
				}
			}
		})
	}
}
