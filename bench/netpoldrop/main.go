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
	"encoding/binary"
	"flag"
	"fmt"
	"log"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

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
	src := flag.String("src", "", "source address of the flood")
	cdev := flag.String("client-iface", "", "client-side veth (the generator writes frames to it)")
	dmac := flag.String("dst-mac", "", "MAC address of -iface")
	backends := flag.String("backends", "ebpf,nftables,iptables", "backends, in order")
	list := flag.Int("list", 0, "put a block list of this many source networks (none matching the flood) before the flood's rule (at most 10000)")
	flag.Parse()
	*list = min(max(*list, 0), 10000)
	// The block list: 100.64.X.Y/32, never the flood's source.
	var listRules []netpol.Rule
	for i := 0; i < *list; i++ {
		listRules = append(listRules, netpol.Rule{Name: fmt.Sprintf("block%d", i), Action: "deny", Src: fmt.Sprintf("100.64.%d.%d/32", i/256, i%256)})
	}
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
			rules := append(append([]netpol.Rule(nil), listRules...), netpol.Rule{Name: "flood", Action: "deny", Proto: "udp", DPort: port})
			cfg := netpol.Config{Backend: be, Interfaces: []netpol.Interface{{Name: *iface, Default: "allow", OnAgentStop: "open", Rules: rules}}}
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
			if len(listRules) > 0 {
				var b strings.Builder
				b.WriteString("*filter\n")
				for _, r := range listRules {
					fmt.Fprintf(&b, "-A INPUT -s %s -j DROP\n", r.Src)
				}
				b.WriteString("COMMIT\n")
				cmd := exec.Command("ip", "netns", "exec", *gwNS, "iptables-restore", "--noflush")
				cmd.Stdin = strings.NewReader(b.String())
				if out, err := cmd.CombinedOutput(); err != nil {
					log.Fatalf("iptables-restore: %v\n%s", err, out)
				}
			}
			ipt("-A", "INPUT", "-p", "udp", "--dport", port, "-j", "DROP")
			read = func() uint64 {
				for _, l := range strings.Split(ipt("-nvxL", "INPUT"), "\n") {
					f := strings.Fields(l)
					if len(f) > 2 && f[2] == "DROP" && strings.Contains(l, "dpt:"+port) {
						n, _ := strconv.ParseUint(f[0], 10, 64)
						return n
					}
				}
				return 0
			}
			stop = func() { ipt("-F", "INPUT") }
		default:
			log.Fatalf("unknown backend %q", be)
		}
		before := read()
		busy0, total0 := cpuStat()
		out, err := exec.Command("ip", "netns", "exec", *clientNS, self, "send", "-dst", *dst, "-src", *src, "-dev", *cdev, "-dst-mac", *dmac, "-duration", dur.String()).CombinedOutput()
		if err != nil {
			log.Fatalf("generator: %v\n%s", err, out)
		}
		busy1, total1 := cpuStat()
		dropped := read() - before
		stop()
		secs := dur.Seconds()
		// The veth hands each frame to the gateway side in the sender's
		// context: the generator's CPU time includes the filter's work.
		var rate, cpuS float64
		fmt.Sscanf(strings.TrimSpace(string(out)), "sent %f pkt/s, %f CPU-s", &rate, &cpuS)
		fmt.Printf("%-9s dropped %9.0f pkt/s  (generator: %s; %.2f µs CPU per packet sent)  machine CPU busy %.0f%% of %d CPUs\n",
			be, float64(dropped)/secs, strings.TrimSpace(string(out)), 1e6*cpuS/(rate*secs), 100*(busy1-busy0)/(total1-total0), runtime.NumCPU())
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

// send floods dst with minimal UDP frames written straight to the client
// veth through AF_PACKET (qdisc bypassed), one socket per CPU, so the
// generator costs less per packet than the filter it measures; it prints
// what it sent and its own CPU time.
func send(args []string) {
	fs := flag.NewFlagSet("send", flag.ExitOnError)
	dst := fs.String("dst", "", "address:port")
	src := fs.String("src", "", "source address")
	dev := fs.String("dev", "", "client-side veth")
	dmac := fs.String("dst-mac", "", "gateway veth MAC")
	dur := fs.Duration("duration", 5*time.Second, "how long (at most 60s)")
	fs.Parse(args)
	if *dur > time.Minute {
		*dur = time.Minute
	}
	itf, err := net.InterfaceByName(*dev)
	if err != nil {
		log.Fatal(err)
	}
	hw, err := net.ParseMAC(*dmac)
	if err != nil {
		log.Fatal(err)
	}
	ap, err := netip.ParseAddrPort(*dst)
	if err != nil {
		log.Fatal(err)
	}
	sa, err := netip.ParseAddr(*src)
	if err != nil {
		log.Fatal(err)
	}
	frame := udpFrame(hw, itf.HardwareAddr, sa, ap)
	var sent atomic.Uint64
	end := time.Now().Add(*dur)
	var wg sync.WaitGroup
	for range runtime.NumCPU() {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		if err != nil {
			log.Fatal(err)
		}
		unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1)
		ll := &unix.SockaddrLinklayer{Ifindex: itf.Index, Halen: 6}
		copy(ll.Addr[:], hw)
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: itf.Index}); err != nil {
			log.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer unix.Close(fd)
			var n uint64
			for i := 0; ; i++ {
				if i%1024 == 0 && time.Now().After(end) {
					break
				}
				if _, err := unix.Write(fd, frame); err == nil {
					n++
				}
			}
			sent.Add(n)
		}()
	}
	wg.Wait()
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	fmt.Printf("sent %.0f pkt/s, %.2f CPU-s", float64(sent.Load())/dur.Seconds(), cpu.Seconds())
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// udpFrame is an Ethernet + IPv4 + UDP frame with an 18-byte payload.
func udpFrame(dmac, smac net.HardwareAddr, src netip.Addr, dst netip.AddrPort) []byte {
	b := make([]byte, 14+20+8+18)
	copy(b[0:6], dmac)
	copy(b[6:12], smac)
	binary.BigEndian.PutUint16(b[12:], unix.ETH_P_IP)
	ip := b[14:34]
	ip[0], ip[8], ip[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(ip[2:], uint16(len(b)-14))
	s4, d4 := src.As4(), dst.Addr().As4()
	copy(ip[12:16], s4[:])
	copy(ip[16:20], d4[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	udp := b[34:42]
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], dst.Port())
	binary.BigEndian.PutUint16(udp[4:], 8+18) // checksum 0: none
	return b
}
