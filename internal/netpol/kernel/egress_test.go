package kernel

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/outpost-edge/outpost/internal/netpol"
)

// The egress probe: when the test binary is started with
// OUTPOST_EGRESS_PROBE set, it is the "component": it tries each
// destination ("tcp 127.0.0.1:80", "udp [::1]:53") in order, prints one
// verdict line per try (ok, eperm or the error) and exits.
func init() {
	if spec := os.Getenv("OUTPOST_EGRESS_AGENT"); spec != "" {
		egressAgent(spec)
	}
	probes := os.Getenv("OUTPOST_EGRESS_PROBE")
	if probes == "" {
		return
	}
	for _, p := range strings.Split(probes, ",") {
		netw, addr, _ := strings.Cut(p, " ")
		var err error
		switch netw {
		case "tcp":
			var c net.Conn
			if c, err = net.DialTimeout("tcp", addr, 30*time.Second); err == nil {
				c.Close()
			}
		case "udp":
			var pc net.PacketConn
			ap := netip.MustParseAddrPort(addr)
			local := "127.0.0.1:0"
			if ap.Addr().Is6() {
				local = "[::1]:0"
			}
			if pc, err = net.ListenPacket("udp", local); err == nil {
				_, err = pc.WriteTo([]byte("x"), net.UDPAddrFromAddrPort(ap))
				pc.Close()
			}
		}
		switch {
		case err == nil:
			fmt.Println("ok")
		case errors.Is(err, syscall.EPERM):
			fmt.Println("eperm")
		default:
			fmt.Println("error:", err)
		}
	}
	os.Exit(0)
}

// egressAgent is the "agent" of TestEgressSurvivesAgentKill: it puts one
// component's group under an allow list ("root,component,allowed port"),
// says ready, and waits to be killed.
func egressAgent(spec string) {
	f := strings.Split(spec, ",")
	e, err := OpenEgress(f[0], nil)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	a, err := netpol.CompileEgress(netpol.Egress{Host: "127.0.0.1", Port: f[2], Proto: "tcp"}, nil)
	if err == nil {
		_, err = e.Set(f[1], "", a)
	}
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	select {}
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func openEgress(t *testing.T, log *slog.Logger) *Egress {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("egress tests need root (cgroup2, BPF)")
	}
	e, err := OpenEgress(t.TempDir(), log)
	if errors.Is(err, ErrNoBPF) {
		t.Skipf("the kernel refuses cgroup BPF programs here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// listen opens a TCP listener (so a refused connect is our EPERM, never a
// connection refused) and a UDP socket on addr; it returns their port.
func listen(t *testing.T, host string) uint16 {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

// runProbe starts the test binary as a component in fd's group and
// returns its verdict lines.
func runProbe(t *testing.T, fd *os.File, probes []string) []string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "OUTPOST_EGRESS_PROBE="+strings.Join(probes, ","))
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(fd.Fd())}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("probe: %v\n%s", err, stderr.String())
	}
	return strings.Split(strings.TrimSpace(string(out)), "\n")
}

