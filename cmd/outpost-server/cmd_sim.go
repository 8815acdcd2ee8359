package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/client"
	"github.com/outpost-edge/outpost/internal/fleet/proto"
	"github.com/outpost-edge/outpost/internal/fleet/server"
)

func init() {
	register(&command{name: "sim", summary: "simulate N gateways speaking the real protocol (TLS, HTTP/2) against a server and time a change", run: runSim})
}

// simApplier records when each simulated gateway applied the nonce.
type simApplier struct {
	nonce   *atomic.Value // string
	applied func(time.Time)
}

func (a simApplier) Apply(_ context.Context, d proto.Desired) error {
	if n, _ := a.nonce.Load().(string); n != "" && strings.Contains(string(d.Spec), n) {
		a.applied(time.Now())
	}
	return nil
}

func (simApplier) Remove(context.Context, string, string) error { return nil }

func runSim(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("sim", flag.ContinueOnError)
	var a apiFlags
	a.register(fs)
	n := fs.Int("gateways", 100, "simulated gateways (each its own key, certificate and HTTP/2 connection)")
	dir := fs.String("dir", "sim-data", "where the simulated gateways keep identities and caches")
	changes := fs.Int("changes", 3, "desired-state changes to time")
	serverPID := fs.Int("server-pid", 0, "report this process's RSS (the server) before and after the gateways connect")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), helpText("outpost-server sim --gateways N [--changes K] [--server-pid PID]",
			`Enroll N simulated gateways (label sim=1) with the server, connect them all
(List + Watch over mTLS HTTP/2, one connection each), then put a rule set
targeted at sim=1 K times and report, per change, how long until every
gateway applied it (p50, p99, max) and until the server saw every status.
Run it as a separate process from the server (file descriptor limits).`,
			"outpost-server sim --gateways 1000 --changes 5 --server-pid $(pgrep -n outpost-server)"))
		fs.PrintDefaults()
	}
	if code, ok := parse(fs, args); !ok {
		return code
	}
	caPEM, err := os.ReadFile(a.ca)
	if err != nil {
		return fail("sim", fmt.Errorf("%w: --ca: %v", errUsage, err))
	}
	rss := func() string {
		if *serverPID == 0 {
			return "-"
		}
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", *serverPID))
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "VmRSS:") {
				return strings.TrimSpace(strings.TrimPrefix(l, "VmRSS:"))
			}
		}
		return "?"
	}
	fmt.Printf("server RSS before: %s\n", rss())
	run := fmt.Sprint(time.Now().Unix())
	t0 := time.Now()
	dirs := make([]string, *n)
	var wg sync.WaitGroup
	var firstErr atomic.Value
	work := make(chan int)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				var tok server.TokenResponse
				if err := a.call(ctx, "POST", "/api/v1/tokens", server.TokenRequest{Labels: map[string]string{"sim": "1"}, Expires: "1h"}, &tok); err != nil {
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				dirs[i] = filepath.Join(*dir, fmt.Sprintf("sim-%s-%d", run, i))
				if err := client.Enroll(ctx, client.EnrollOptions{Server: a.server, Token: tok.Token, CAPEM: caPEM, ID: fmt.Sprintf("sim-%s-%d", run, i), Dir: dirs[i]}); err != nil {
					firstErr.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	for i := range *n {
		work <- i
	}
	close(work)
	wg.Wait()
	if e, _ := firstErr.Load().(error); e != nil {
		return fail("sim", e)
	}
	fmt.Printf("enrolled %d gateways in %v\n", *n, time.Since(t0).Round(time.Millisecond))

	var nonce atomic.Value
	nonce.Store("")
	var mu sync.Mutex
	var lat []time.Duration
	var changeAt time.Time
	var connected atomic.Int64
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	syncers := make([]*client.Syncer, *n)
	for i := range *n {
		app := simApplier{nonce: &nonce, applied: func(t time.Time) {
			mu.Lock()
			lat = append(lat, t.Sub(changeAt))
			mu.Unlock()
		}}
		s, err := client.New(runCtx, client.Options{Dir: dirs[i], Applier: app})
		if err != nil {
			return fail("sim", err)
		}
		syncers[i] = s
		go s.Run(runCtx)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		c := int64(0)
		for _, s := range syncers {
			if s.State().Connected {
				c++
			}
		}
		connected.Store(c)
		if c == int64(*n) || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Printf("connected %d/%d in %v; server RSS: %s\n", connected.Load(), *n, time.Since(t0).Round(time.Millisecond), rss())
	for k := range *changes {
		mu.Lock()
		lat = lat[:0]
		nn := fmt.Sprintf("nonce-%s-%d", run, k)
		nonce.Store(nn)
		changeAt = time.Now()
		mu.Unlock()
		spec, _ := json.Marshal(map[string]string{"sql": "-- " + nn + "\nCREATE RULE sim AS SELECT * FROM 'sim/#' DO REPUBLISH 'x';"})
		var o proto.Object
		if err := a.call(ctx, "PUT", "/api/v1/objects/ruleset/sim-"+run, server.ObjectPut{Target: proto.Target{Selector: "sim=1"}, Spec: spec}, &o); err != nil {
			return fail("sim", err)
		}
		end := time.Now().Add(60 * time.Second)
		for {
			mu.Lock()
			got := len(lat)
			mu.Unlock()
			if got >= *n || time.Now().After(end) {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		mu.Lock()
		l := append([]time.Duration(nil), lat...)
		mu.Unlock()
		sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
		// Until the server has every status at this resourceVersion.
		reported := time.Duration(0)
		for time.Now().Before(end) {
			var gws []json.RawMessage
			_ = gws
			var list []struct {
				Status proto.Status `json:"status"`
			}
			if err := a.call(ctx, "GET", "/api/v1/gateways?selector=sim%3D1", nil, &list); err != nil {
				return fail("sim", err)
			}
			c := 0
			for _, g := range list {
				for _, cd := range g.Status.Conditions {
					if cd.Name == "sim-"+run && cd.ResourceVersion == o.ResourceVersion && cd.Applied {
						c++
					}
				}
			}
			if c >= *n {
				reported = time.Since(changeAt)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if len(l) == 0 {
			fmt.Printf("change %d (rv %d): applied by 0/%d gateways\n", k+1, o.ResourceVersion, *n)
			continue
		}
		q := func(p float64) time.Duration { return l[min(len(l)-1, int(p*float64(len(l))))].Round(time.Millisecond) }
		fmt.Printf("change %d (rv %d): applied by %d/%d gateways: p50 %v p99 %v max %v; all statuses on the server after %v\n",
			k+1, o.ResourceVersion, len(l), *n, q(0.50), q(0.99), l[len(l)-1].Round(time.Millisecond), reported.Round(time.Millisecond))
	}
	fmt.Printf("server RSS at the end: %s\n", rss())
	cancel()
	if errors.Is(ctx.Err(), context.Canceled) {
		return exitFailure
	}
	return exitOK
}
