package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/outpost-edge/outpost/internal/rules"
	"github.com/outpost-edge/outpost/internal/rules/parser"
)

func init() {
	register(&command{name: "rules", summary: "check rule files, or show what a rule outputs for sample messages", run: runRules})
}

func runRules(ctx context.Context, args []string) int {
	return rulesMain(ctx, args, os.Stdout, os.Stderr)
}

func rulesMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	usage := func(w io.Writer) {
		fmt.Fprint(w, `Usage:
  outpost rules check [--lanes a,b] [--files x] [--functions f] FILE...
  outpost rules test FILE --input samples.jsonl [--stats] [--lanes a,b]
  outpost rules list|show NAME [--api URL] [--token T] [--config FILE] [--json]

check validates rule files offline exactly as the gateway loads its rules
directory (files in name order; the same name and version in two files, or
a rule closing a REPUBLISH loop with the files before it, is rejected) and
reports every error like a compiler (file:line:col: rule NAME: message); it
exits 2 when any file has errors. Lanes, files and functions are only
checked when listed with the flags.

test runs the rules of FILE over the sample messages (JSON lines) and prints
every action output as "SINK TOPIC PAYLOAD". Webhooks are recorded, not sent.
Processing time follows the samples' "time" fields; open windows are flushed
at the end. See docs/rules.md for the sample format.

list and show ask the running agent (its local API, /api/v1/rules): the
active rules with their match and output counts, or one rule's versions and
source.

Examples:
  outpost rules check rules/*.sql
  outpost rules check --lanes alarms,bulk rules/overheat.sql
  outpost rules test rules/overheat.sql --input samples.jsonl --stats
  outpost rules list --config /etc/outpost/outpost.yaml
`)
	}
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "--help", "help":
		usage(stdout)
		return exitOK
	case "check":
		return rulesCheck(args[1:], stdout, stderr)
	case "test":
		return rulesTest(ctx, args[1:], stdout, stderr)
	case "list", "show":
		return rulesAPI(ctx, args[0], args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "outpost rules: unknown subcommand %q\n\n", args[0])
	usage(stderr)
	return exitUsage
}

// parseInterleaved parses flags that may follow positional arguments.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

func envFlags(fs *flag.FlagSet) func() *rules.MemEnv {
	lanes := fs.String("lanes", "", "comma-separated uplink lane names to accept (default: any)")
	files := fs.String("files", "", "comma-separated file sink names to accept (default: any)")
	funcs := fs.String("functions", "", "comma-separated function names to accept (default: any)")
	return func() *rules.MemEnv {
		env := rules.NewMemEnv()
		split := func(s string) []string {
			var out []string
			for _, p := range strings.Split(s, ",") {
				if p = strings.TrimSpace(p); p != "" {
					out = append(out, p)
				}
			}
			return out
		}
		if *lanes != "" || *files != "" || *funcs != "" {
			env.Open = false
			env.LaneNames, env.FileNames, env.FuncNames = split(*lanes), split(*files), split(*funcs)
			if *lanes == "" {
				env.LaneNames = []string{""}
			}
		}
		return env
	}
}

func rulesCheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("rules check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	mkEnv := envFlags(fs)
	files, err := parseInterleaved(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if len(files) == 0 {
		fmt.Fprintln(stderr, "outpost rules check: no files given")
		return exitUsage
	}
	code := exitOK
	srcs := map[string]string{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", f, err)
			code = exitUsage
			continue
		}
		srcs[f] = string(b)
	}
	// the agent's own path: the rule store, files in name order, each
	// checked against those loaded before it (duplicate name and version,
	// REPUBLISH → FROM cycles), so check rejects exactly what run rejects
	active, err := rules.CheckFiles(srcs, rules.CompileOptions{Env: mkEnv(), Webhook: rules.CheckWebhook})
	bad := map[string]bool{}
	if err != nil {
		code = exitUsage
		var el parser.ErrorList
		if !errors.As(err, &el) {
			fmt.Fprintf(stderr, "outpost rules check: %v\n", err)
			return code
		}
		for _, e := range el {
			fmt.Fprintln(stderr, e.Error())
			bad[e.File] = true
		}
	}
	perFile := map[string]int{}
	for _, r := range active {
		perFile[r.File]++
	}
	for _, f := range files {
		if _, read := srcs[f]; read && perFile[f] == 0 && !bad[f] {
			fmt.Fprintf(stderr, "%s: no CREATE RULE statement\n", f)
			code = exitUsage
		}
	}
	sort.SliceStable(active, func(i, j int) bool { return active[i].File < active[j].File })
	for _, r := range active {
		fmt.Fprintf(stdout, "%s: rule %s version %d ok\n", r.File, r.Name, r.Version)
	}
	return code
}

