// Command dashboardload measures the web dashboard in a real browser
// (headless Chromium driven by chromedp) with N gateways registered: the
// page load of each page (Navigation Timing: server answer, DOM ready,
// load event), and, with live updates streaming (label changes at a fixed
// rate), how often the page refreshes, how long a refresh takes and the
// main thread's longest stall. Everything runs on loopback; the server is
// in this process (SQLite in a temporary directory).
//
//	go run ./bench/dashboardload -gateways 100,10000 -rounds 7
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/outpost-edge/outpost/internal/fleet/dashboard"
	"github.com/outpost-edge/outpost/internal/fleet/proto"
	"github.com/outpost-edge/outpost/internal/fleet/server"
	"github.com/outpost-edge/outpost/internal/fleet/store"
	"github.com/outpost-edge/outpost/internal/fleet/store/sqlite"
)

func main() {
	sizes := flag.String("gateways", "100,10000", "registry sizes to measure, comma-separated")
	rounds := flag.Int("rounds", 7, "loads per page")
	rate := flag.Int("rate", 200, "label changes per second during the live-update phase")
	liveFor := flag.Duration("live", 10*time.Second, "length of the live-update phase")
	flag.Parse()
	for _, s := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 || n > 50000 {
			log.Fatalf("-gateways: %q: want 1..50000", s)
		}
		if err := run(n, *rounds, *rate, *liveFor); err != nil {
			log.Fatal(err)
		}
	}
}

