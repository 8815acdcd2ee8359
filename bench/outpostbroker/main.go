// Command outpostbroker runs Outpost's broker module (internal/broker:
// mochi-mqtt plus Outpost's ACL checks, limits and flow control) on its own,
// without the pipeline or the rest of the agent, with anonymous access to
// every topic and persistence off. bench/broker_vs_mosquitto.sh measures it
// beside Mosquitto, bare mochi and `outpost run`, to tell the broker's cost
// from the agent's.
//
// Usage: go run ./bench/outpostbroker -addr 127.0.0.1:18834
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/outpost-edge/outpost/internal/broker"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:1883", "TCP listen address")
	flag.Parse()
	if err := run(*addr); err != nil {
		fmt.Fprintln(os.Stderr, "outpostbroker:", err)
		os.Exit(1)
	}
}

func run(addr string) error {
	off := false
	cfg := &broker.Config{
		Listeners:      []broker.Listener{{Type: broker.TypeTCP, Address: addr}},
		AllowAnonymous: true,
		AnonymousACL:   []broker.ACLRule{{Topic: "#", Access: broker.AccessAll}},
		Persistence:    broker.Persistence{Enabled: &off},
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "outpostbroker")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	b := broker.New(broker.Options{Logger: log, DataDir: dir})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := b.Init(ctx, cfg); err != nil {
		return err
	}
	if err := b.Start(ctx); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "outpostbroker: listening on %s\n", addr)
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return b.Stop(sctx)
}