func rulesTest(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("rules test", flag.ContinueOnError)
	fs.SetOutput(stderr)
	input := fs.String("input", "", "sample messages, JSON lines (- for stdin)")
	stats := fs.Bool("stats", false, "print per-rule matched/emitted/error counters after the outputs")
	mkEnv := envFlags(fs)
	files, err := parseInterleaved(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if len(files) != 1 || *input == "" {
		fmt.Fprintln(stderr, "usage: outpost rules test FILE --input samples.jsonl")
		return exitUsage
	}
	src, err := os.ReadFile(files[0])
	if err != nil {
		fmt.Fprintf(stderr, "outpost rules test: %v\n", err)
		return exitUsage
	}
	var in io.Reader = os.Stdin
	if *input != "-" {
		f, err := os.Open(*input)
		if err != nil {
			fmt.Fprintf(stderr, "outpost rules test: %v\n", err)
			return exitUsage
		}
		defer f.Close()
		in = f
	}
	err = rules.RunTest(ctx, files[0], string(src), in, stdout, rules.TestOptions{Env: mkEnv(), Stats: *stats})
	if err != nil {
		var el parser.ErrorList
		if errors.As(err, &el) {
			for _, e := range el {
				fmt.Fprintln(stderr, e.Error())
			}
		} else {
			fmt.Fprintf(stderr, "outpost rules test: %v\n", err)
		}
		return exitUsage
	}
	return exitOK
}

// rulesAPI lists the running agent's rules or shows one.
func rulesAPI(ctx context.Context, sub string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("rules "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	apiF := addAPIFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if (sub == "list") != (len(pos) == 0) || len(pos) > 1 {
		fmt.Fprintf(stderr, "outpost rules %s: %s\n", sub, map[string]string{"list": "takes no arguments", "show": "expected one rule name"}[sub])
		return exitUsage
	}
	c, err := apiF.client()
	if err != nil {
		fmt.Fprintf(stderr, "outpost rules %s: %v\n", sub, err)
		return exitUsage
	}
	path := "/api/v1/rules"
	if sub == "show" {
		path += "/" + url.PathEscape(pos[0])
	}
	var raw json.RawMessage
	if err := c.call(ctx, http.MethodGet, path, &raw); err != nil {
		fmt.Fprintf(stderr, "outpost rules %s: %v\n", sub, err)
		return exitCode(err)
	}
	if *asJSON || sub == "show" {
		var v any
		json.Unmarshal(raw, &v)
		if sub == "show" && !*asJSON {
			if m, ok := v.(map[string]any); ok {
				if src, ok := m["source"].(string); ok {
					fmt.Fprintf(stdout, "-- %v\n%s\n", m["file"], strings.TrimRight(src, "\n"))
					return exitOK
				}
			}
		}
		return writeJSON(stdout, v)
	}
	var l struct {
		Rules []rules.RuleInfo `json:"rules"`
	}
	if err := json.Unmarshal(raw, &l); err != nil {
		fmt.Fprintf(stderr, "outpost rules list: bad answer from the agent: %v\n", err)
		return exitFailure
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tVERSION\tMATCHED\tEMITTED\tFILE")
	for _, r := range l.Rules {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\n", r.Name, r.Version, r.Matched, r.Emitted, r.File)
	}
	tw.Flush()
	return exitOK
}
