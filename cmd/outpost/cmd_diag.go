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
	addr := fs.String("addr", "127.0.0.1:9100", "the agent's telemetry address")
	token := fs.String("token", os.Getenv("OUTPOST_TELEMETRY__TOKEN"), "bearer token if telemetry.token is set (default $OUTPOST_TELEMETRY__TOKEN)")
	cpu := fs.Duration("cpu", 10*time.Second, "CPU profile duration")
	trace := fs.Duration("trace", 5*time.Second, "execution trace duration")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), helpText("outpost diag [-o bundle.tar.gz] [--addr HOST:PORT]",
			`Collect a support bundle from a running agent over its local HTTP endpoint:
version, redacted config (passwords, hashes, keys and tokens replaced),
module health, metrics, heap profile, goroutine dump, a CPU profile and an
execution trace. Progress is shown as each part is collected.`,
			"outpost diag -o /tmp/bundle.tar.gz",
			"outpost diag --cpu 30s --trace 2s"))
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	items := []diagItem{
		{"version.json", "/api/v1/version", "version", 0},
		{"config.redacted.json", "/api/v1/config", "redacted config", 0},
		{"readyz.json", "/readyz", "module health", 0},
		{"metrics.txt", "/metrics", "metrics", 0},
		{"heap.pprof", "/debug/pprof/heap", "heap profile", 0},
		{"goroutines.txt", "/debug/pprof/goroutine?debug=2", "goroutine dump", 0},
		{"cpu.pprof", fmt.Sprintf("/debug/pprof/profile?seconds=%d", int(cpu.Seconds())), fmt.Sprintf("CPU profile (%s)", *cpu), *cpu},
		{"trace.out", fmt.Sprintf("/debug/pprof/trace?seconds=%g", trace.Seconds()), fmt.Sprintf("execution trace (%s)", *trace), *trace},
	}
	f, err := os.Create(*out)
	if err != nil {
		fmt.Fprintln(os.Stderr, "outpost diag:", err)
		return exitFailure
	}
	gz := gzip.NewWriter(f)
	tw := tar.NewWriter(gz)
	client := &http.Client{}
	failed := 0
	for i, it := range items {
		fmt.Fprintf(os.Stderr, "[%d/%d] %s ...", i+1, len(items), it.what)
		t0 := time.Now()
		body, err := diagFetch(ctx, client, "http://"+*addr+it.path, *token, it.wait+30*time.Second)
		if err != nil {
			failed++
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
	if failed == len(items) {
		fmt.Fprintf(os.Stderr, "outpost diag: could not reach an agent at %s (is it running? is telemetry.address different?)\n", *addr)
		return exitFailure
	}
	fmt.Fprintf(os.Stderr, "wrote %s (%d of %d parts)\n", *out, len(items)-failed, len(items))
	return exitOK
}

func diagFetch(ctx context.Context, c *http.Client, url, token string, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusServiceUnavailable {
		return nil, fmt.Errorf("HTTP %s", resp.Status)
	}
	return body, nil
}
