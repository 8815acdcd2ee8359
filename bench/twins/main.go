// Command twins measures device twin updates per second on the fleet
// store (issue 12 item 6): W concurrent writers (gateways posting the
// reported updates their devices sent) against SQLite or PostgreSQL,
// through the server's group commit (many callers, one transaction) and,
// as the same-run peer, one transaction per call.
//
// Usage:
//
//	go run ./bench/twins [-db sqlite|postgres://...] [-writers 64] [-batch 1] [-devices 10000] [-duration 10s] [-modes group,single,desired]
//
// Every run is bounded by -duration and -max-ops. Heavy runs take
// flock /tmp/outpost-bench.lock (bench/twins.sh does).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/store"
	"github.com/outpost-edge/outpost/internal/fleet/store/postgres"
	"github.com/outpost-edge/outpost/internal/fleet/store/sqlite"
	"github.com/outpost-edge/outpost/internal/fleet/twin"
)

func main() {
	db := flag.String("db", "sqlite", `"sqlite" (a fresh database in a temporary directory) or a postgres:// URL (an empty database)`)
	writers := flag.Int("writers", 64, "concurrent writers (gateways posting reported updates)")
	batch := flag.Int("batch", 1, "updates per call (a gateway's POST carries this many)")
	devices := flag.Int("devices", 10000, "distinct devices (spread over 100 gateways)")
	duration := flag.Duration("duration", 10*time.Second, "length of each mode's run")
	maxOps := flag.Int64("max-ops", 5_000_000, "stop a mode after this many updates")
	modes := flag.String("modes", "group,single,desired", "group: reported updates through the group commit; single: one transaction per call; desired: operator PATCHes of the desired state (one transaction each, logged as events)")
	cpuprof := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.Parse()
	if *cpuprof != "" {
		f, err := os.Create(*cpuprof)
		if err != nil {
			fail(err)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}

	ctx := context.Background()
	var st store.Store
	var err error
	if *db == "sqlite" {
		dir, derr := os.MkdirTemp("", "twinbench")
		if derr != nil {
			fail(derr)
		}
		defer os.RemoveAll(dir)
		st, err = sqlite.Open(ctx, dir)
	} else {
		st, err = postgres.Open(ctx, *db, nil)
	}
	if err != nil {
		fail(err)
	}
	defer st.Close()
	const gateways = 100
	for g := range gateways {
		if err := st.CreateGateway(ctx, store.Gateway{ID: fmt.Sprintf("gw-%d", g), Labels: map[string]string{}, CertSerial: "1", Enrolled: time.Now()}); err != nil {
			fail(err)
		}
	}
	fmt.Printf("store %s, %d writers, %d updates per call, %d devices on %d gateways, %s per mode, GOMAXPROCS %d\n",
		strings.SplitN(*db, "@", 2)[len(strings.SplitN(*db, "@", 2))-1], *writers, *batch, *devices, gateways, *duration, runtime.GOMAXPROCS(0))
	version := make([]int64, *devices) // per device; device i is written by writer i % writers only
	gc := &store.GroupCommit{Store: st}
	for _, mode := range strings.Split(*modes, ",") {
		var ops atomic.Int64
		lat := make([][]time.Duration, *writers)
		deadline := time.Now().Add(*duration)
		cpu0 := cpuTime()
		start := time.Now()
		var wg sync.WaitGroup
		var firstErr atomic.Value
		for w := range *writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				next := w
				for time.Now().Before(deadline) && ops.Load() < *maxOps {
					ups := make([]twin.Reported, 0, *batch)
					for range *batch {
						d := next
						next += *writers
						if next >= *devices {
							next = w
						}
						version[d]++
						ups = append(ups, twin.Reported{Gateway: fmt.Sprintf("gw-%d", d%gateways), Device: fmt.Sprintf("dev-%d", d),
							Patch: json.RawMessage(fmt.Sprintf(`{"temp":%d,"status":"ok"}`, version[d]%100)), Version: version[d], Time: time.Now()})
					}
					t0 := time.Now()
					var err error
					switch mode {
					case "group":
						err = gc.Apply(ctx, ups)
					case "single":
						_, err = st.ApplyTwinReported(ctx, ups)
					case "desired":
						for _, u := range ups {
							if _, err = st.PatchTwinDesired(ctx, u.Gateway, u.Device, u.Patch, -1, time.Now()); err != nil {
								break
							}
						}
					default:
						err = fmt.Errorf("unknown mode %q", mode)
					}
					if err != nil {
						firstErr.CompareAndSwap(nil, err)
						return
					}
					lat[w] = append(lat[w], time.Since(t0))
					ops.Add(int64(len(ups)))
				}
			}()
		}
		wg.Wait()
		el := time.Since(start)
		cpu := cpuTime() - cpu0
		if e := firstErr.Load(); e != nil {
			fail(fmt.Errorf("mode %s: %v", mode, e))
		}
		var all []time.Duration
		for _, l := range lat {
			all = append(all, l...)
		}
		sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
		q := func(p float64) time.Duration {
			if len(all) == 0 {
				return 0
			}
			return all[int(p*float64(len(all)-1))]
		}
		fmt.Printf("%-8s %10.0f updates/s  (%d in %.1fs; per call p50 %v p99 %v; process CPU %.2fs = %.1f µs/update, %.0f updates per CPU-second)\n",
			mode, float64(ops.Load())/el.Seconds(), ops.Load(), el.Seconds(), q(0.5).Round(time.Microsecond), q(0.99).Round(time.Microsecond),
			cpu.Seconds(), float64(cpu.Microseconds())/float64(max(ops.Load(), 1)), float64(ops.Load())/cpu.Seconds())
	}
}

// cpuTime is the process's user + system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "twins:", err)
	os.Exit(1)
}
