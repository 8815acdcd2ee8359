// Command mochibroker runs a bare mochi-mqtt v2 broker (the library Outpost
// embeds) with its default capabilities and anonymous access, for
// side-by-side benchmarks (bench/broker_vs_mosquitto.sh). It is a reference
// point for "the broker library alone", not part of the outpost binary.
//
// Usage: go run ./bench/mochibroker -addr 127.0.0.1:18831 [-unix /tmp/m.sock]
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:1883", "TCP listen address")
	unix := flag.String("unix", "", "also listen on this Unix socket path")
	flag.Parse()
	if err := run(*addr, *unix); err != nil {
		fmt.Fprintln(os.Stderr, "mochibroker:", err)
		os.Exit(1)
	}
}

func run(addr, unix string) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv := mqtt.New(&mqtt.Options{Logger: log})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		return err
	}
	if err := srv.AddListener(listeners.NewTCP(listeners.Config{ID: "tcp", Address: addr})); err != nil {
		return fmt.Errorf("listen %s: %w", addr, err)
	}
	if unix != "" {
		if err := srv.AddListener(listeners.NewUnixSock(listeners.Config{ID: "unix", Address: unix})); err != nil {
			return fmt.Errorf("listen %s: %w", unix, err)
		}
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	if err := srv.Serve(); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "mochibroker: mochi-mqtt %s listening on %s\n", mqtt.Version, addr)
	<-sig
	return srv.Close()
}
