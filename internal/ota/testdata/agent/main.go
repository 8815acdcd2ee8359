// Command agent is a stand-in for `outpost run` in the ota end-to-end and
// crash tests: it calls ota.Boot first, serves /readyz and the update API,
// runs the updater and gates a trial version exactly as `outpost run`
// does. How it misbehaves is set at link time (-X main.behavior=...):
//
//	healthy  ready at once (default)
//	exit     exits with status 3 right after Boot
//	crash    ready, then panics 100ms later (crash loop)
//	unready    never ready
//	initpanic  panics during package initialisation, before main and Boot
//	flap       ready, then unready 100ms later (fails the stability window)
//
// With -prestart it runs ota.Prestart and exits (systemd's ExecStartPre).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/outpost-edge/outpost/internal/buildinfo"
	"github.com/outpost-edge/outpost/internal/module"
	"github.com/outpost-edge/outpost/internal/ota"
	"gopkg.in/yaml.v3"
)

var behavior = "healthy"

var _ = initCheck()

func initCheck() int {
	if behavior == "initpanic" {
		panic("initpanic: dying before main")
	}
	return 0
}

type config struct {
	AddrFile string     `yaml:"addr_file"`
	Listen   string     `yaml:"listen"` // default 127.0.0.1:0
	OTA      ota.Config `yaml:"ota"`
}

func main() {
	cfgPath := flag.String("config", "", "config file")
	prestart := flag.Bool("prestart", false, "run the pre-start hook and exit")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("version", buildinfo.Version, "pid", os.Getpid())
	raw, err := os.ReadFile(*cfgPath)
	if err != nil {
		log.Error("config", "err", err)
		os.Exit(2)
	}
	var cfg config
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		log.Error("config", "err", err)
		os.Exit(2)
	}
	cfg.OTA.SetDefaults()
	if *prestart {
		rb, err := ota.Prestart(cfg.OTA, log)
		log.Info("prestart", "rolled_back", rb, "err", err)
		if err != nil {
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	// First thing: settle any interrupted update.
	trial, err := ota.Boot(ctx, cfg.OTA, ota.BootOptions{Log: log, Poll: 20 * time.Millisecond})
	if err != nil {
		log.Error("ota boot", "err", err)
	}
	log.Info("started", "behavior", behavior, "trial", trial != nil)
	if behavior == "exit" {
		os.Exit(3)
	}
	var ready atomic.Bool
	mux := http.NewServeMux()
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		log.Error("listen", "err", err)
		os.Exit(1)
	}
	srv := &http.Server{Handler: mux}
	restart := func(c ota.Config) {
		// Stop accepting, then hand over to the installed binary.
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		srv.Shutdown(sctx)
		cancel()
		if err := ota.Restart(c); err != nil {
			log.Error("restart", "err", err)
			os.Exit(1)
		}
	}
	u := ota.New(ota.Options{Log: log, Restart: restart})
	if err := module.Of[ota.Config](u).Init(ctx, cfg.OTA); err != nil {
		log.Error("ota init", "err", err)
		os.Exit(2)
	}
	u.Register(mux)
	go srv.Serve(ln)
	if cfg.AddrFile != "" {
		os.WriteFile(cfg.AddrFile+".tmp", []byte(ln.Addr().String()), 0o644)
		os.Rename(cfg.AddrFile+".tmp", cfg.AddrFile)
	}
	switch behavior {
	case "healthy", "crash", "flap":
		ready.Store(true)
	}
	if behavior == "flap" {
		go func() {
			time.Sleep(100 * time.Millisecond)
			ready.Store(false)
		}()
	}
	if behavior == "crash" {
		go func() {
			time.Sleep(100 * time.Millisecond)
			panic("crash loop")
		}()
	}
	if trial != nil {
		go func() {
			err := trial.Gate(ctx, ready.Load)
			var re *ota.RestartError
			if errors.As(err, &re) {
				log.Error("health gate failed", "err", err)
				restart(cfg.OTA)
			}
		}()
	}
	if err := u.Start(ctx); err != nil {
		log.Error("ota start", "err", err)
		os.Exit(1)
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	u.Stop(sctx)
	srv.Shutdown(sctx)
	if trial != nil {
		// A graceful stop on SIGTERM/SIGINT is not a failed attempt.
		if err := trial.Stopped(); err != nil {
			log.Error("ota trial stopped", "err", err)
		}
	}
	log.Info("stopped gracefully")
}
