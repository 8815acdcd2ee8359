package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/term"

	"github.com/outpost-edge/outpost/internal/fleet/dashboard"
)

func init() {
	register(&command{name: "users", summary: "manage web dashboard users (add, list, delete, passwd)", run: runUsers})
}

const usersHelp = `Usage:
  outpost-server users add NAME --role viewer|operator|admin [--password-stdin]
  outpost-server users list
  outpost-server users delete NAME
  outpost-server users passwd NAME [--password-stdin]

Local users of the web dashboard (https://SERVER/). Passwords are stored as
argon2id hashes in the server's store (shared by PostgreSQL replicas);
changing a password or deleting a user ends their sessions. viewer reads;
operator also pauses, resumes, aborts and rolls back rollouts; admin also
manages users. The password is read from the terminal, or from the first line
of standard input with --password-stdin; it is never a flag. These commands
need an admin API token (OUTPOST_SERVER_TOKEN).

Examples:
  outpost-server users add alice --role operator
  printf '%s\n' "$PW" | outpost-server users add grafana-ro --role viewer --password-stdin
  outpost-server users list
  outpost-server users passwd alice
  outpost-server users delete alice
`

func runUsers(ctx context.Context, args []string) int {
	return subcommands(ctx, "users", args, map[string]func(context.Context, []string) int{
		"add": usersAdd, "list": usersList, "delete": usersDelete, "passwd": usersPasswd,
	}, usersHelp)
}

// readPassword reads a password: the first line of stdin with fromStdin
// (or when stdin is not a terminal), else from the terminal without echo,
// asked twice.
func readPassword(fromStdin bool) (string, error) {
	in := bufio.NewReader(os.Stdin)
	tty := term.IsTerminal(int(os.Stdin.Fd()))
	line := func() (string, error) {
		if tty && !fromStdin {
			b, err := term.ReadPassword(int(os.Stdin.Fd()))
			if err != nil {
				return "", fmt.Errorf("password: %w", err)
			}
			return string(b), nil
		}
		s, err := in.ReadString('\n')
		if err != nil && !(errors.Is(err, io.EOF) && s != "") {
			return "", fmt.Errorf("%w: password: nothing on standard input", errUsage)
		}
		return strings.TrimRight(s, "\r\n"), nil
	}
	if fromStdin || !tty {
		return line()
	}
	fmt.Fprint(os.Stderr, "Password: ")
	p1, err := line()
	if err != nil {
		return "", err
	}
	fmt.Fprint(os.Stderr, "\nAgain: ")
	p2, err := line()
	fmt.Fprintln(os.Stderr)
	if err != nil {
		return "", err
	}
	if p1 != p2 {
		return "", fmt.Errorf("%w: password: the two entries differ", errUsage)
	}
	return p1, nil
}

func usersAdd(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("users add", flag.ContinueOnError)
	var a apiFlags
	a.register(fs)
	role := fs.String("role", "viewer", "viewer, operator or admin")
	stdin := fs.Bool("password-stdin", false, "read the password from the first line of standard input")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), helpText("outpost-server users add NAME --role viewer|operator|admin [--password-stdin]",
			"Add a dashboard user (at least 8 characters of password).",
			"outpost-server users add alice --role operator",
			"printf '%s\\n' \"$PW\" | outpost-server users add ci --role viewer --password-stdin"))
		fs.PrintDefaults()
	}
	name, code, ok := nameArg(fs, args)
	if !ok {
		return code
	}
	if err := dashboard.ValidateUserName(name); err != nil {
		return fail("users add", fmt.Errorf("%w: %v", errUsage, err))
	}
	pw, err := readPassword(*stdin)
	if err != nil {
		return fail("users add", err)
	}
	if err := dashboard.ValidatePassword(pw); err != nil {
		return fail("users add", fmt.Errorf("%w: %v", errUsage, err))
	}
	if err := a.call(ctx, "POST", "/api/v1/users", dashboard.UserRequest{Name: name, Role: *role, Password: pw}, nil); err != nil {
		return fail("users add", err)
	}
	if !a.json {
		fmt.Printf("user %s added (%s)\n", name, *role)
	}
	return exitOK
}

// nameArg parses flags that may come before or after the one NAME.
func nameArg(fs *flag.FlagSet, args []string) (string, int, bool) {
	var name string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		name, args = args[0], args[1:]
	}
	if code, ok := parse(fs, args); !ok {
		return "", code, false
	}
	if name == "" && fs.NArg() == 1 {
		name = fs.Arg(0)
	} else if fs.NArg() != 0 || name == "" {
		fmt.Fprintf(os.Stderr, "outpost-server %s: want exactly one user NAME\n", fs.Name())
		return "", exitUsage, false
	}
	return name, 0, true
}

func usersList(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("users list", flag.ContinueOnError)
	var a apiFlags
	a.register(fs)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), helpText("outpost-server users list", "List dashboard users and their roles.", "outpost-server users list --json"))
		fs.PrintDefaults()
	}
	if code, ok := parse(fs, args); !ok {
		return code
	}
	var resp struct {
		Items []dashboard.User `json:"items"`
	}
	if err := a.call(ctx, "GET", "/api/v1/users", nil, &resp); err != nil {
		return fail("users list", err)
	}
	if a.json {
		return exitOK
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tROLE\tCREATED")
	for _, u := range resp.Items {
		fmt.Fprintf(w, "%s\t%s\t%s\n", u.Name, u.Role, u.Created.Format(time.RFC3339))
	}
	w.Flush()
	return exitOK
}

func usersDelete(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("users delete", flag.ContinueOnError)
	var a apiFlags
	a.register(fs)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), helpText("outpost-server users delete NAME", "Delete a dashboard user; their sessions end.", "outpost-server users delete alice"))
		fs.PrintDefaults()
	}
	name, code, ok := nameArg(fs, args)
	if !ok {
		return code
	}
	if err := a.call(ctx, "DELETE", "/api/v1/users/"+name, nil, nil); err != nil {
		return fail("users delete", err)
	}
	if !a.json {
		fmt.Printf("user %s deleted\n", name)
	}
	return exitOK
}

func usersPasswd(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("users passwd", flag.ContinueOnError)
	var a apiFlags
	a.register(fs)
	stdin := fs.Bool("password-stdin", false, "read the password from the first line of standard input")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), helpText("outpost-server users passwd NAME [--password-stdin]",
			"Set a dashboard user's password; their other sessions end.",
			"outpost-server users passwd alice"))
		fs.PrintDefaults()
	}
	name, code, ok := nameArg(fs, args)
	if !ok {
		return code
	}
	if err := dashboard.ValidateUserName(name); err != nil {
		return fail("users passwd", fmt.Errorf("%w: %v", errUsage, err))
	}
	pw, err := readPassword(*stdin)
	if err != nil {
		return fail("users passwd", err)
	}
	if err := dashboard.ValidatePassword(pw); err != nil {
		return fail("users passwd", fmt.Errorf("%w: %v", errUsage, err))
	}
	if err := a.call(ctx, "POST", "/api/v1/users/"+name+"/password", dashboard.UserRequest{Password: pw}, nil); err != nil {
		return fail("users passwd", err)
	}
	if !a.json {
		fmt.Printf("password of %s changed\n", name)
	}
	return exitOK
}
