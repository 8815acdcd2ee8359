// Command outpost is the Outpost gateway agent: an embedded MQTT broker, a
// rule pipeline, a durable uplink to the cloud, a component supervisor and a
// self-updater in one static binary.
//
// Each subcommand lives in its own cmd_<name>.go file and registers itself
// from init(); main only dispatches. Exit codes: 0 success, 1 runtime failure,
// 2 bad usage or invalid input (config, rules, recipes).
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
)

// command is one `outpost <name>` subcommand.
type command struct {
	name    string
	summary string // one line for `outpost help`
	// run executes the command; args exclude the command name. It returns
	// the process exit code.
	run func(ctx context.Context, args []string) int
}

var commands = map[string]*command{}

// register adds a subcommand; a duplicate name is a programming error.
func register(c *command) {
	if _, dup := commands[c.name]; dup {
		panic("outpost: duplicate command " + c.name)
	}
	commands[c.name] = c
}

// Exit codes.
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
	case "-v", "--version":
		name = "version"
	}
	c, ok := commands[name]
	if !ok {
		fmt.Fprintf(stderr, "outpost: unknown command %q\n\n", name)
		usage(stderr)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return c.run(ctx, args[1:])
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "Outpost: edge runtime for IoT gateways.\n\nUsage:\n  outpost <command> [flags]\n\nCommands:\n")
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
	fmt.Fprintf(w, "\nRun 'outpost <command> --help' for a command's flags and examples.\n")
}

// helpText formats a command's --help header: usage line, description and
// examples, for flag.FlagSet.Usage.
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
