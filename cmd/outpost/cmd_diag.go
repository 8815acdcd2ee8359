package main

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func init() {
	register(&command{name: "diag", summary: "collect a support bundle from a running agent", run: runDiag})
}

// diagItem is one file of the bundle and where it comes from.
type diagItem struct {
	file, path, what string
	wait             time.Duration // how long the agent takes to produce it
}

func runDiag(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("diag", flag.ContinueOnError)
	out := fs.String("o", "outpost-diag.tar.gz", "bundle file to write")
	apiF := addAPIFlags(fs)
	addr := fs.String("addr", "", "the agent's telemetry address HOST:PORT (same as --api http://HOST:PORT)")
	cpu := fs.Duration("cpu", 10*time.Second, "CPU profile duration")
	trace := fs.Duration("trace", 5*time.Second, "execution trace duration")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), helpText("outpost diag [-o bundle.tar.gz] [--api URL] [--token T] [--config FILE]",
			`Collect a support bundle from a running agent over its local HTTP endpoint:
version, redacted config (passwords, hashes, keys and tokens replaced),
module health, metrics, heap profile, goroutine dump, a CPU profile and an
execution trace. Progress is shown as each part is collected. A part that
cannot be collected is recorded in the bundle as PART.error; if any part
is missing the command says which and why and exits 1.`,
			"outpost diag -o /tmp/bundle.tar.gz",
			"outpost diag --config /etc/outpost/outpost.yaml   # address and token from the config",
			"outpost diag --cpu 30s --trace 2s"))
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if *addr != "" && apiF.api == "" {
		apiF.api = "http://" + *addr
	}
	c, err := apiF.client()
	if err != nil {
		fmt.Fprintln(os.Stderr, "outpost diag:", err)
		return exitUsage
	}
	items := []diagItem{
		{"version.json", "/api/v1/version", "version", 0},
		{"config.redacted.json", "/api/v1/config", "redacted config", 0},
		{"readyz.json", "/readyz", "module health", 0},
		{"metrics.txt", "/metrics", "metrics", 0},
		{"heap.pprof", "/debug/pprof/heap", "heap profile", 0},
		{"goroutines.txt", "/debug/pprof/goroutine?debug=2", "goroutine dump", 0},
		{"cpu.pprof", fmt.Sprintf("/debug/pprof/profile?seconds=%d", wholeSeconds(*cpu)), fmt.Sprintf("CPU profile (%s)", *cpu), *cpu},
		{"trace.out", fmt.Sprintf("/debug/pprof/trace?seconds=%d", wholeSeconds(*trace)), fmt.Sprintf("execution trace (%s)", *trace), *trace},
	}
	f, err := os.Create(*out)
	if err != nil {
		fmt.Fprintln(os.Stderr, "outpost diag:", err)
		return exitFailure
	}
	gz := gzip.NewWriter(f)
	tw := tar.NewWriter(gz)
	var failed []string
	unreachable := 0
	for i, it := range items {
		fmt.Fprintf(os.Stderr, "[%d/%d] %s ...", i+1, len(items), it.what)
		t0 := time.Now()
		body, err := diagFetch(ctx, c, it.path, it.wait+30*time.Second)
		if err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", it.what, err))
			if errors.Is(err, ErrAgentUnreachable) {
				unreachable++
			}
			fmt.Fprintf(os.Stderr, " failed: %v\n", err)
			body = []byte(fmt.Sprintf("collecting %s failed: %v\n", it.path, err))
			it.file += ".error"
		} else {
			fmt.Fprintf(os.Stderr, " %d bytes in %s\n", len(body), time.Since(t0).Round(time.Millisecond))
		}
		hdr := &tar.Header{Name: "outpost-diag/" + it.file, Mode: 0o600, Size: int64(len(body)), ModTime: time.Now()}
		if err := tw.WriteHeader(hdr); err == nil {
			tw.Write(body)
		}
		if ctx.Err() != nil {
			break
		}
	}
	err = errors.Join(tw.Close(), gz.Close(), f.Close())
	if err != nil {
		fmt.Fprintln(os.Stderr, "outpost diag:", err)
		return exitFailure
	}
	if unreachable == len(items) {
		os.Remove(*out)
		fmt.Fprintf(os.Stderr, "outpost diag: could not reach an agent at %s (is it running? is telemetry.address different? set --api or --config)\n", c.where)
		return exitFailure
	}
	if len(failed) > 0 {
		fmt.Fprintf(os.Stderr, "outpost diag: wrote an INCOMPLETE bundle %s: %d of %d parts missing:\n", *out, len(failed), len(items))
		for _, f := range failed {
			fmt.Fprintf(os.Stderr, "  %s\n", f)
		}
		return exitFailure
	}
	fmt.Fprintf(os.Stderr, "wrote %s (%d of %d parts)\n", *out, len(items), len(items))
	return exitOK
}

func diagFetch(ctx context.Context, c *apiClient, path string, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	body, err := c.stream(ctx, http.MethodGet, path)
	var ae *APIError
	if errors.As(err, &ae) && ae.Status == http.StatusServiceUnavailable && path == "/readyz" {
		// Not ready is worth having in the bundle: fetch the body again
		// through the raw client.
		return diagRaw(ctx, c, path)
	}
	if err != nil {
		return nil, err
	}
	defer body.Close()
	return io.ReadAll(io.LimitReader(body, 256<<20))
}

// diagRaw fetches path whatever its status.
func diagRaw(ctx context.Context, c *apiClient, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(io.LimitReader(resp.Body, 256<<20))
}

// wholeSeconds rounds d up to whole seconds, at least 1: the agent's
// profile endpoints take a positive integer (a sub-second --trace was
// refused with HTTP 400).
func wholeSeconds(d time.Duration) int {
	return max(1, int((d+time.Second-1)/time.Second))
}