func run(n, rounds, rate int, liveFor time.Duration) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir, err := os.MkdirTemp("", "dashboardload-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	st, err := sqlite.Open(ctx, dir)
	if err != nil {
		return err
	}
	defer st.Close()
	t0 := time.Now()
	now := time.Now().UTC()
	for i := range n {
		id := fmt.Sprintf("gw-%05d", i)
		labels := map[string]string{"site": fmt.Sprintf("plant%d", i%20), "line": strconv.Itoa(i % 7)}
		if i%100 == 0 {
			labels["ring"] = "canary"
		}
		if err := st.CreateGateway(ctx, store.Gateway{ID: id, Labels: labels, CertSerial: fmt.Sprintf("%x", i), CertExpiry: now.Add(90 * 24 * time.Hour), Enrolled: now}); err != nil {
			return err
		}
		health := "ok"
		conds := []proto.Condition{{Kind: "ruleset", Name: "hot", ResourceVersion: 1, Applied: true}}
		if i%97 == 0 {
			health = "degraded"
			conds = append(conds, proto.Condition{Kind: "ruleset", Name: "cold", ResourceVersion: 2, Error: "fleet-cold.sql:1:8: syntax error"})
		}
		facts := map[string]string{"arch": "arm64", "version": fmt.Sprintf("1.%d.0", i%4), "hostname": id}
		if err := st.SetGatewayStatus(ctx, id, proto.Status{AppliedResourceVersion: 2, Conditions: conds, Health: health}, facts, now); err != nil {
			return err
		}
	}
	fill := time.Since(t0)

	srv, _, err := server.Open(ctx, server.Options{Store: st})
	if err != nil {
		return err
	}
	d, err := dashboard.New(ctx, dashboard.Options{Fleet: srv, Meta: st, Rollouts: dashboard.APIRollouts(srv), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	d.Register(srv)
	if err := d.Users().Add(ctx, "bench", dashboard.RoleViewer, "bench-password"); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go srv.Serve(ctx, ln)
	base := "https://" + ln.Addr().String()

	path, err := exec.LookPath("chromium")
	if err != nil {
		return fmt.Errorf("chromium: %w (scripts/deps.sh installs it)", err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox,
		chromedp.Flag("ignore-certificate-errors", true), chromedp.WindowSize(1280, 860))
	actx, acancel := chromedp.NewExecAllocator(ctx, opts...)
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx)
	defer bcancel()
	if err := chromedp.Do(bctx,
		chromedp.Navigate(base+"/login"),
		chromedp.WaitVisible(chromedp.ID("user")),
		chromedp.SendKeys(chromedp.ID("user"), "bench"),
		chromedp.SendKeys(chromedp.ID("password"), "bench-password"),
		chromedp.Click(chromedp.ID("login")),
		chromedp.WaitVisible(chromedp.ID("whoami")),
	); err != nil {
		return fmt.Errorf("login: %w", err)
	}
	fmt.Printf("\n== %d gateways registered (filled in %s)\n", n, fill.Round(time.Millisecond))
	fmt.Printf("%-40s %6s %10s %10s %10s %10s %9s\n", "page", "loads", "ttfb p50", "dom p50", "load p50", "load max", "bytes")
	pages := []string{"/", "/gateways", "/gateways?selector=site%3Dplant3,ring%3Dcanary", "/gateways?q=gw-0004", "/gateways/gw-00042", "/rollouts"}
	for _, p := range pages {
		var ttfb, dom, load []float64
		var size float64
		for range rounds {
			if err := chromedp.Do(bctx, chromedp.Navigate(base+p), chromedp.WaitReady(chromedp.ID("main"))); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			var nt struct {
				RequestStart, ResponseStart, DomContentLoadedEventEnd, LoadEventEnd, TransferSize float64
			}
			for range 100 { // the load event may not have ended yet
				v, err := chromedp.Run(bctx, chromedp.Evaluate[map[string]float64](`(() => { const e = performance.getEntriesByType('navigation')[0];
					return {RequestStart: e.requestStart, ResponseStart: e.responseStart, DomContentLoadedEventEnd: e.domContentLoadedEventEnd, LoadEventEnd: e.loadEventEnd, TransferSize: e.encodedBodySize}; })()`))
				if err != nil {
					return err
				}
				nt.RequestStart, nt.ResponseStart, nt.DomContentLoadedEventEnd, nt.LoadEventEnd, nt.TransferSize = v["RequestStart"], v["ResponseStart"], v["DomContentLoadedEventEnd"], v["LoadEventEnd"], v["TransferSize"]
				if nt.LoadEventEnd > 0 {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			ttfb = append(ttfb, nt.ResponseStart-nt.RequestStart)
			dom = append(dom, nt.DomContentLoadedEventEnd)
			load = append(load, nt.LoadEventEnd)
			size = nt.TransferSize
		}
		fmt.Printf("%-40s %6d %8.1fms %8.1fms %8.1fms %8.1fms %9.0f\n", p, rounds, median(ttfb), median(dom), median(load), maxOf(load), size)
	}

	// Live updates: the overview open, label changes at rate/s.
	if err := chromedp.Do(bctx, chromedp.Navigate(base+"/"), chromedp.WaitReady(chromedp.ID("main"))); err != nil {
		return err
	}
	for range 200 {
		ok, _ := chromedp.Run(bctx, chromedp.Evaluate[bool](`document.body.dataset.sse === 'open'`))
		if ok {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := chromedp.Run(bctx, chromedp.Evaluate[bool](`(() => { window.maxLag = 0; let last = performance.now();
		setInterval(() => { const t = performance.now(); window.maxLag = Math.max(window.maxLag, t - last - 50); last = t; }, 50);
		performance.clearResourceTimings(); window.startUpdates = Number(document.body.dataset.updates); return true; })()`)); err != nil {
		return err
	}
	tick := time.NewTicker(time.Second / time.Duration(rate))
	end := time.Now().Add(liveFor)
	changes := 0
	for time.Now().Before(end) {
		<-tick.C
		id := fmt.Sprintf("gw-%05d", changes%n)
		if _, err := st.SetGatewayLabels(ctx, id, map[string]string{"site": fmt.Sprintf("plant%d", changes%20), "line": strconv.Itoa(changes % 7), "bench": strconv.Itoa(changes)}); err != nil {
			return err
		}
		changes++
	}
	tick.Stop()
	time.Sleep(1500 * time.Millisecond) // let the last refresh land (bench only)
	v, err := chromedp.Run(bctx, chromedp.Evaluate[map[string]float64](`(() => {
		const f = performance.getEntriesByType('resource').filter(e => e.initiatorType === 'fetch').map(e => e.duration).sort((a, b) => a - b);
		return {refreshes: Number(document.body.dataset.updates) - window.startUpdates, p50: f.length ? f[Math.floor(f.length/2)] : 0,
			max: f.length ? f[f.length-1] : 0, maxLag: window.maxLag}; })()`))
	if err != nil {
		return err
	}
	fmt.Printf("live: %d label changes in %s (%d/s): %0.f page refreshes, refresh fetch p50 %.1f ms, max %.1f ms; longest main-thread stall %.1f ms\n",
		changes, liveFor, rate, v["refreshes"], v["p50"], v["max"], v["maxLag"])
	return nil
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func maxOf(v []float64) float64 {
	m := v[0]
	for _, x := range v {
		m = max(m, x)
	}
	return m
}
