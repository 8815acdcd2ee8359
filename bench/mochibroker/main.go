// Command mochibroker runs a bare mochi-mqtt v2 broker (the library Outpost
// embeds) with its default capabilities and anonymous access, for
// side-by-side benchmarks (bench/broker_vs_mosquitto.sh). It is a reference
// point for "the broker library alone", not part of the outpost binary.
//
// Usage: go run ./bench/mochibroker -addr 127.0.0.1:18831 [-unix /tmp/m.sock]
//
//	[-write-buffer BYTES] [-max-pending N]
//
// The two tuning flags let a run show what mochi's per-client write buffer
// (default 2 KiB) and pending-write queue (default 8192) do to throughput.
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:1883", "TCP listen address")
	unix := flag.String("unix", "", "also listen on this Unix socket path")
	wbuf := flag.Int("write-buffer", 0, "ClientNetWriteBufferSize in bytes (0 = mochi's default, 2 KiB)")
	pending := flag.Int("max-pending", 0, "Capabilities.MaximumClientWritesPending (0 = mochi's default, 8192)")
	flag.Parse()
	if err := run(*addr, *unix, *wbuf, *pending); err != nil {
		fmt.Fprintln(os.Stderr, "mochibroker:", err)
		os.Exit(1)
	}
}

func run(addr, unix string, wbuf, pending int) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	opts := &mqtt.Options{Logger: log, ClientNetWriteBufferSize: wbuf}
	if pending > 0 {
		opts.Capabilities = mqtt.NewDefaultServerCapabilities()
		opts.Capabilities.MaximumClientWritesPending = int32(pending)
	}
	srv := mqtt.New(opts)
	if err := srv.AddHook(new(allowAll), nil); err != nil {
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

// allowAll admits every client to every topic (like mochi's auth.AllowHook,
// which Outpost's trimmed mochi copy does not include).
type allowAll struct{ mqtt.HookBase }

func (allowAll) ID() string { return "allow-all" }

func (allowAll) Provides(b byte) bool { return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck }

func (allowAll) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }

func (allowAll) OnACLCheck(*mqtt.Client, string, bool) bool { return true }
