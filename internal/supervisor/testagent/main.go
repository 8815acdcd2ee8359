// Command testagent runs only the component supervisor, for tests and
// benchmarks that need the supervisor in a process of its own (kill -9,
// idle RSS and CPU). It is not shipped: the real agent is cmd/outpost.
//
//	testagent -config supervisor.yaml -listen /tmp/api.sock
//
// The config file is a supervisor.Config in YAML. The HTTP API listens on a
// Unix socket; SIGTERM stops the supervisor and exits.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/outpost-edge/outpost/internal/module"
	"github.com/outpost-edge/outpost/internal/supervisor"
)

func main() {
	cfgPath := flag.String("config", "", "supervisor config (YAML)")
	listen := flag.String("listen", "", "Unix socket for the HTTP API")
	flag.Parse()
	b, err := os.ReadFile(*cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var cfg supervisor.Config
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	s := supervisor.New(supervisor.Options{Logger: log})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := module.Of[supervisor.Config](s).Init(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if err := s.Start(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if *listen != "" {
		_ = os.Remove(*listen)
		ln, err := net.Listen("unix", *listen)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		mux := http.NewServeMux()
		s.RegisterHTTP(mux)
		go func() { _ = http.Serve(ln, mux) }()
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Stop(sctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
