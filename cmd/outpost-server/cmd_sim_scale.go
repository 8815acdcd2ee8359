package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// simExtra are the sim's flags for large runs (issue 12): hold the
// gateways connected and measure the server, spread the connections over
// several source addresses, fetch the server's heap profile.
type simExtra struct {
	idle        time.Duration
	sourceAddrs string
	serverPprof string
	addrs       []string
}

func (x *simExtra) register(fs *flag.FlagSet) {
	fs.DurationVar(&x.idle, "idle", 0, "instead of timing changes: hold every gateway connected this long, then report the server's RSS, CPU and memory per connected gateway; the --changes follow (--changes 0: stop there)")
	fs.StringVar(&x.sourceAddrs, "source-addrs", "", "comma-separated loopback IPs (127.0.0.2,127.0.0.3,...) the gateways connect from, in turn: about 28k connections per source and destination address")
	fs.StringVar(&x.serverPprof, "server-pprof", "", "the server's --pprof address: with --idle, save its heap profile to DIR/server-heap.pprof and print its Go memory statistics")
}

func (x *simExtra) check() error {
	if x.sourceAddrs != "" {
		for i, a := range strings.Split(x.sourceAddrs, ",") {
			a = strings.TrimSpace(a)
			if net.ParseIP(a) == nil {
				return fmt.Errorf("%w: --source-addrs: item %d %q: want an IP address", errUsage, i+1, a)
			}
			x.addrs = append(x.addrs, a)
		}
	}
	if x.serverPprof != "" {
		if err := loopbackAddr(x.serverPprof); err != nil {
			return fmt.Errorf("%w: --server-pprof: %v", errUsage, err)
		}
	}
	if x.idle < 0 {
		return fmt.Errorf("%w: --idle: must not be negative", errUsage)
	}
	return nil
}

// sourceAddr is the source IP of gateway i ("" = the system's choice).
func (x *simExtra) sourceAddr(i int) string {
	if len(x.addrs) == 0 {
		return ""
	}
	return x.addrs[i%len(x.addrs)]
}

// procSample is a process's RSS and CPU time at one moment.
type procSample struct {
	at    time.Time
	rssKB int64
	cpu   time.Duration // user + system
}

// sample reads /proc/PID (zero sample for pid 0 or on error).
func (x *simExtra) sample(pid int) procSample {
	p := procSample{at: time.Now()}
	if pid == 0 {
		return p
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
				p.rssKB, _ = strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			}
		}
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		// Fields after the command (which may hold spaces) in parentheses.
		if i := strings.LastIndexByte(string(b), ')'); i > 0 {
			f := strings.Fields(string(b)[i+1:])
			if len(f) > 12 {
				u, _ := strconv.ParseInt(f[11], 10, 64)
				s, _ := strconv.ParseInt(f[12], 10, 64)
				p.cpu = time.Duration(u+s) * time.Second / 100 // USER_HZ
			}
		}
	}
	return p
}

// cpuPct is the CPU use between two samples, in % of one core.
func cpuPct(a, b procSample) float64 {
	wall := b.at.Sub(a.at)
	if wall <= 0 {
		return 0
	}
	return 100 * float64(b.cpu-a.cpu) / float64(wall)
}

// hold keeps the gateways connected for x.idle and reports the server.
func (x *simExtra) hold(ctx context.Context, pid, n int, before procSample, dir string, connected func() int64) int {
	conn := x.sample(pid)
	fmt.Printf("server while %d gateways connected: RSS %.1f MB (before: %.1f MB), CPU %.0f%% of a core\n",
		n, float64(conn.rssKB)/1024, float64(before.rssKB)/1024, cpuPct(before, conn))
	select {
	case <-ctx.Done():
		return exitFailure
	case <-time.After(x.idle):
	}
	end := x.sample(pid)
	c := connected()
	fmt.Printf("held %d/%d gateways connected for %v: server RSS %.1f MB, CPU %.1f%% of a core while idle\n",
		c, n, x.idle, float64(end.rssKB)/1024, cpuPct(conn, end))
	if pid != 0 && c > 0 {
		fmt.Printf("server memory per connected gateway: %.1f KB (RSS growth over %d gateways)\n",
			float64(end.rssKB-before.rssKB)*1024/1000/float64(c), c)
	}
	if x.serverPprof != "" {
		if err := x.heap(ctx, dir, c); err != nil {
			return fail("sim", err)
		}
	}
	if c < int64(n) {
		return fail("sim", fmt.Errorf("only %d of %d gateways connected at the end", c, n))
	}
	return exitOK
}

// heap saves the server's heap profile and prints its memory statistics
// (runtime.MemStats as the debug=1 heap profile ends with them).
func (x *simExtra) heap(ctx context.Context, dir string, c int64) error {
	get := func(q string) ([]byte, error) {
		req, err := http.NewRequestWithContext(ctx, "GET", "http://"+x.serverPprof+"/debug/pprof/heap"+q, nil)
		if err != nil {
			return nil, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, fmt.Errorf("--server-pprof: %w", err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			return nil, fmt.Errorf("--server-pprof: %s: %s", req.URL, resp.Status)
		}
		return io.ReadAll(resp.Body)
	}
	prof, err := get("?gc=1")
	if err != nil {
		return err
	}
	path := filepath.Join(dir, "server-heap.pprof")
	if err := os.WriteFile(path, prof, 0o644); err != nil {
		return err
	}
	txt, err := get("?debug=1")
	if err != nil {
		return err
	}
	stats := map[string]int64{}
	for _, l := range strings.Split(string(txt), "\n") {
		k, v, ok := strings.Cut(strings.TrimPrefix(l, "# "), " = ")
		if !ok || !strings.HasPrefix(l, "# ") {
			continue
		}
		v, _, _ = strings.Cut(v, " ")
		if i, err := strconv.ParseInt(v, 10, 64); err == nil {
			stats[k] = i
		}
	}
	if len(stats) == 0 {
		return errors.New("--server-pprof: no memory statistics in the heap profile")
	}
	per := func(k string) string {
		if c == 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f KB/gateway", float64(stats[k])/1000/float64(c))
	}
	fmt.Printf("server heap profile: %s (go tool pprof -sample_index=inuse_space %s)\n", path, path)
	for _, k := range []string{"HeapInuse", "Stack", "Sys"} {
		fmt.Printf("  %-9s %7.1f MB  %s\n", k, float64(stats[k])/(1<<20), per(k))
	}
	return nil
}

// simFirstErr keeps the first error of concurrent workers.
type simFirstErr struct {
	mu  sync.Mutex
	err error
}

func (f *simFirstErr) set(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		f.err = err
	}
}

func (f *simFirstErr) get() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}
