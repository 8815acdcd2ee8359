package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/outpost-edge/outpost/internal/agent"
)

func init() {
	register(&command{name: "config", summary: "check a config file (config check FILE)", run: runConfig})
}

func runConfig(_ context.Context, args []string) int {
	fs := flag.NewFlagSet("config", flag.ContinueOnError)
	show := fs.Bool("show", false, "print the effective config (defaults filled in, secrets redacted) as JSON")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), helpText("outpost config check [--show] FILE",
			`Validate a config file without starting anything: strict decoding (unknown
keys are errors), every problem reported with file:line:column. Environment
overrides (OUTPOST_...) are applied as they would be at run time.
Exit codes: 0 valid, 2 invalid.`,
			"outpost config check /etc/outpost/outpost.yaml",
			"outpost config check --show outpost.yaml"))
		fs.PrintDefaults()
	}
	if len(args) == 0 || args[0] != "check" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			fs.Usage()
			return exitOK
		}
		fs.Usage()
		return exitUsage
	}
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return exitUsage
	}
	cfg, err := agent.Load(fs.Arg(0))
	if err != nil {
		printConfigError(err)
		return exitUsage
	}
	if *show {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(agent.Redacted(cfg))
		return exitOK
	}
	fmt.Printf("%s: ok\n", fs.Arg(0))
	return exitOK
}
