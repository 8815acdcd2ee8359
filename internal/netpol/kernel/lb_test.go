package kernel

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/outpost-edge/outpost/internal/config"
	"github.com/outpost-edge/outpost/internal/netpol"
)

const lbVIP = "10.96.0.10:80"

// TestLBHelperProcess is a backend: it answers every line on every
// connection with its name (run in the gateway namespace).
func TestLBHelperProcess(t *testing.T) {
	spec := os.Getenv("NETPOL_LB_HELPER") // name@addr
	if spec == "" {
		t.Skip("helper process")
	}
	name, addr, _ := strings.Cut(spec, "@")
	if a, ok := strings.CutPrefix(addr, "udp:"); ok {
		// A UDP backend: answers every non-empty datagram with its name
		// (the health check's empty datagrams get no answer).
		pc, err := net.ListenPacket("udp4", a)
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		fmt.Println("ready")
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				os.Exit(0)
			}
			if n > 0 {
				pc.WriteTo([]byte(name+"\n"), from)
			}
		}
	}
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	for {
		c, err := ln.Accept()
		if err != nil {
			os.Exit(0)
		}
		go func() {
			defer c.Close()
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				fmt.Fprintln(c, name)
			}
		}()
	}
}

type lbBackendProc struct{ cmd *exec.Cmd }

func (l *lab) startBackend(t *testing.T, name, addr string) *lbBackendProc {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", l.gw, os.Args[0], "-test.run=^TestLBHelperProcess$")
	cmd.Env = append(os.Environ(), "NETPOL_LB_HELPER="+name+"@"+addr)
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		t.Fatalf("backend %s: %q %v", name, line, err)
	}
	p := &lbBackendProc{cmd: cmd}
	t.Cleanup(p.stop)
	return p
}

func (p *lbBackendProc) stop() {
	if p.cmd.ProcessState == nil {
		p.cmd.Process.Kill()
		p.cmd.Wait()
	}
}

// dialFrom connects to addr from inside namespace ns (the socket stays in
// the namespace it was made in).
func dialFrom(ns, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNetns(ns, func() (err error) { c, err = net.DialTimeout("tcp4", addr, 10*time.Second); return })
	return c, err
}

// inNetns runs fn on a thread switched into namespace ns.
func inNetns(ns string, fn func() error) error {
	runtime.LockOSThread()
	orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	f, err := os.Open(filepath.Join("/var/run/netns", ns))
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer f.Close()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return err
	}
	ferr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		panic(err) // the thread stays locked and dies with the test
	}
	runtime.UnlockOSThread()
	return ferr
}

// ask sends a line and returns the backend's name.
func ask(c net.Conn) (string, error) {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintln(c, "who"); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// lbCgroup puts the test process in a fresh cgroup v2 (mounted here if no
// cgroup2 is) so the socket programs see its connects; undone at cleanup.
func lbTestCgroup(t *testing.T) string {
	t.Helper()
	root := cgroup2Mount()
	if root == "" {
		root = t.TempDir()
		if err := unix.Mount("none", root, "cgroup2", 0, ""); err != nil {
			t.Skipf("the kernel refuses a cgroup2 mount (%v): socket load balancing cannot be tested", err)
		}
		t.Cleanup(func() { unix.Unmount(root, unix.MNT_DETACH) })
	}
	dir, err := os.MkdirTemp(root, "outpost-lbtest-")
	if err != nil {
		t.Skipf("cannot create a cgroup v2 (%v)", err)
	}
	pid := strconv.Itoa(os.Getpid())
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(pid), 0); err != nil {
		os.Remove(dir)
		t.Skipf("cannot join a cgroup v2 (%v)", err)
	}
	t.Cleanup(func() {
		os.WriteFile(filepath.Join(root, "cgroup.procs"), []byte(pid), 0)
		os.Remove(dir)
	})
	return dir
}

func lbConfig(backend, algo string, addrs []string) netpol.Config {
	s := netpol.LBService{Name: "api", VIP: lbVIP, Algorithm: algo,
		Health: netpol.LBHealth{Interval: config.Duration(100 * time.Millisecond), Timeout: config.Duration(time.Second), Fall: 1, Rise: 1}}
	for _, a := range addrs {
		s.Backends = append(s.Backends, netpol.LBBackend{Address: a})
	}
	return netpol.Config{Backend: backend, LoadBalancers: []netpol.LBService{s}}
}

