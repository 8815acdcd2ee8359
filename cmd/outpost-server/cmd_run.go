package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/dashboard"
	"github.com/outpost-edge/outpost/internal/fleet/server"
	"github.com/outpost-edge/outpost/internal/fleet/store"
	"github.com/outpost-edge/outpost/internal/fleet/store/postgres"
	"github.com/outpost-edge/outpost/internal/fleet/store/sqlite"
	"github.com/outpost-edge/outpost/internal/telemetry"
)

func init() {
	register(&command{name: "run", summary: "run the fleet server (SQLite in --data, generated CA, admin token printed once)", run: runServer})
}

type hostList []string

func (h *hostList) String() string     { return strings.Join(*h, ",") }
func (h *hostList) Set(v string) error { *h = append(*h, v); return nil }

func runServer(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	data := fs.String("data", "fleet-data", "data directory (fleet.db, ca.pem)")
	db := fs.String("db", "", "postgres://... to run on PostgreSQL (N replicas share it); default: SQLite in --data")
	listen := fs.String("listen", "127.0.0.1:8443", "HTTPS listen address (gateways and the API)")
	var hosts hostList
	fs.Var(&hosts, "host", "a DNS name or IP gateways use to reach the server (repeatable; localhost, 127.0.0.1 and ::1 are always included)")
	var proxies hostList
	fs.Var(&proxies, "trusted-proxy", "a reverse proxy (CIDR or address, repeatable) whose X-Forwarded-For the dashboard believes for its per-address login limit and logs")
	keepalive := fs.Duration("keepalive", 30*time.Second, "watch stream keepalive (bookmark) period")
	compactKeep := fs.Int64("compact-keep", 100_000, "change-log events kept by automatic compaction, every 5 minutes (-1: off); a gateway away for more changes re-lists")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	pprofAddr := fs.String("pprof", "", "serve /debug/pprof/ (heap, CPU, goroutine profiles) on this loopback address, e.g. 127.0.0.1:6060 (off by default; no authentication, so loopback only)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), helpText("outpost-server run [--data DIR] [--listen ADDR] [--host NAME]...",
			`Run the fleet server on its embedded SQLite store (DIR/fleet.db, WAL mode).
On first start it generates the fleet CA (its certificate is written to
DIR/ca.pem: gateways and the CLI trust it) and an admin API token, which is
printed once and never stored in clear. Schema migrations are applied on
start. The server certificate is issued by the fleet CA for localhost,
127.0.0.1, ::1 and every --host. With --db postgres://..., the state (CA,
tokens, registry, desired state) lives in PostgreSQL and any number of
replicas behind a TCP load balancer serve the same fleet; changes reach every
replica through LISTEN/NOTIFY. --data then only holds ca.pem.
The web dashboard is served at the same URL (/); add its users with
'outpost-server users add'.`,
			"outpost-server run --data fleet-data",
			"outpost-server run --data /var/lib/outpost-server --db postgres://outpost@db:5432/fleet --listen 0.0.0.0:8443   # one of N replicas",
			"outpost-server run --data /var/lib/outpost-server --listen 0.0.0.0:8443 --host fleet.example.com",
			"outpost-server run --data /var/lib/outpost-server --listen 10.0.0.5:8443 --trusted-proxy 10.0.0.2   # behind a TLS-passthrough or re-encrypting proxy at 10.0.0.2"))
		fs.PrintDefaults()
	}
	if code, ok := parse(fs, args); !ok {
		return code
	}
	trusted, err := parsePrefixes(proxies)
	if err != nil {
		fmt.Fprintf(os.Stderr, "outpost-server run: --trusted-proxy: %v\n", err)
		return exitUsage
	}
	if *pprofAddr != "" {
		if err := loopbackAddr(*pprofAddr); err != nil {
			fmt.Fprintf(os.Stderr, "outpost-server run: --pprof: %v\n", err)
			return exitUsage
		}
		// A finer heap profile (one sample per 4 KiB instead of 512 KiB):
		// per-connection costs of a few KB show up.
		runtime.MemProfileRate = 4096
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintf(os.Stderr, "outpost-server run: --log-level: %v\n", err)
		return exitUsage
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	if err := os.MkdirAll(*data, 0o700); err != nil {
		fmt.Fprintln(os.Stderr, "outpost-server run:", err)
		return exitFailure
	}
	var st store.Store
	schema := sqlite.SchemaVersion()
	if *db != "" {
		if !strings.HasPrefix(*db, "postgres://") && !strings.HasPrefix(*db, "postgresql://") {
			fmt.Fprintln(os.Stderr, "outpost-server run: --db: want postgres://user@host:port/db")
			return exitUsage
		}
		st, err = postgres.Open(ctx, *db, log)
		schema = postgres.SchemaVersion()
	} else {
		st, err = sqlite.Open(ctx, *data)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "outpost-server run:", err)
		return exitFailure
	}
	defer st.Close()
	allHosts := append([]string{"localhost", "127.0.0.1", "::1"}, hosts...)
	srv, admin, err := server.Open(ctx, server.Options{Store: st, Logger: log, Hosts: allHosts, Keepalive: *keepalive, CompactKeep: *compactKeep,
		OTADir: filepath.Join(*data, "ota")})
	if err != nil {
		fmt.Fprintln(os.Stderr, "outpost-server run:", err)
		return exitFailure
	}
	dash, err := dashboard.New(ctx, dashboard.Options{Fleet: srv, Meta: st, Logger: log, Rollouts: dashboard.APIRollouts(srv),
		TrustedProxies: trusted})
	if err != nil {
		fmt.Fprintln(os.Stderr, "outpost-server run:", err)
		return exitFailure
	}
	dash.Register(srv)
	caPath := filepath.Join(*data, "ca.pem")
	if err := os.WriteFile(caPath, srv.CACertPEM(), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "outpost-server run:", err)
		return exitFailure
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "outpost-server run:", err)
		return exitFailure
	}
	if *pprofAddr != "" {
		stop, err := servePprof(*pprofAddr)
		if err != nil {
			ln.Close()
			fmt.Fprintln(os.Stderr, "outpost-server run: --pprof:", err)
			return exitFailure
		}
		defer stop()
		log.Info("outpost-server profiling", "url", "http://"+*pprofAddr+"/debug/pprof/")
	}
	url := "https://" + ln.Addr().String()
	if admin != "" {
		fmt.Printf("\nThe admin API token (shown once; only its hash is stored):\n\n  export OUTPOST_SERVER_TOKEN=%s\n\n", admin)
		fmt.Printf("CLI setup:\n  export OUTPOST_SERVER=%s OUTPOST_SERVER_CA=%s\n\n", url, caPath)
	}
	log.Info("outpost-server listening", "url", url, "dashboard", url+"/", "data", *data, "postgres", *db != "", "schema", schema, "ca", caPath)
	if err := srv.Serve(ctx, ln); err != nil {
		fmt.Fprintln(os.Stderr, "outpost-server run:", err)
		return exitFailure
	}
	log.Info("outpost-server stopped")
	return exitOK
}

// loopbackAddr checks that addr is host:port with a loopback IP or
// localhost: the profiles are served without authentication.
func loopbackAddr(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: want 127.0.0.1:PORT", addr)
	}
	if host == "localhost" {
		return nil
	}
	if ip, err := netip.ParseAddr(host); err != nil || !ip.IsLoopback() {
		return fmt.Errorf("%q: only a loopback address (127.0.0.1:PORT, [::1]:PORT): the profiles have no authentication", addr)
	}
	return nil
}

// servePprof serves the profiling endpoints on addr until stop.
func servePprof(addr string) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/debug/pprof/", telemetry.PprofHandler())
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(ln)
	return func() { hs.Close() }, nil
}

// parsePrefixes parses CIDRs or single addresses (a /32 or /128).
func parsePrefixes(vs []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, v := range vs {
		if a, err := netip.ParseAddr(v); err == nil {
			out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return nil, fmt.Errorf("%q: want a CIDR (10.0.0.0/8) or an address", v)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}
