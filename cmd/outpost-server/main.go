// Command outpost-server is the Outpost fleet control plane: it enrolls
// gateways (bootstrap token -> client certificate from the fleet CA), keeps
// the registry, stores desired state and streams it to every gateway's
// agent (List + Watch over mTLS HTTP/2), and serves the admin API under
// /api/v1. See docs/fleet.md.
//
// Each subcommand lives in its own cmd_<name>.go file and registers itself
// from init(); main only dispatches. Exit codes: 0 success, 1 runtime
// failure, 2 bad usage or invalid input.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/outpost-edge/outpost/internal/cli"
)

// command is one `outpost-server <name>` subcommand.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string) int
}

var program = &cli.Program{Name: "outpost-server", Tagline: "outpost-server: the Outpost fleet control plane."}

func register(c *command) {
	program.Register(&cli.Command{Name: c.name, Summary: c.summary, Run: c.run})
}

const (
	exitOK      = cli.ExitOK
	exitFailure = cli.ExitFailure
	exitUsage   = cli.ExitUsage
)

func main() {
	os.Exit(dispatch(os.Args[1:], os.Stdout, os.Stderr))
}

func dispatch(args []string, stdout, stderr io.Writer) int {
	return program.Dispatch(args, stdout, stderr)
}

// helpText formats a command's --help header.
func helpText(usageLine, description string, examples ...string) string {
	return cli.HelpText(usageLine, description, examples...)
}

// parse parses flags; it returns (exit code, false) on --help or an error.
func parse(fs *flag.FlagSet, args []string) (int, bool) {
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return exitOK, false
		}
		return exitUsage, false
	}
	return 0, true
}

// subcommands dispatches `outpost-server <group> <sub> ...`.
func subcommands(ctx context.Context, group string, args []string, subs map[string]func(context.Context, []string) int, help string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(os.Stdout, help)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	f, ok := subs[args[0]]
	if !ok {
		fmt.Fprintf(os.Stderr, "outpost-server %s: unknown subcommand %q\n\n%s", group, args[0], help)
		return exitUsage
	}
	return f(ctx, args[1:])
}