func TestEgressRealProcesses(t *testing.T) {
	logs := &syncBuf{}
	e := openEgress(t, slog.New(slog.NewTextHandler(logs, nil)))
	allowed4, undeclared4 := listen(t, "127.0.0.1"), listen(t, "127.0.0.1")
	allowed6, undeclared6 := listen(t, "::1"), listen(t, "::1")
	// A UDP destination nobody listens on: sendto succeeds when allowed.
	udpAllowed, udpOther := uint16(allowed4), uint16(undeclared4)

	var allow []netpol.EgressAllow
	for _, eg := range []netpol.Egress{
		{Host: "127.0.0.1", Port: fmt.Sprint(allowed4), Proto: "tcp"},
		{CIDR: "::1/128", Port: fmt.Sprint(allowed6)},
		{CIDR: "127.0.0.0/8", Port: fmt.Sprintf("%d-%d", udpAllowed, udpAllowed), Proto: "udp"},
	} {
		a, err := netpol.CompileEgress(eg, nil)
		if err != nil {
			t.Fatal(err)
		}
		allow = append(allow, a...)
	}
	fd, err := e.Set("probe", "", allow)
	if err != nil {
		t.Fatal(err)
	}
	// A second component with no entries: everything refused.
	fdNone, err := e.Set("closed", "", nil)
	if err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		probe, want string
	}{
		{fmt.Sprintf("tcp 127.0.0.1:%d", allowed4), "ok"},
		{fmt.Sprintf("tcp 127.0.0.1:%d", undeclared4), "eperm"},
		{fmt.Sprintf("tcp 127.0.0.1:%d", undeclared4), "eperm"},
		{fmt.Sprintf("tcp [::1]:%d", allowed6), "ok"},
		{fmt.Sprintf("tcp [::1]:%d", undeclared6), "eperm"},
		{fmt.Sprintf("udp 127.0.0.1:%d", udpAllowed), "ok"},
		{fmt.Sprintf("udp 127.0.0.1:%d", udpOther), "eperm"}, // the tcp entry's port, over udp
		{fmt.Sprintf("udp [::1]:%d", allowed6), "ok"},        // proto any
		{fmt.Sprintf("udp [::1]:%d", undeclared6), "eperm"},
	}
	var probes []string
	for _, c := range cases {
		probes = append(probes, c.probe)
	}
	got := runProbe(t, fd, probes)
	if len(got) != len(cases) {
		t.Fatalf("probe printed %q", got)
	}
	wantAllowed, wantDenied := 0, 0
	for i, c := range cases {
		if got[i] != c.want {
			t.Errorf("%s: got %s, want %s", c.probe, got[i], c.want)
		}
		if c.want == "ok" {
			wantAllowed++
		} else {
			wantDenied++
		}
	}
	// The same destinations from the test process (in no component group)
	// are not affected.
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", undeclared4), 30*time.Second)
	if err != nil {
		t.Fatalf("the agent's own connection was refused: %v", err)
	}
	c.Close()
	closedGot := runProbe(t, fdNone, []string{fmt.Sprintf("tcp 127.0.0.1:%d", allowed4)})
	if closedGot[0] != "eperm" {
		t.Errorf("a component with an empty egress list connected: %s", closedGot[0])
	}

	st, err := e.Status()
	if err != nil {
		t.Fatal(err)
	}
	p := st["probe"]
	if p.Allowed != uint64(wantAllowed) || p.Denied != uint64(wantDenied) {
		t.Errorf("probe counters: allowed %d denied %d, want %d and %d", p.Allowed, p.Denied, wantAllowed, wantDenied)
	}
	wantDest := map[string]uint64{
		fmt.Sprintf("127.0.0.1:%d/tcp", undeclared4): 2,
		fmt.Sprintf("[::1]:%d/tcp", undeclared6):     1,
		fmt.Sprintf("127.0.0.1:%d/udp", udpOther):    1,
		fmt.Sprintf("[::1]:%d/udp", undeclared6):     1,
	}
	if fmt.Sprint(p.Destinations) != fmt.Sprint(wantDest) {
		t.Errorf("refused destinations %v, want %v", p.Destinations, wantDest)
	}
	if cl := st["closed"]; cl.Denied != 1 || cl.Allowed != 0 {
		t.Errorf("closed component counters: %+v", cl)
	}
	// Logged once per component and destination, also after more refusals.
	runProbe(t, fd, []string{fmt.Sprintf("tcp 127.0.0.1:%d", undeclared4)})
	if _, err := e.Status(); err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	for d := range wantDest {
		if n := strings.Count(out, "destination="+d); n != 1 {
			t.Errorf("%s logged %d times, want once\n%s", d, n, out)
		}
	}
	if n := strings.Count(out, "component=closed"); n != 1 {
		t.Errorf("closed component logged %d times, want once", n)
	}

	// Replacing the list takes effect for the next connect.
	a, _ := netpol.CompileEgress(netpol.Egress{Host: "127.0.0.1", Port: fmt.Sprint(undeclared4), Proto: "tcp"}, nil)
	if _, err := e.Set("probe", "", a); err != nil {
		t.Fatal(err)
	}
	got = runProbe(t, fd, []string{fmt.Sprintf("tcp 127.0.0.1:%d", undeclared4), fmt.Sprintf("tcp 127.0.0.1:%d", allowed4)})
	if got[0] != "ok" || got[1] != "eperm" {
		t.Errorf("after the update: %q, want ok then eperm", got)
	}
	if err := e.Remove("probe"); err != nil {
		t.Fatal(err)
	}
	if _, ok := mustStatus(t, e)["probe"]; ok {
		t.Error("a removed component still has counters")
	}
}

func mustStatus(t *testing.T, e *Egress) map[string]netpol.EgressStatus {
	t.Helper()
	st, err := e.Status()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// The agent killed with -9 while a component runs: the component's egress
// programs and allow list are pinned, so it stays restricted (it is not
// left open until the next agent stops it). The next agent detaches what
// was pinned when it opens egress, and starts afresh.
func TestEgressSurvivesAgentKill(t *testing.T) {
	openEgress(t, nil) // skips where the kernel refuses the programs
	root := t.TempDir()
	allowed, undeclared := listen(t, "127.0.0.1"), listen(t, "127.0.0.1")
	probes := []string{fmt.Sprintf("tcp 127.0.0.1:%d", allowed), fmt.Sprintf("tcp 127.0.0.1:%d", undeclared)}
	group := filepath.Join(root, "outpost-egress", "comp")
	t.Cleanup(func() {
		os.Remove(group)
		os.Remove(filepath.Dir(group))
		unix.Unmount(root, unix.MNT_DETACH)
		os.RemoveAll(egressPinDir(root))
	})
	agent := exec.Command(os.Args[0], "-test.run=^$")
	agent.Env = append(os.Environ(), fmt.Sprintf("OUTPOST_EGRESS_AGENT=%s,comp,%d", root, allowed))
	out, _ := agent.StdoutPipe()
	agent.Stderr = os.Stderr
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		agent.Process.Kill()
		t.Fatalf("agent: %q %v", line, err)
	}
	probe := func(when string, want ...string) {
		t.Helper()
		fd, err := os.Open(group)
		if err != nil {
			t.Fatal(err)
		}
		defer fd.Close()
		if got := runProbe(t, fd, probes); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Fatalf("%s: allowed, undeclared = %v, want %v", when, got, want)
		}
	}
	probe("agent running", "ok", "eperm")
	agent.Process.Signal(syscall.SIGKILL)
	agent.Wait()
	probe("agent killed", "ok", "eperm")

	e, err := OpenEgress(root, nil)
	if err != nil {
		t.Fatal(err)
	}
	probe("next agent opened (stale programs detached)", "ok", "ok")
	a, err := netpol.CompileEgress(netpol.Egress{Host: "127.0.0.1", Port: fmt.Sprint(allowed), Proto: "tcp"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Set("comp", "", a); err != nil {
		t.Fatal(err)
	}
	probe("next agent set the list", "ok", "eperm")
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(egressPinDir(root)); !os.IsNotExist(err) {
		t.Fatalf("pins left after Close: %v", err)
	}
}
