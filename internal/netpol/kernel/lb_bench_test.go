package kernel

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestLBLoadHelper is the load generator of the LB benchmark, run in the
// client namespace: NETPOL_LB_LOAD=conn|req@addr@seconds@workers prints
// the operations per second. conn: connect, one request, close. req:
// requests over one connection per worker.
func TestLBLoadHelper(t *testing.T) {
	spec := os.Getenv("NETPOL_LB_LOAD")
	if spec == "" {
		t.Skip("helper process")
	}
	f := strings.Split(spec, "@")
	secs, _ := strconv.ParseFloat(f[2], 64)
	workers, _ := strconv.Atoi(f[3])
	deadline := time.Now().Add(time.Duration(secs * float64(time.Second)))
	var ops, errs atomic.Int64
	var wg sync.WaitGroup
	buf := []byte("x\n")
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var c net.Conn
			var r *bufio.Reader
			for time.Now().Before(deadline) {
				if c == nil {
					var err error
					if c, err = net.DialTimeout("tcp4", f[1], 5*time.Second); err != nil {
						errs.Add(1)
						c = nil
						continue
					}
					r = bufio.NewReader(c)
				}
				c.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := c.Write(buf); err != nil {
					errs.Add(1)
					c.Close()
					c = nil
					continue
				}
				if _, err := r.ReadString('\n'); err != nil {
					errs.Add(1)
					c.Close()
					c = nil
					continue
				}
				ops.Add(1)
				if f[0] == "conn" {
					c.Close()
					c = nil
				}
			}
			if c != nil {
				c.Close()
			}
		}()
	}
	wg.Wait()
	fmt.Printf("%.0f %d\n", float64(ops.Load())/secs, errs.Load())
	os.Exit(0)
}

func (l *lab) load(t *testing.T, mode, addr string, secs float64, workers int) float64 {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", l.client, os.Args[0], "-test.run=^TestLBLoadHelper$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("NETPOL_LB_LOAD=%s@%s@%g@%d", mode, addr, secs, workers))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("load %s %s: %v", mode, addr, err)
	}
	var rate float64
	var nerr int
	fmt.Sscanf(string(out), "%f %d", &rate, &nerr)
	if nerr > 0 {
		t.Logf("load %s %s: %d errors", mode, addr, nerr)
	}
	return rate
}

// TestLBBenchVsHAProxy (OUTPOST_LB_BENCH=1, bench/netpol_lb.sh): the same
// client, backends and namespaces through the eBPF socket LB and through
// HAProxy (mode tcp, roundrobin) in the gateway namespace.
func TestLBBenchVsHAProxy(t *testing.T) {
	if os.Getenv("OUTPOST_LB_BENCH") == "" {
		t.Skip("benchmark: OUTPOST_LB_BENCH=1 (bench/netpol_lb.sh)")
	}
	haproxy, err := exec.LookPath("haproxy")
	if err != nil {
		t.Fatal("haproxy is not installed: apt-get install haproxy")
	}
	secs, _ := strconv.ParseFloat(os.Getenv("OUTPOST_LB_BENCH_SECONDS"), 64)
	if secs <= 0 || secs > 30 {
		secs = 3
	}
	workers := 8
	l := newLab(t)
	exec.Command("ip", "-n", l.client, "route", "add", "10.96.0.0/24", "via", l.gwIP).Run()
	cg := lbTestCgroup(t)
	addrs := []string{l.gwIP + ":9001", l.gwIP + ":9002", l.gwIP + ":9003"}
	for i, a := range addrs {
		l.startBackend(t, fmt.Sprintf("b%d", i+1), a)
	}
	// Two phases: the socket LB (this process's cgroup: connect4), then
	// the TC path (the LB on an empty sibling cgroup and on the gateway's
	// interface, so the same client is a remote one).
	empty := filepath.Join(cg, "..", filepath.Base(cg)+"-empty")
	if err := os.Mkdir(empty, 0o755); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(empty)
	phase := func(tc bool) *Manager {
		opts := Options{Netns: filepath.Join("/var/run/netns", l.gw), PinRoot: l.pinRoot, LBCgroup: cg}
		cfg := lbConfig("ebpf", "round_robin", addrs)
		if tc {
			opts.LBCgroup = empty
			cfg.LoadBalancers[0].Interface = l.gwIf
		}
		m := New(opts)
		if err := m.Apply(cfg); err != nil {
			t.Fatal(err)
		}
		return m
	}
	hcfg := filepath.Join(t.TempDir(), "haproxy.cfg")
	y := fmt.Sprintf(`global
  maxconn 4000
defaults
  mode tcp
  timeout connect 5s
  timeout client 30s
  timeout server 30s
listen lb
  bind %s:8080
  balance roundrobin
  server b1 %s
  server b2 %s
  server b3 %s
`, l.gwIP, addrs[0], addrs[1], addrs[2])
	os.WriteFile(hcfg, []byte(y), 0o600)
	hp := exec.Command("ip", "netns", "exec", l.gw, haproxy, "-db", "-f", hcfg)
	hp.Stderr = os.Stderr
	if err := hp.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { hp.Process.Kill(); hp.Wait() }()
	waitFor(t, func() bool {
		c, err := dialFrom(l.client, l.gwIP+":8080")
		if err == nil {
			c.Close()
		}
		return err == nil
	}, "haproxy listening")
	haddr := l.gwIP + ":8080"
	// Interleaved with HAProxy, twice each, best of two: the machine is
	// shared.
	best := map[string]float64{}
	for _, tc := range []bool{false, true} {
		m := phase(tc)
		name := "ebpf"
		if tc {
			name = "ebpf-tc"
		}
		for round := 0; round < 2; round++ {
			for _, mode := range []string{"conn", "req"} {
				for _, tgt := range []struct{ name, addr string }{{name, lbVIP}, {"haproxy", haddr}} {
					r := l.load(t, mode, tgt.addr, secs, workers)
					k := tgt.name + "/" + mode
					if r > best[k] {
						best[k] = r
					}
				}
			}
		}
		m.Close()
	}
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("LB bench (%d workers, %.0fs per run, best of 2, load %s)\n", workers, secs, strings.Fields(string(load))[0])
	for _, mode := range []struct{ k, label string }{{"conn", "connections/s"}, {"req", "requests/s"}} {
		h := best["haproxy/"+mode.k]
		fmt.Printf("%s: ebpf socket %.0f (%.2fx), ebpf tc %.0f (%.2fx), haproxy %.0f\n", mode.label,
			best["ebpf/"+mode.k], best["ebpf/"+mode.k]/h, best["ebpf-tc/"+mode.k], best["ebpf-tc/"+mode.k]/h, h)
	}
}
