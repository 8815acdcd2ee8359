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
	"os/signal"
	"sort"
	"strings"
	"syscall"
)

// command is one `outpost-server <name>` subcommand.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string) int
}

var commands = map[string]*command{}

func register(c *command) {
	if _, dup := commands[c.name]; dup {
		panic("outpost-server: duplicate command " + c.name)
	}
	commands[c.name] = c
}

const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

func main() {
	os.Exit(dispatch(os.Args[1:], os.Stdout, os.Stderr))
}

func dispatch(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	name := args[0]
	switch name {
	case "-h", "--help", "help":
		if len(args) > 1 {
			if c, ok := commands[args[1]]; ok {
				return c.run(context.Background(), []string{"--help"})
			}
		}
		usage(stdout)
		return exitOK
	}
	c, ok := commands[name]
	if !ok {
		fmt.Fprintf(stderr, "outpost-server: unknown command %q\n\n", name)
		usage(stderr)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return c.run(ctx, args[1:])
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "outpost-server: the Outpost fleet control plane.\n\nUsage:\n  outpost-server <command> [flags]\n\nCommands:\n")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	width := 0
	for _, n := range names {
		width = max(width, len(n))
	}
	for _, n := range names {
		fmt.Fprintf(w, "  %-*s  %s\n", width, n, commands[n].summary)
	}
	fmt.Fprintf(w, "\nRun 'outpost-server <command> --help' for a command's flags and examples.\n")
}

// helpText formats a command's --help header.
func helpText(usageLine, description string, examples ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Usage:\n  %s\n\n%s\n", usageLine, strings.TrimSpace(description))
	if len(examples) > 0 {
		b.WriteString("\nExamples:\n")
		for _, e := range examples {
			fmt.Fprintf(&b, "  %s\n", e)
		}
	}
	b.WriteString("\nFlags:\n")
	return b.String()
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
