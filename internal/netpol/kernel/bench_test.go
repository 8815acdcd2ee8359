package kernel

import (
	"fmt"
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
		// every-v6: every rule changes, the rules are IPv6 (/64s).
		for _, change := range []string{"every", "one", "every-v6"} {
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
