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
	"io"
	"os"

	"github.com/outpost-edge/outpost/internal/cli"
)

// command is one `outpost <name>` subcommand.
type command struct {
	name    string
	summary string // one line for `outpost help`
	// run executes the command; args exclude the command name. It returns
	// the process exit code.
	run func(ctx context.Context, args []string) int
}

var program = &cli.Program{
	Name:    "outpost",
	Tagline: "Outpost: edge runtime for IoT gateways.",
	Aliases: map[string]string{"-v": "version", "--version": "version"},
}

// register adds a subcommand; a duplicate name is a programming error.
func register(c *command) {
	program.Register(&cli.Command{Name: c.name, Summary: c.summary, Run: c.run})
}

// Exit codes.
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

// helpText formats a command's --help header: usage line, description and
// examples, for flag.FlagSet.Usage.
func helpText(usageLine, description string, examples ...string) string {
	return cli.HelpText(usageLine, description, examples...)
}
