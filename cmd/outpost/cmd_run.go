package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/outpost-edge/outpost/internal/agent"
	"github.com/outpost-edge/outpost/internal/config"
	"github.com/outpost-edge/outpost/internal/ota"
	_ "github.com/outpost-edge/outpost/internal/prestack" // before any initialiser: see its doc
	"github.com/outpost-edge/outpost/internal/telemetry"
)

func init() {
	register(&command{name: "run", summary: "run the gateway agent", run: runRun})
}

func runRun(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	cfgPath := fs.String("config", "outpost.yaml", "config file (watched for changes)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), helpText("outpost run [--config FILE]",
			`Run the gateway: the embedded MQTT broker, the pipeline, the rule engine and
the local HTTP endpoint, as configured. The config file is watched: a valid
change is applied to the modules it affects; an invalid one is rejected and
logged, and the running config stays. SIGTERM or SIGINT shuts down gracefully
(in-flight messages are drained) and exits 0.

Exit codes: 0 after a clean shutdown, 1 if a module failed, 2 for an invalid config.`,
			"outpost run --config /etc/outpost/outpost.yaml",
			"outpost init > outpost.yaml && outpost run"))
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if _, err := os.Stat(*cfgPath); errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(os.Stderr, "outpost: no config file at %s\n", *cfgPath)
		fmt.Fprintf(os.Stderr, "  create one with:  outpost init -o %s\n  or try the demo:  outpost demo\n", *cfgPath)
		return exitUsage
	}
	cfg, err := agent.Load(*cfgPath)
	if err != nil {
		printConfigError(err)
		return exitUsage
	}
	return runAgent(ctx, cfg, *cfgPath)
}

func runAgent(ctx context.Context, cfg *agent.Config, path string) int {
	logs := telemetry.NewLogs(os.Stderr, cfg.Log)
	// First: settle an interrupted update, count a trial start.
	trial, err := ota.Boot(ctx, cfg.OTA, ota.BootOptions{Log: logs.Logger()})
	if err != nil {
		logs.Logger().Error("ota boot", "err", err)
	}
	a, err := agent.New(cfg, path, logs)
	if err != nil {
		fmt.Fprintf(os.Stderr, "outpost: %v\n", err)
		return exitFailure
	}
	if trial != nil {
		go func() {
			select {
			case <-a.Ready:
			case <-ctx.Done():
				return
			}
			ready := func() bool {
				for _, h := range a.Health() {
					if !h.Ready() {
						return false
					}
				}
				return true
			}
			var re *ota.RestartError
			if err := trial.Gate(ctx, ready); errors.As(err, &re) {
				sctx, cancel := context.WithTimeout(context.Background(), agent.StopTimeout)
				a.Stop(sctx)
				cancel()
				if err := ota.Restart(cfg.OTA); err != nil {
					fmt.Fprintf(os.Stderr, "outpost: %v\n", err)
				}
				os.Exit(exitFailure)
			}
		}()
	}
	if err := a.Run(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "outpost: %v\n", err)
		return exitFailure
	}
	if trial != nil && ctx.Err() != nil {
		// Stopped gracefully by SIGTERM/SIGINT during the trial (an
		// operator's restart): the next start is not a failed attempt.
		if err := trial.Stopped(); err != nil {
			logs.Logger().Error("ota", "err", err)
		}
	}
	return exitOK
}

// printConfigError prints config problems one per line, compiler style.
func printConfigError(err error) {
	var ps config.Problems
	if errors.As(err, &ps) {
		for _, p := range ps {
			fmt.Fprintf(os.Stderr, "%s\n", p.Error())
		}
		fmt.Fprintf(os.Stderr, "outpost: config has %d problem(s)\n", len(ps))
		return
	}
	fmt.Fprintf(os.Stderr, "outpost: %v\n", err)
}
