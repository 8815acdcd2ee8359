package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
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

// simApplier records when each simulated gateway applied the nonce; a
// spec containing BROKEN fails to apply (as a rule that does not compile).
type simApplier struct {
	nonce   *atomic.Value // string
	applied func(time.Time)
	broken  *simBroken
	gw      int
	follow  *simFollow
}

// simBroken records which gateways were asked to apply a broken spec and
// when the first one failed.
type simBroken struct {
	mu        sync.Mutex
	gateways  map[int]bool
	firstFail time.Time
}

func (a simApplier) Apply(_ context.Context, d proto.Desired) error {
	if strings.Contains(string(d.Spec), "BROKEN") {
		a.broken.mu.Lock()
		defer a.broken.mu.Unlock()
		if len(a.broken.gateways) == 0 {
			a.broken.firstFail = time.Now()
		}
		a.broken.gateways[a.gw] = true
		return errors.New("fleet-sim.sql:1:1: syntax error at or near BROKEN")
	}
	if a.follow != nil {
		a.follow.record(a.gw, d)
	}
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
	servers := fs.String("servers", "", "comma-separated server URLs the gateways watch, first one first, the others on failure (replicas); default --server")
	followChanges := fs.Int("follow-changes", 0, "instead of making changes: follow the changes another process makes to rule set "+simFollowObject+" (spec '-- seq K ...', K = 1, 2, ...) until every gateway applied seq N; fails on a gateway applying seqs out of order or twice, or on the timeout")
	followTimeout := fs.Duration("follow-timeout", 2*time.Minute, "with --follow-changes: give up after this long")
	var sx simExtra
	sx.register(fs)
	rollout := fs.Bool("rollout", false, "instead of timing changes: time a 4-wave rollout (1, 10%, 50%, 100%; soak 0) to done, then the halt latency of a rollout whose first wave (10 gateways) fails")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), helpText("outpost-server sim --gateways N [--changes K] [--server-pid PID]",
			`Enroll N simulated gateways (label sim=1) with the server, connect them all
(List + Watch over mTLS HTTP/2, one connection each), then put a rule set
targeted at sim=1 K times and report, per change, how long until every
gateway applied it (p50, p99, max) and until the server saw every status.
Run it as a separate process from the server (file descriptor limits).`,
			"outpost-server sim --gateways 1000 --changes 5 --server-pid $(pgrep -n outpost-server)\n  outpost-server sim --gateways 1000 --rollout"))
		fs.PrintDefaults()
	}
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if err := sx.check(); err != nil {
		return fail("sim", err)
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
	before := sx.sample(*serverPID)
	run := fmt.Sprint(time.Now().Unix())
	t0 := time.Now()
	dirs := make([]string, *n)
	var wg sync.WaitGroup
	var firstErr simFirstErr
	work := make(chan int)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				var tok server.TokenResponse
				if err := a.call(ctx, "POST", "/api/v1/tokens", server.TokenRequest{Labels: map[string]string{"sim": "1"}, Expires: "1h"}, &tok); err != nil {
					firstErr.set(err)
					continue
				}
				dirs[i] = filepath.Join(*dir, fmt.Sprintf("sim-%s-%d", run, i))
				if err := client.Enroll(ctx, client.EnrollOptions{Server: a.server, Token: tok.Token, CAPEM: caPEM, ID: fmt.Sprintf("sim-%s-%d", run, i), Dir: dirs[i]}); err != nil {
					firstErr.set(err)
				}
			}
		}()
	}
	for i := range *n {
		work <- i
	}
	close(work)
	wg.Wait()
	if e := firstErr.get(); e != nil {
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
	broken := &simBroken{gateways: map[int]bool{}}
	var follow *simFollow
	if *followChanges > 0 {
		follow = newSimFollow(*n)
	}
	var srvs []string
	if *servers != "" {
		srvs = strings.Split(*servers, ",")
	}
	for i := range *n {
		app := simApplier{nonce: &nonce, broken: broken, gw: i, follow: follow, applied: func(t time.Time) {
			mu.Lock()
			lat = append(lat, t.Sub(changeAt))
			mu.Unlock()
		}}
		opt := client.Options{Dir: dirs[i], Applier: app, LocalAddr: sx.sourceAddr(i)}
		if len(srvs) > 0 {
			opt.Server, opt.Servers = srvs[0], srvs[1:]
		}
		s, err := client.New(runCtx, opt)
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
	if follow != nil {
		if err := follow.wait(ctx, &a, *followChanges, *followTimeout); err != nil {
			return fail("sim", err)
		}
		fmt.Printf("server RSS at the end: %s\n", rss())
		return exitOK
	}
	if sx.idle > 0 {
		code := sx.hold(ctx, *serverPID, *n, before, *dir, func() int64 {
			c := int64(0)
			for _, s := range syncers {
				if s.State().Connected {
					c++
				}
			}
			return c
		})
		if code != exitOK || *changes == 0 {
			return code
		}
	}
	if *rollout {
		if err := simRollouts(ctx, &a, *n, run, broken); err != nil {
			return fail("sim", err)
		}
		fmt.Printf("server RSS at the end: %s\n", rss())
		return exitOK
	}
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
				if sx.idle == 0 {
					return fail("sim", err)
				}
				// Large runs: the latency above is measured; say why
				// the server side is not.
				fmt.Printf("change %d: listing the gateways failed: %v\n", k+1, err)
				break
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

// simRollouts times a 4-wave rollout (soak 0) over every simulated gateway,
// then the halt latency of a rollout whose first wave fails.
func simRollouts(ctx context.Context, a *apiFlags, n int, run string, broken *simBroken) error {
	id := "sim-" + run
	spec := func(s string) json.RawMessage { b, _ := json.Marshal(map[string]string{"sql": s}); return b }
	var o proto.Object
	if err := a.call(ctx, "PUT", "/api/v1/objects/ruleset/"+id, server.ObjectPut{Target: proto.Target{Selector: "sim=1"},
		Spec: spec("-- v1\nCREATE RULE sim AS SELECT * FROM 'sim/#' DO REPUBLISH 'x';")}, &o); err != nil {
		return err
	}
	// Every gateway on v1 first.
	if err := simWaitReported(ctx, a, id, o.ResourceVersion, n, time.Minute); err != nil {
		return err
	}
	get := func(name string) (server.Rollout, error) {
		var r server.Rollout
		err := a.call(ctx, "GET", "/api/v1/rollouts/"+name, nil, &r)
		return r, err
	}
	pct := func(p float64) *float64 { return &p }
	one := 1
	waves := []server.WaveSpec{{Name: "one", Count: &one}, {Name: "ten", Percent: pct(10)}, {Name: "half", Percent: pct(50)}, {Name: "all", Percent: pct(100)}}
	req := server.RolloutRequest{Name: id + "-good", Object: server.ObjectRef{Kind: "ruleset", Name: id}, Selector: "sim=1", Waves: waves,
		Spec: spec("-- v2\nCREATE RULE sim AS SELECT * FROM 'sim/#' DO REPUBLISH 'y';"), Soak: "0s", Deadline: "2m"}
	t0 := time.Now()
	var r server.Rollout
	if err := a.call(ctx, "POST", "/api/v1/rollouts", req, &r); err != nil {
		return err
	}
	for r.State == server.RolloutRunning && time.Since(t0) < 3*time.Minute {
		time.Sleep(20 * time.Millisecond)
		var err error
		if r, err = get(req.Name); err != nil {
			return err
		}
	}
	total := time.Since(t0)
	fmt.Printf("rollout over %d gateways, 4 waves, soak 0: %s after %v (created %v)\n", n, r.State, total.Round(time.Millisecond), r.Created.Format(time.RFC3339Nano))
	for _, w := range r.Waves {
		st := "-"
		if w.Started != nil {
			st = w.Started.Sub(r.Created).Round(time.Millisecond).String()
		}
		fmt.Printf("  wave %-5s %-8s targets %4d applied %4d failed %d stuck %d, released at +%s\n", w.Name, w.State, w.Targets, w.Applied, w.Failed, w.Stuck, st)
	}
	fmt.Printf("  server side (created -> done): %v\n", r.Updated.Sub(r.Created).Round(time.Millisecond))
	if r.State != server.RolloutDone {
		return fmt.Errorf("rollout %s: %s: %s", r.Name, r.State, r.Reason)
	}

	// Halt latency: the first wave (10 gateways) gets a rule that does not
	// apply; the first failing report breaches maxFailed 0.
	ten := 10
	req = server.RolloutRequest{Name: id + "-bad", Object: server.ObjectRef{Kind: "ruleset", Name: id}, Selector: "sim=1",
		Waves: []server.WaveSpec{{Name: "first", Count: &ten}, {Name: "all", Percent: pct(100)}}, Spec: spec("CREATE RULE sim AS SELECT BROKEN"),
		Soak: "0s", Deadline: "2m", Gates: server.Gates{MaxFailed: new(int)}}
	t0 = time.Now()
	if err := a.call(ctx, "POST", "/api/v1/rollouts", req, &r); err != nil {
		return err
	}
	for r.State == server.RolloutRunning && time.Since(t0) < time.Minute {
		time.Sleep(20 * time.Millisecond)
		var err error
		if r, err = get(req.Name); err != nil {
			return err
		}
	}
	// Let the reports of the rest of the wave arrive, then count who got it.
	time.Sleep(2 * time.Second)
	broken.mu.Lock()
	first, got := broken.firstFail, len(broken.gateways)
	broken.mu.Unlock()
	fmt.Printf("failing first wave: %s (%s)\n", r.State, r.Reason)
	fmt.Printf("  halt latency (first failing apply on a gateway -> halt written on the server): %v\n", r.Updated.Sub(first).Round(time.Millisecond))
	fmt.Printf("  gateways that received the broken revision: %d (first wave: %d)\n", got, ten)
	if r.State != server.RolloutHalted || got > ten {
		return fmt.Errorf("rollout %s: %s, %d gateways got the broken revision", r.Name, r.State, got)
	}
	return nil
}

// simWaitReported waits until n gateways report slot name applied at rv.
func simWaitReported(ctx context.Context, a *apiFlags, name string, rv int64, n int, d time.Duration) error {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		var list []struct {
			Status proto.Status `json:"status"`
		}
		if err := a.call(ctx, "GET", "/api/v1/gateways?selector=sim%3D1", nil, &list); err != nil {
			return err
		}
		c := 0
		for _, g := range list {
			for _, cd := range g.Status.Conditions {
				if cd.Name == name && cd.ResourceVersion >= rv && cd.Applied {
					c++
				}
			}
		}
		if c >= n {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s at %d not reported by %d gateways within %v", name, rv, n, d)
}

// simFollowObject is the rule set --follow-changes follows.
const simFollowObject = "sim-follow"

var seqRE = regexp.MustCompile(`-- seq (\d+)\b`)

// simFollow records, per simulated gateway, the seq of every revision of
// simFollowObject it applied, in order.
type simFollow struct {
	mu      sync.Mutex
	applied [][]int
	bad     []string
}

func newSimFollow(n int) *simFollow { return &simFollow{applied: make([][]int, n)} }

func (f *simFollow) record(gw int, d proto.Desired) {
	if d.Kind != proto.KindRuleSet || d.Name != simFollowObject {
		return
	}
	var spec struct {
		SQL string `json:"sql"`
	}
	json.Unmarshal(d.Spec, &spec)
	m := seqRE.FindStringSubmatch(spec.SQL)
	if m == nil {
		return
	}
	k, _ := strconv.Atoi(m[1])
	f.mu.Lock()
	defer f.mu.Unlock()
	if l := f.applied[gw]; len(l) > 0 && l[len(l)-1] >= k {
		f.bad = append(f.bad, fmt.Sprintf("gateway %d applied seq %d after seq %d (rv %d)", gw, k, l[len(l)-1], d.ResourceVersion))
	}
	f.applied[gw] = append(f.applied[gw], k)
}

// wait returns once every gateway applied seq last, or fails on a
// violation or the timeout; it prints what each gateway went through.
func (f *simFollow) wait(ctx context.Context, a *apiFlags, last int, timeout time.Duration) error {
	t0 := time.Now()
	fmt.Printf("following %s until seq %d\n", simFollowObject, last)
	for {
		f.mu.Lock()
		done, bad := 0, append([]string(nil), f.bad...)
		for _, l := range f.applied {
			if len(l) > 0 && l[len(l)-1] == last {
				done++
			}
		}
		f.mu.Unlock()
		if len(bad) > 0 {
			return fmt.Errorf("follow: %d violations, first: %s", len(bad), bad[0])
		}
		if done == len(f.applied) {
			break
		}
		if time.Since(t0) > timeout || ctx.Err() != nil {
			return fmt.Errorf("follow: after %v only %d/%d gateways applied seq %d", timeout, done, len(f.applied), last)
		}
		time.Sleep(100 * time.Millisecond)
	}
	f.mu.Lock()
	lo, hi, sum := last+1, 0, 0
	for _, l := range f.applied {
		lo, hi, sum = min(lo, len(l)), max(hi, len(l)), sum+len(l)
	}
	n := len(f.applied)
	f.mu.Unlock()
	// And the server has every gateway's report of it.
	var o proto.Object
	if err := a.call(ctx, "GET", "/api/v1/objects/ruleset/"+simFollowObject, nil, &o); err != nil {
		return err
	}
	if err := simWaitReported(ctx, a, simFollowObject, o.ResourceVersion, n, timeout); err != nil {
		return err
	}
	fmt.Printf("follow: converged: %d/%d gateways applied seq %d (rv %d) and reported it, after %v; revisions applied per gateway min %d avg %.1f max %d; out of order or twice: 0\n",
		n, n, last, o.ResourceVersion, time.Since(t0).Round(time.Millisecond), lo, float64(sum)/float64(n), hi)
	return nil
}
