package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"

	"github.com/outpost-edge/outpost/internal/buildinfo"
)

func init() {
	register(&command{name: "version", summary: "print the version (--verbose: build and dependency details)", run: runVersion})
}

func runVersion(_ context.Context, args []string) int {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	verbose := fs.Bool("verbose", false, "print commit, build time, Go version, platform and dependency versions")
	asJSON := fs.Bool("json", false, "print the verbose form as JSON")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), helpText("outpost version [--verbose] [--json]",
			"Print the version of this outpost binary.",
			"outpost version", "outpost version --verbose"))
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return exitOK
		}
		return exitUsage
	}
	in := buildinfo.Read()
	switch {
	case *asJSON:
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(in); err != nil {
			return exitFailure
		}
	case *verbose:
		in.WriteVerbose(os.Stdout)
	default:
		fmt.Println(in.Short())
	}
	return exitOK
}
