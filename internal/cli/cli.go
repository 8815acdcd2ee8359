// Package cli is the subcommand registry behind both binaries' thin mains
// (cmd/outpost, cmd/outpost-server): each subcommand registers itself from
// an init function, and main only dispatches. It keeps the conventions of
// docs/CONVENTIONS.md in one place: exit codes 0 (success), 1 (runtime
// failure) and 2 (bad usage or invalid input); `help`, `-h` and `--help`
// print the command list, `help NAME` a command's own --help; SIGINT and
// SIGTERM cancel the command's context.
package cli

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

// Exit codes.
const (
	ExitOK      = 0
	ExitFailure = 1
	ExitUsage   = 2
)

// Command is one subcommand.
type Command struct {
	Name    string
	Summary string // one line in the command list
	// Run executes the command; args exclude the command name. It returns
	// the process exit code.
	Run func(ctx context.Context, args []string) int
}

// Program is a binary's set of subcommands.
type Program struct {
	Name    string            // the binary, as typed: "outpost"
	Tagline string            // first line of the command list
	Aliases map[string]string // e.g. "--version" -> "version"

	Commands map[string]*Command
}

// Register adds a subcommand; a duplicate name is a programming error.
func (p *Program) Register(c *Command) {
	if p.Commands == nil {
		p.Commands = map[string]*Command{}
	}
	if _, dup := p.Commands[c.Name]; dup {
		panic(p.Name + ": duplicate command " + c.Name)
	}
	p.Commands[c.Name] = c
}

// Dispatch runs the subcommand args[0] with the rest of args and returns
// the exit code.
func (p *Program) Dispatch(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		p.Usage(stderr)
		return ExitUsage
	}
	name := args[0]
	switch name {
	case "-h", "--help", "help":
		if len(args) > 1 {
			if c, ok := p.Commands[args[1]]; ok {
				return c.Run(context.Background(), []string{"--help"})
			}
		}
		p.Usage(stdout)
		return ExitOK
	}
	if a, ok := p.Aliases[name]; ok {
		name = a
	}
	c, ok := p.Commands[name]
	if !ok {
		fmt.Fprintf(stderr, "%s: unknown command %q\n\n", p.Name, name)
		p.Usage(stderr)
		return ExitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return c.Run(ctx, args[1:])
}

// Usage prints the command list.
func (p *Program) Usage(w io.Writer) {
	fmt.Fprintf(w, "%s\n\nUsage:\n  %s <command> [flags]\n\nCommands:\n", p.Tagline, p.Name)
	names := make([]string, 0, len(p.Commands))
	for n := range p.Commands {
		names = append(names, n)
	}
	sort.Strings(names)
	width := 0
	for _, n := range names {
		width = max(width, len(n))
	}
	for _, n := range names {
		fmt.Fprintf(w, "  %-*s  %s\n", width, n, p.Commands[n].Summary)
	}
	fmt.Fprintf(w, "\nRun '%s <command> --help' for a command's flags and examples.\n", p.Name)
}

// HelpText formats a command's --help header (usage line, description,
// examples) for flag.FlagSet.Usage, which then prints the flags.
func HelpText(usageLine, description string, examples ...string) string {
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