// TestLB runs the same checks against both data planes: spreading (round
// robin exactly even, maglev all backends used), health-driven removal and
// re-add, and an established flow staying on its backend while the set
// changes around it. Local clients (cgroup/connect4) for ebpf, remote
// clients (prerouting DNAT) for nftables.
func TestLB(t *testing.T) {
	for _, plane := range []string{"ebpf", "ebpf-tc", "nftables"} {
		for _, algo := range []string{"round_robin", "maglev"} {
			t.Run(plane+"/"+algo, func(t *testing.T) { testLB(t, plane, algo) })
		}
	}
}

// newLBLab is a lab whose client routes the VIPs' network to the gateway,
// and the Manager options for a plane: "ebpf" (the test process in the
// LB's cgroup: socket balancing), "ebpf-tc" (the LB on an empty cgroup, so
// only the TC path on the gateway's interface balances the test's
// connects) or "nftables".
func newLBLab(t *testing.T, plane string) (*lab, Options) {
	t.Helper()
	l := newLab(t)
	if out, err := exec.Command("ip", "-n", l.client, "route", "add", "10.96.0.0/24", "via", l.gwIP).CombinedOutput(); err != nil {
		t.Fatalf("route: %v %s", err, out)
	}
	opts := Options{Netns: filepath.Join("/var/run/netns", l.gw), PinRoot: l.pinRoot}
	switch plane {
	case "ebpf":
		opts.LBCgroup = lbTestCgroup(t)
	case "ebpf-tc":
		cg := lbTestCgroup(t)
		empty := filepath.Join(cg, "..", filepath.Base(cg)+"-empty")
		if err := os.Mkdir(empty, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(empty) })
		opts.LBCgroup = empty
	}
	return l, opts
}

func testLB(t *testing.T, plane, algo string) {
	l, opts := newLBLab(t, plane)
	cfgPlane, remote := plane, false
	if plane == "ebpf-tc" {
		cfgPlane, remote = "ebpf", true
	}
	m := New(opts)
	defer m.Close()
	addrs := []string{l.gwIP + ":9001", l.gwIP + ":9002", l.gwIP + ":9003"}
	procs := map[string]*lbBackendProc{}
	for i, a := range addrs {
		procs[fmt.Sprintf("b%d", i+1)] = l.startBackend(t, fmt.Sprintf("b%d", i+1), a)
	}
	lcfg := lbConfig(cfgPlane, algo, addrs)
	if remote {
		lcfg.LoadBalancers[0].Interface = l.gwIf
	}
	if err := m.Apply(lcfg); err != nil {
		// Skip only where the kernel refuses BPF altogether (the XDP
		// policy program does not load either); a verifier rejection of
		// the LB programs on a kernel that loads BPF is a failure.
		if cfgPlane == "ebpf" && strings.Contains(err.Error(), ErrNoBPF.Error()) {
			if _, xerr := newXDPBackend(l.pinRoot, m.inNS); xerr != nil {
				t.Skipf("the kernel refuses BPF programs: %v", err)
			}
		}
		t.Fatal(err)
	}
	if got := m.Status().LoadBalancers["api"].Backend; got != cfgPlane {
		t.Fatalf("plane %q, want %q", got, plane)
	}
	spread := func(n int) map[string]int {
		t.Helper()
		seen := map[string]int{}
		for i := 0; i < n; i++ {
			c, err := dialFrom(l.client, lbVIP)
			if err != nil {
				t.Fatalf("connect %d: %v", i, err)
			}
			name, err := ask(c)
			if err != nil {
				t.Fatalf("ask %d: %v", i, err)
			}
			if c.RemoteAddr().String() != lbVIP {
				t.Fatalf("getpeername shows %s, want the VIP %s", c.RemoteAddr(), lbVIP)
			}
			c.Close()
			seen[name]++
		}
		return seen
	}
	seen := spread(60)
	if algo == "round_robin" {
		if seen["b1"] != 20 || seen["b2"] != 20 || seen["b3"] != 20 {
			t.Fatalf("round robin over 60 connects: %v, want 20 each", seen)
		}
	} else if len(seen) != 3 {
		t.Fatalf("maglev over 60 connects used %v, want all 3 backends", seen)
	}
	// An established flow, then b3 dies: it leaves the set; the flow stays.
	keep, err := dialFrom(l.client, lbVIP)
	if err != nil {
		t.Fatal(err)
	}
	defer keep.Close()
	first, err := ask(keep)
	if err != nil {
		t.Fatal(err)
	}
	victim := "b3"
	if first == "b3" {
		victim = "b2"
	}
	procs[victim].stop()
	waitFor(t, func() bool { return !m.lbHealthy("api", victim) }, victim+" marked down")
	seen = spread(30)
	if seen[victim] != 0 || len(seen) != 2 {
		t.Fatalf("with %s down: %v", victim, seen)
	}
	if again, err := ask(keep); err != nil || again != first {
		t.Fatalf("established flow moved from %s to %q (%v) after %s left", first, again, err, victim)
	}
	// Re-add: it comes back when its check passes.
	idx := map[string]int{"b1": 0, "b2": 1, "b3": 2}[victim]
	procs[victim] = l.startBackend(t, victim, addrs[idx])
	waitFor(t, func() bool { return m.lbHealthy("api", victim) }, victim+" back up")
	seen = spread(60)
	if seen[victim] == 0 || len(seen) != 3 {
		t.Fatalf("after %s came back: %v", victim, seen)
	}
	if again, err := ask(keep); err != nil || again != first {
		t.Fatalf("established flow moved from %s to %q (%v) after %s came back", first, again, err, victim)
	}
	if cfgPlane == "ebpf" {
		st := m.Status().LoadBalancers["api"]
		var total uint64
		for _, b := range st.Backends {
			total += b.Connections
		}
		if total != 60+1+30+60 {
			t.Errorf("connection counters total %d, want %d: %+v", total, 151, st)
		}
	}
}

