package kernel

import (
	"fmt"
	"net/netip"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/outpost-edge/outpost/internal/netpol"
)

// TestUpdateLatency measures policy update → enforced (Apply returns after
// the generation switch or the committed transaction) for 10,000 rules on
// each backend. A measurement, not a timed assertion: run it with
//
//	OUTPOST_NETPOL_BENCH=1 go test -run TestUpdateLatency -v ./internal/netpol/kernel/
func TestUpdateLatency(t *testing.T) {
	if os.Getenv("OUTPOST_NETPOL_BENCH") == "" {
		t.Skip("a benchmark: set OUTPOST_NETPOL_BENCH=1 (docs/bench/netpol.md)")
	}
	const nRules, updates = 10000, 40
	for _, be := range backends {
		// every: each update changes all 10,000 rules (a new port);
		// one: each update changes one rule (the usual edit);
		// every-v6: every rule changes, the rules are IPv6 (/64s);
		// list-every, list-one: a block list (source-only rules, one
		// longest-prefix trie in the XDP program), every network or one
		// network changed.
		for _, change := range []string{"every", "one", "every-v6", "list-every", "list-one"} {
			t.Run(be+"/"+change, func(t *testing.T) {
				l := newLab(t)
				m := l.manager(t)
				defer m.Close()
				policy := func(gen int) netpol.Config {
					rules := make([]netpol.Rule, nRules)
					for i := range rules {
						port := 1000 + gen%100
						if change == "one" && i != gen%nRules {
							port = 1000
						}
						src := fmt.Sprintf("10.%d.%d.0/24", (i/256)%256, i%256)
						if change == "every-v6" {
							src = fmt.Sprintf("fd00:%x:%x::/64", (i/256)%256, i%256)
						}
						rules[i] = netpol.Rule{Name: fmt.Sprintf("r%d", i), Action: "deny",
							Src: src, Proto: "tcp", DPort: fmt.Sprint(port)}
						if strings.HasPrefix(change, "list") {
							host := 1 + gen%200
							if change == "list-one" && i != gen%nRules {
								host = 0
							}
							rules[i] = netpol.Rule{Name: fmt.Sprintf("r%d", i), Action: "deny",
								Src: fmt.Sprintf("10.%d.%d.%d/32", (i/256)%256, i%256, host)}
						}
					}
					return netpol.Config{Backend: be, Interfaces: []netpol.Interface{{Name: l.gwIf, Default: "allow", OnAgentStop: "open", Rules: rules}}}
				}
				if err := m.Apply(policy(0)); err != nil {
					t.Fatal(err)
				}
				var lat []time.Duration
				var cpu time.Duration // the process's CPU time in Apply
				for g := 1; g <= updates; g++ {
					cfg := policy(g)
					c0 := cpuTime()
					t0 := time.Now()
					if err := m.Apply(cfg); err != nil {
						t.Fatal(err)
					}
					lat = append(lat, time.Since(t0))
					cpu += cpuTime() - c0
				}
				sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
				load, _ := os.ReadFile("/proc/loadavg")
				t.Logf("%s, %s rule(s) changed: %d rules, %d updates: CPU %s per update, p50 %s, p99 %s, max %s (loadavg %s)", be, change, nRules, updates,
					(cpu / updates).Round(time.Microsecond),
					lat[len(lat)/2].Round(time.Microsecond), lat[len(lat)*99/100].Round(time.Microsecond), lat[len(lat)-1].Round(time.Microsecond),
					strings.Join(strings.Fields(string(load))[:3], " "))
			})
		}
	}
}

