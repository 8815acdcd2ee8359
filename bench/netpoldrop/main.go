// Command netpoldrop measures how fast each network policy backend drops a
// UDP flood on the same veth pair (bench/netpol_drop.sh creates the
// namespaces): the XDP program and the nftables backend through the
// agent's netpol manager, and a plain iptables DROP rule, one after the
// other in one run. `netpoldrop send` is the generator (run inside the
// client namespace); the default mode applies each policy in the gateway
// namespace, runs the generator for -duration and reports dropped
// packets/s (the rule's own counter) and the machine's busy CPU.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/outpost-edge/outpost/internal/netpol"
	"github.com/outpost-edge/outpost/internal/netpol/kernel"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "send" {
		send(os.Args[2:])
		return
	}
	clientNS := flag.String("client-ns", "", "client network namespace name (the generator runs there)")
	gwNS := flag.String("gw-ns", "", "gateway network namespace name (the policy is applied there)")
	iface := flag.String("iface", "", "gateway-side veth")
	dst := flag.String("dst", "", "address:port the flood is sent to")
	dur := flag.Duration("duration", 5*time.Second, "flood duration per backend (bounded: at most 60s)")
	backends := flag.String("backends", "ebpf,nftables,iptables", "backends, in order")
	flag.Parse()
	if *dur > time.Minute {
		*dur = time.Minute
	}
	self, _ := os.Executable()
	_, port, _ := net.SplitHostPort(*dst)
	for _, be := range strings.Split(*backends, ",") {
		var read func() uint64
		var stop func()
		switch be {
		case "ebpf", "nftables":
			m := kernel.New(kernel.Options{Netns: "/var/run/netns/" + *gwNS, PinRoot: "/sys/fs/bpf/outpost-netpoldrop"})
			cfg := netpol.Config{Backend: be, Interfaces: []netpol.Interface{{Name: *iface, Default: "allow", OnAgentStop: "open",
				Rules: []netpol.Rule{{Name: "flood", Action: "deny", Proto: "udp", DPort: port}}}}}
			if err := m.Apply(cfg); err != nil {
				log.Fatalf("%s: %v", be, err)
			}
			read = func() uint64 { return m.Status().Interfaces[*iface].Rules["flood"].Packets }
			stop = func() { m.Close() }
		case "iptables":
			ipt := func(args ...string) string {
				out, err := exec.Command("ip", append([]string{"netns", "exec", *gwNS, "iptables"}, args...)...).CombinedOutput()
				if err != nil {
					log.Fatalf("iptables %v: %v\n%s", args, err, out)
				}
				return string(out)
			}
			ipt("-I", "INPUT", "-p", "udp", "--dport", port, "-j", "DROP")
			read = func() uint64 {
				for _, l := range strings.Split(ipt("-nvxL", "INPUT"), "\n") {
					f := strings.Fields(l)
					if len(f) > 2 && f[2] == "DROP" {
						n, _ := strconv.ParseUint(f[0], 10, 64)
						return n
					}
				}
				return 0
			}
			stop = func() { ipt("-D", "INPUT", "-p", "udp", "--dport", port, "-j", "DROP") }
		default:
			log.Fatalf("unknown backend %q", be)
		}
		before, busy0, total0 := read(), 0.0, 0.0
		busy0, total0 = cpuStat()
		out, err := exec.Command("ip", "netns", "exec", *clientNS, self, "send", "-dst", *dst, "-duration", dur.String()).CombinedOutput()
		if err != nil {
			log.Fatalf("generator: %v\n%s", err, out)
		}
		busy1, total1 := cpuStat()
		dropped := read() - before
		stop()
		secs := dur.Seconds()
		fmt.Printf("%-9s dropped %9.0f pkt/s  (generator: %s)  machine CPU busy %.0f%% of %d CPUs\n",
			be, float64(dropped)/secs, strings.TrimSpace(string(out)), 100*(busy1-busy0)/(total1-total0), runtime.NumCPU())
	}
}

// cpuStat returns busy and total jiffies of all CPUs (/proc/stat).
func cpuStat() (busy, total float64) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, 1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan()
	for i, v := range strings.Fields(sc.Text())[1:] {
		n, _ := strconv.ParseFloat(v, 64)
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total
}

// send floods dst with 18-byte UDP datagrams from one socket per CPU for
// the duration and prints what it sent.
func send(args []string) {
	fs := flag.NewFlagSet("send", flag.ExitOnError)
	dst := fs.String("dst", "", "address:port")
	dur := fs.Duration("duration", 5*time.Second, "how long (at most 60s)")
	fs.Parse(args)
	if *dur > time.Minute {
		*dur = time.Minute
	}
	var sent atomic.Uint64
	end := time.Now().Add(*dur)
	var wg sync.WaitGroup
	for range runtime.NumCPU() {
		c, err := net.Dial("udp", *dst)
		if err != nil {
			log.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			buf := make([]byte, 18)
			var n uint64
			for i := 0; ; i++ {
				if i%1024 == 0 && time.Now().After(end) {
					break
				}
				if _, err := c.Write(buf); err == nil {
					n++
				}
			}
			sent.Add(n)
		}()
	}
	wg.Wait()
	fmt.Printf("sent %.0f pkt/s", float64(sent.Load())/dur.Seconds())
}