func (m *Manager) lbHealthy(svc, name string) bool {
	st := m.Status().LoadBalancers[svc]
	i := map[string]int{"b1": 0, "b2": 1, "b3": 2}[name]
	return i < len(st.Backends) && st.Backends[i].Healthy
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// When the agent stops (or dies: the same handles close), eBPF load
// balancers keep balancing over the last healthy backends: their links are
// pinned. The next agent takes over without a connect failing: it attaches
// its programs, programs the services, then detaches the old ones. A
// config without load balancers removes everything.
func TestLBSurvivesAgentStop(t *testing.T) {
	for _, plane := range []string{"ebpf", "ebpf-tc"} {
		t.Run(plane, func(t *testing.T) {
			l, opts := newLBLab(t, plane)
			addrs := []string{l.gwIP + ":9001", l.gwIP + ":9002", l.gwIP + ":9003"}
			for i, a := range addrs {
				l.startBackend(t, fmt.Sprintf("b%d", i+1), a)
			}
			cfg := lbConfig("ebpf", "round_robin", addrs)
			if plane == "ebpf-tc" {
				cfg.LoadBalancers[0].Interface = l.gwIf
			}
			spread := func(when string) {
				t.Helper()
				seen := map[string]int{}
				for i := 0; i < 30; i++ {
					c, err := dialFrom(l.client, lbVIP)
					if err != nil {
						t.Fatalf("%s: connect %d: %v", when, i, err)
					}
					name, err := ask(c)
					c.Close()
					if err != nil {
						t.Fatalf("%s: ask %d: %v", when, i, err)
					}
					seen[name]++
				}
				if len(seen) != 3 {
					t.Fatalf("%s: 30 connects reached %v, want all 3 backends", when, seen)
				}
			}
			m := New(opts)
			if err := m.Apply(cfg); err != nil {
				t.Fatal(err)
			}
			spread("agent running")
			if err := m.Close(); err != nil {
				t.Fatal(err)
			}
			spread("agent stopped")

			// The next agent: while it takes over, a client keeps
			// connecting; not one connect may fail.
			stop := make(chan struct{})
			failed := make(chan error, 1)
			go func() {
				defer close(failed)
				for {
					select {
					case <-stop:
						return
					default:
					}
					c, err := dialFrom(l.client, lbVIP)
					if err == nil {
						_, err = ask(c)
						c.Close()
					}
					if err != nil {
						failed <- err
						return
					}
				}
			}()
			m2 := New(opts)
			if err := m2.Apply(cfg); err != nil {
				t.Fatal(err)
			}
			time.Sleep(200 * time.Millisecond)
			close(stop)
			if err := <-failed; err != nil {
				t.Fatalf("a connect failed while the next agent took over: %v", err)
			}
			spread("next agent")
			if st := m2.Status().LoadBalancers["api"]; st.Backends[0].Connections == 0 {
				t.Fatalf("the next agent's programs balanced nothing: %+v", st)
			}
			// No load balancers any more: nothing is left attached or pinned.
			if err := m2.Apply(netpol.Config{Backend: "ebpf"}); err != nil {
				t.Fatal(err)
			}
			if ents, _ := os.ReadDir(filepath.Join(l.pinRoot, "lb:socket")); len(ents) != 0 {
				t.Fatalf("pins left: %v", ents)
			}
			m2.Close()
		})
	}
}

// UDP services: connected sockets spread over the backends and keep theirs
// (getpeername shows the VIP); an unconnected socket's datagrams stick to
// one backend and their replies come from the VIP (recvmsg4); a backend
// whose port becomes unreachable is taken out by the UDP health check,
// and a socket that had it moves to a healthy one (socket plane; nftables
// keeps a UDP flow's conntrack entry until it times out).
func TestLBUDP(t *testing.T) {
	for _, plane := range []string{"ebpf", "nftables"} {
		t.Run(plane, func(t *testing.T) {
			l, opts := newLBLab(t, plane)
			m := New(opts)
			defer m.Apply(netpol.Config{Backend: plane}) // remove, not leave pinned
			addrs := []string{l.gwIP + ":9101", l.gwIP + ":9102", l.gwIP + ":9103"}
			procs := map[string]*lbBackendProc{}
			for i, a := range addrs {
				name := fmt.Sprintf("b%d", i+1)
				procs[name] = l.startBackend(t, name, "udp:"+a)
			}
			cfg := lbConfig(plane, "round_robin", addrs)
			cfg.LoadBalancers[0].Proto = "udp"
			if err := m.Apply(cfg); err != nil {
				t.Fatal(err)
			}
			askUDP := func(c net.Conn) (string, error) {
				c.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := c.Write([]byte("who")); err != nil {
					return "", err
				}
				b := make([]byte, 64)
				n, err := c.Read(b)
				return strings.TrimSpace(string(b[:n])), err
			}
			seen := map[string]int{}
			for i := 0; i < 30; i++ {
				var c net.Conn
				if err := inNetns(l.client, func() (err error) { c, err = net.Dial("udp4", lbVIP); return }); err != nil {
					t.Fatal(err)
				}
				name, err := askUDP(c)
				if err != nil {
					t.Fatalf("connected socket %d: %v", i, err)
				}
				if plane == "ebpf" && c.RemoteAddr().String() != lbVIP {
					t.Fatalf("getpeername shows %s, want the VIP", c.RemoteAddr())
				}
				again, err := askUDP(c)
				if err != nil || again != name {
					t.Fatalf("connected socket %d moved from %s to %q (%v)", i, name, again, err)
				}
				c.Close()
				seen[name]++
			}
			if plane == "ebpf" && (seen["b1"] != 10 || seen["b2"] != 10 || seen["b3"] != 10) {
				t.Fatalf("round robin over 30 UDP sockets: %v, want 10 each", seen)
			}
			if len(seen) != 3 {
				t.Fatalf("30 UDP sockets reached %v, want all 3 backends", seen)
			}
			// An unconnected socket: sendto the VIP, replies from the VIP.
			var pc net.PacketConn
			if err := inNetns(l.client, func() (err error) { pc, err = net.ListenPacket("udp4", ":0"); return }); err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			vip := net.UDPAddrFromAddrPort(netip.MustParseAddrPort(lbVIP))
			sendto := func() (string, error) {
				pc.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := pc.WriteTo([]byte("who"), vip); err != nil {
					return "", err
				}
				b := make([]byte, 64)
				n, from, err := pc.ReadFrom(b)
				if err == nil && from.String() != lbVIP {
					return "", fmt.Errorf("reply from %s, want the VIP %s", from, lbVIP)
				}
				return strings.TrimSpace(string(b[:n])), err
			}
			first, err := sendto()
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 10; i++ {
				if got, err := sendto(); err != nil || got != first {
					t.Fatalf("unconnected socket: datagram %d answered by %q (%v), want %s", i, got, err, first)
				}
			}
			// Its backend's port goes away: the UDP check takes it out.
			procs[first].stop()
			waitFor(t, func() bool { return !m.lbHealthy("api", first) }, first+" marked down by the UDP check")
			if plane == "ebpf" {
				got, err := sendto()
				if err != nil || got == first || got == "" {
					t.Fatalf("after %s went down, the unconnected socket got %q (%v)", first, got, err)
				}
			}
		})
	}
}
