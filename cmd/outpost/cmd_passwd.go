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

	"golang.org/x/term"

	"github.com/outpost-edge/outpost/internal/broker"
)

func init() {
	register(&command{name: "passwd", summary: "hash a password for broker.users", run: runPasswd})
}

func runPasswd(_ context.Context, args []string) int {
	fs := flag.NewFlagSet("passwd", flag.ContinueOnError)
	format := fs.String("format", broker.HashBcrypt, "hash format: bcrypt or argon2id")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), helpText("outpost passwd [--format bcrypt|argon2id] < password",
			`Read a password (prompted without echo on a terminal, else the first line of
stdin) and print its hash for broker.users[].password_hash. The password itself
is never printed or logged.`,
			"outpost passwd",
			"printf '%s\\n' \"$PW\" | outpost passwd --format argon2id"))
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	var pw []byte
	if term.IsTerminal(int(os.Stdin.Fd())) {
		fmt.Fprint(os.Stderr, "Password: ")
		p1, err := term.ReadPassword(int(os.Stdin.Fd()))
		fmt.Fprintln(os.Stderr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "outpost passwd:", err)
			return exitFailure
		}
		fmt.Fprint(os.Stderr, "Again: ")
		p2, err := term.ReadPassword(int(os.Stdin.Fd()))
		fmt.Fprintln(os.Stderr)
		if err != nil || string(p1) != string(p2) {
			fmt.Fprintln(os.Stderr, "outpost passwd: passwords do not match")
			return exitUsage
		}
		pw = p1
	} else {
		line, err := bufio.NewReader(os.Stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			fmt.Fprintln(os.Stderr, "outpost passwd:", err)
			return exitFailure
		}
		pw = []byte(strings.TrimRight(line, "\r\n"))
	}
	if len(pw) == 0 {
		fmt.Fprintln(os.Stderr, "outpost passwd: empty password")
		return exitUsage
	}
	h, err := broker.HashPassword(pw, *format)
	if err != nil {
		fmt.Fprintln(os.Stderr, "outpost passwd:", err)
		return exitUsage
	}
	fmt.Println(h)
	return exitOK
}
