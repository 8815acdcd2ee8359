package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/outpost-edge/outpost/internal/fleet/server"
)

func init() {
	register(&command{name: "rollouts", summary: "roll a desired-state change out in waves with health gates; pause, resume, abort, roll back", run: runRollouts})
}

const rolloutsHelp = `Usage:
  outpost-server rollouts create -f FILE        (FILE: JSON, - = stdin)
  outpost-server rollouts list
  outpost-server rollouts get NAME
  outpost-server rollouts pause|resume|abort|rollback NAME [--resource-version N]

A rollout changes one object (kind/name) to a new spec (or an earlier
revision) wave by wave: gateways matching the selector that are not in a
released wave keep the old revision. Waves are a label selector
("ring=canary"), a cumulative percent of the targets, or a count; targets no
wave takes form a last wave "rest". Each wave is released, must report the
new revision within the deadline (else the gateway is stuck: counted against
the gates and sent back to the old revision), then soaks. A gate breach
(apply errors, health broken, OTA trial failed, silent or stuck gateways
beyond maxFailed / maxFailedPercent / maxBricked; none set = any failure)
halts the rollout, or rolls every released gateway back with autoRollback.

pause/resume/abort/rollback act on the rollout's resourceVersion: given with
--resource-version, a stale one is refused (409) so two operators never both
act; without it the current one is read first.

The file (the body of POST /api/v1/rollouts, see docs/fleet.md):
  {"name": "filter-v2", "object": {"kind": "ruleset", "name": "filter"},
   "spec": {"sql": "CREATE RULE ..."}, "selector": "site=plant2",
   "waves": [{"name": "canary", "selector": "ring=canary"}, {"name": "w2", "percent": 25}, {"name": "all", "percent": 100}],
   "soak": "10m", "deadline": "5m", "gates": {"maxFailedPercent": 2, "maxFailed": 1}, "autoRollback": true}

Examples:
  outpost-server rollouts create -f filter-v2.json
  outpost-server rollouts list
  outpost-server rollouts get filter-v2
  outpost-server rollouts pause filter-v2 --resource-version 812
  outpost-server rollouts rollback filter-v2
`

func runRollouts(ctx context.Context, args []string) int {
	subs := map[string]func(context.Context, []string) int{"create": rolloutsCreate, "list": rolloutsList, "get": rolloutsGet}
	for _, a := range []string{server.ActionPause, server.ActionResume, server.ActionAbort, server.ActionRollback} {
		subs[a] = func(ctx context.Context, args []string) int { return rolloutsAction(ctx, a, args) }
	}
	return subcommands(ctx, "rollouts", args, subs, rolloutsHelp)
}

// lineCol turns a byte offset of b into line:column (1-based).
func lineCol(b []byte, off int64) string {
	off = min(off, int64(len(b)))
	line := 1 + bytes.Count(b[:off], []byte("\n"))
	col := off - int64(bytes.LastIndexByte(b[:off], '\n'))
	return fmt.Sprintf("%d:%d", line, col)
}

// readRollout reads and strictly decodes a rollout file; errors say
// FILE:LINE:COL or the field.
func readRollout(path string) (server.RolloutRequest, error) {
	var req server.RolloutRequest
	var b []byte
	var err error
	if path == "-" {
		b, err = io.ReadAll(io.LimitReader(os.Stdin, 1<<20))
	} else {
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return req, fmt.Errorf("%w: -f: %v", errUsage, err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			return req, fmt.Errorf("%w: %s:%s: %v", errUsage, path, lineCol(b, se.Offset), se)
		case errors.As(err, &te):
			return req, fmt.Errorf("%w: %s:%s: field %s: %s is not allowed here (want %s)", errUsage, path, lineCol(b, te.Offset), te.Field, te.Value, te.Type)
		}
		return req, fmt.Errorf("%w: %s: %v", errUsage, path, err)
	}
	return req, nil
}