// cpuTime is the process's user+system CPU time.
func cpuTime() time.Duration {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestXDPPacketCost measures what the XDP program costs per packet
// (BPF_PROG_TEST_RUN, the kernel's own loop) for a packet that no rule
// matches, the worst case: a policy of 1 rule, 10,000 rules the program
// compares one by one, and a block list of 10,000 networks (source-only
// rules: one longest-prefix lookup). Run with
//
//	OUTPOST_NETPOL_BENCH=1 go test -run TestXDPPacketCost -v ./internal/netpol/kernel/
func TestXDPPacketCost(t *testing.T) {
	if os.Getenv("OUTPOST_NETPOL_BENCH") == "" {
		t.Skip("a benchmark: set OUTPOST_NETPOL_BENCH=1 (docs/bench/netpol.md)")
	}
	needRoot(t)
	frame := func(v6 bool) []byte {
		var b []byte
		b = append(b, make([]byte, 12)...) // MACs
		if !v6 {
			b = append(b, 0x08, 0x00)
			ip := []byte{0x45, 0, 0, 46, 0, 0, 0, 0, 64, 17, 0, 0, 172, 16, 0, 1, 172, 16, 0, 2}
			b = append(b, ip...)
		} else {
			b = append(b, 0x86, 0xdd)
			ip := []byte{0x60, 0, 0, 0, 0, 26, 17, 64}
			ip = append(ip, netip.MustParseAddr("fd99::1").AsSlice()...)
			ip = append(ip, netip.MustParseAddr("fd99::2").AsSlice()...)
			b = append(b, ip...)
		}
		b = append(b, 0x9c, 0x40, 0x13, 0x88, 0, 26, 0, 0) // UDP 40000 -> 5000
		return append(b, make([]byte, 18)...)
	}
	shapes := []struct {
		name  string
		rules func(i int) netpol.Rule
		n     int
	}{
		{"1 rule", func(i int) netpol.Rule {
			return netpol.Rule{Name: "r", Action: "deny", Src: "10.0.0.0/8", Proto: "tcp", DPort: "22"}
		}, 1},
		{"10,000 rules (compared one by one)", func(i int) netpol.Rule {
			return netpol.Rule{Name: fmt.Sprintf("r%d", i), Action: "deny", Src: fmt.Sprintf("10.%d.%d.0/24", i/256, i%256), Proto: "tcp", DPort: "22"}
		}, 10000},
		{"10,000 networks (block list: one trie)", func(i int) netpol.Rule {
			return netpol.Rule{Name: fmt.Sprintf("r%d", i), Action: "deny", Src: fmt.Sprintf("10.%d.%d.0/24", i/256, i%256)}
		}, 10000},
		{"10,000 IPv6 rules (compared one by one)", func(i int) netpol.Rule {
			return netpol.Rule{Name: fmt.Sprintf("r%d", i), Action: "deny", Src: fmt.Sprintf("fd00:%x:%x::/64", i/256, i%256), Proto: "tcp", DPort: "22"}
		}, 10000},
		{"10,000 IPv6 networks (block list: one trie)", func(i int) netpol.Rule {
			return netpol.Rule{Name: fmt.Sprintf("r%d", i), Action: "deny", Src: fmt.Sprintf("fd00:%x:%x::/64", i/256, i%256)}
		}, 10000},
	}
	for _, sh := range shapes {
		x := &xdpIface{name: "bench", gen: 1}
		x.slots, x.free = newSlots()
		if err := loadPolicyObjects(&x.objs, nil); err != nil {
			t.Fatal(err)
		}
		rules := make([]netpol.Rule, sh.n)
		for i := range rules {
			rules[i] = sh.rules(i)
		}
		if err := x.apply(netpol.Interface{Name: "bench", Default: "allow", Rules: rules}); err != nil {
			t.Fatal(err)
		}
		for _, v6 := range []bool{false, true} {
			if strings.Contains(sh.name, "IPv6") != v6 && sh.n > 1 {
				continue
			}
			ret, per, err := x.objs.OutpostPolicy.Benchmark(frame(v6), 20000, nil)
			if err != nil {
				t.Fatal(err)
			}
			if ret != 2 { // XDP_PASS: the default, no rule matched
				t.Fatalf("%s: verdict %d, want XDP_PASS", sh.name, ret)
			}
			fam := "IPv4"
			if v6 {
				fam = "IPv6"
			}
			t.Logf("%s, %s packet matching none: %s per packet", sh.name, fam, per)
		}
		x.objs.Close()
	}
}