func rolloutsCreate(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("rollouts create", flag.ContinueOnError)
	var a apiFlags
	a.register(fs)
	file := fs.String("f", "", "the rollout as JSON (- = stdin)")
	fs.Usage = func() { fmt.Fprint(fs.Output(), rolloutsHelp+"\nFlags:\n"); fs.PrintDefaults() }
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if *file == "" {
		return fail("rollouts create", fmt.Errorf("%w: -f FILE is required", errUsage))
	}
	req, err := readRollout(*file)
	if err != nil {
		return fail("rollouts create", err)
	}
	var r server.Rollout
	if err := a.call(ctx, "POST", "/api/v1/rollouts", req, &r); err != nil {
		return fail("rollouts create", err)
	}
	if !a.json {
		fmt.Printf("rollout %s: %s/%s revision %d -> %d, %d waves, %s (resourceVersion %d)\n", r.Name, r.Object.Kind, r.Object.Name,
			r.FromRevision, r.ToRevision, len(r.Waves), r.State, r.ResourceVersion)
	}
	return exitOK
}

func waveSummary(r server.Rollout) string {
	var parts []string
	for _, w := range r.Waves {
		parts = append(parts, fmt.Sprintf("%s:%s %d/%d", w.Name, w.State, w.Applied, w.Targets))
	}
	return strings.Join(parts, " ")
}

func rolloutsList(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("rollouts list", flag.ContinueOnError)
	var a apiFlags
	a.register(fs)
	if code, ok := parse(fs, args); !ok {
		return code
	}
	var list server.RolloutList
	if err := a.call(ctx, "GET", "/api/v1/rollouts", nil, &list); err != nil {
		return fail("rollouts list", err)
	}
	if a.json {
		return exitOK
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tOBJECT\tREVISIONS\tSTATE\tWAVES\tRV")
	for _, r := range list.Items {
		fmt.Fprintf(w, "%s\t%s/%s\t%d->%d\t%s\t%s\t%d\n", r.Name, r.Object.Kind, r.Object.Name, r.FromRevision, r.ToRevision, r.State, waveSummary(r), r.ResourceVersion)
	}
	w.Flush()
	return exitOK
}

func rolloutsGet(ctx context.Context, args []string) int {
	a, pos, code, ok := apiArgs("rollouts get", args, 1, "want the rollout's NAME")
	if !ok {
		return code
	}
	var v any
	if err := a.call(ctx, "GET", "/api/v1/rollouts/"+url.PathEscape(pos[0]), nil, &v); err != nil {
		return fail("rollouts get", err)
	}
	if !a.json {
		printJSON(v)
	}
	return exitOK
}

func rolloutsAction(ctx context.Context, action string, args []string) int {
	fs := flag.NewFlagSet("rollouts "+action, flag.ContinueOnError)
	var a apiFlags
	a.register(fs)
	rv := fs.Int64("resource-version", 0, "act only if the rollout is still at this resourceVersion (409 otherwise); default: its current one")
	fs.Usage = func() { fmt.Fprint(fs.Output(), rolloutsHelp+"\nFlags:\n"); fs.PrintDefaults() }
	pos, code, ok := interspersed(fs, args)
	if !ok {
		return code
	}
	if len(pos) != 1 {
		return fail("rollouts "+action, fmt.Errorf("%w: want the rollout's NAME", errUsage))
	}
	path := "/api/v1/rollouts/" + url.PathEscape(pos[0])
	if *rv == 0 {
		var cur server.Rollout
		quiet := a
		quiet.json = false
		if err := quiet.call(ctx, "GET", path, nil, &cur); err != nil {
			return fail("rollouts "+action, err)
		}
		*rv = cur.ResourceVersion
	}
	var r server.Rollout
	if err := a.call(ctx, "POST", path+"/"+action, server.ActionRequest{ResourceVersion: *rv}, &r); err != nil {
		return fail("rollouts "+action, err)
	}
	if !a.json {
		fmt.Printf("rollout %s: %s (resourceVersion %d)", r.Name, r.State, r.ResourceVersion)
		if r.Reason != "" {
			fmt.Printf(": %s", r.Reason)
		}
		fmt.Println()
	}
	return exitOK
}
