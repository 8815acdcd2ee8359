package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/url"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/selector"
	"github.com/outpost-edge/outpost/internal/fleet/server"
	"github.com/outpost-edge/outpost/internal/fleet/store"
)

func init() {
	register(&command{name: "gateways", summary: "list, inspect, label, revoke and delete gateways", run: runGateways})
}

const gatewaysHelp = `Usage:
  outpost-server gateways list [-l SELECTOR]
  outpost-server gateways get ID
  outpost-server gateways label (ID | -l SELECTOR) key=value... key-...
  outpost-server gateways revoke ID
  outpost-server gateways delete (ID | -l SELECTOR)

Selectors are Kubernetes-style: site=plant2, line!=3, env in (prod,staging),
tier notin (test), gpu (has the label), !legacy (has not); comma = AND.
'revoke' refuses the gateway's next request and closes its open streams;
'delete' removes it from the registry (it can enroll again with a new token).

Examples:
  outpost-server gateways list -l 'site=plant2,line in (3,4)'
  outpost-server gateways get gw-17
  outpost-server gateways label -l site=plant2 ring=canary
  outpost-server gateways label gw-17 ring-
  outpost-server gateways revoke gw-17
`

func runGateways(ctx context.Context, args []string) int {
	return subcommands(ctx, "gateways", args, map[string]func(context.Context, []string) int{
		"list": gatewaysList, "get": gatewaysGet, "label": gatewaysLabel, "revoke": gatewaysRevoke, "delete": gatewaysDelete,
	}, gatewaysHelp)
}

func labelString(l map[string]string) string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + l[k]
	}
	return strings.Join(parts, ",")
}

// interspersed parses flags that may come after positional arguments.
func interspersed(fs *flag.FlagSet, args []string) ([]string, int, bool) {
	var pos []string
	for {
		if code, ok := parse(fs, args); !ok {
			return nil, code, false
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, 0, true
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func listGateways(ctx context.Context, a *apiFlags, sel string) ([]store.Gateway, error) {
	if _, err := selector.Parse(sel); err != nil {
		return nil, fmt.Errorf("%w: -l: %v", errUsage, err)
	}
	var gws []store.Gateway
	err := a.call(ctx, "GET", "/api/v1/gateways?selector="+url.QueryEscape(sel), nil, &gws)
	return gws, err
}

func gatewaysList(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("gateways list", flag.ContinueOnError)
	var a apiFlags
	a.register(fs)
	sel := fs.String("l", "", "label selector")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	gws, err := listGateways(ctx, &a, *sel)
	if err != nil {
		return fail("gateways list", err)
	}
	if a.json {
		return exitOK
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tCONNECTED\tLAST SEEN\tAPPLIED RV\tHEALTH\tLABELS")
	for _, g := range gws {
		state := fmt.Sprint(g.Connected)
		if g.Revoked {
			state = "revoked"
		}
		seen := "-"
		if !g.LastSeen.IsZero() {
			seen = time.Since(g.LastSeen).Round(time.Second).String() + " ago"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\n", g.ID, state, seen, g.Status.AppliedResourceVersion, orDash(g.Status.Health), labelString(g.Labels))
	}
	w.Flush()
	return exitOK
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func gatewaysGet(ctx context.Context, args []string) int {
	a, pos, code, ok := apiArgs("gateways get", args, 1, "want one gateway id")
	if !ok {
		return code
	}
	var g json.RawMessage
	if err := a.call(ctx, "GET", "/api/v1/gateways/"+url.PathEscape(pos[0]), nil, &g); err != nil {
		return fail("gateways get", err)
	}
	if !a.json {
		var v any
		json.Unmarshal(g, &v)
		out, _ := json.MarshalIndent(v, "", "  ")
		fmt.Println(string(out))
	}
	return exitOK
}

// targets resolves ID or -l SELECTOR to gateway ids.
func targets(ctx context.Context, a *apiFlags, pos []string, sel string, set bool) ([]string, []string, error) {
	if set {
		gws, err := listGateways(ctx, a, sel)
		if err != nil {
			return nil, nil, err
		}
		ids := make([]string, len(gws))
		for i, g := range gws {
			ids[i] = g.ID
		}
		return ids, pos, nil
	}
	if len(pos) == 0 {
		return nil, nil, fmt.Errorf("%w: name a gateway id or -l SELECTOR", errUsage)
	}
	return pos[:1], pos[1:], nil
}

func gatewaysLabel(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("gateways label", flag.ContinueOnError)
	var a apiFlags
	a.register(fs)
	sel := fs.String("l", "", "label selector: change every matching gateway")
	pos, code, ok := interspersed(fs, args)
	if !ok {
		return code
	}
	selSet := false
	fs.Visit(func(f *flag.Flag) { selSet = selSet || f.Name == "l" })
	ids, rest, err := targets(ctx, &a, pos, *sel, selSet)
	if err != nil {
		return fail("gateways label", err)
	}
	ch := server.LabelChange{Set: map[string]string{}}
	for _, arg := range rest {
		if k, ok := strings.CutSuffix(arg, "-"); ok && !strings.Contains(arg, "=") {
			ch.Remove = append(ch.Remove, k)
			continue
		}
		k, v, ok := strings.Cut(arg, "=")
		if !ok {
			return fail("gateways label", fmt.Errorf("%w: %q: want key=value or key-", errUsage, arg))
		}
		if err := selector.ValidateLabel(k, v); err != nil {
			return fail("gateways label", fmt.Errorf("%w: %v", errUsage, err))
		}
		ch.Set[k] = v
	}
	if len(ch.Set) == 0 && len(ch.Remove) == 0 {
		return fail("gateways label", fmt.Errorf("%w: no label change given", errUsage))
	}
	for _, id := range ids {
		var g store.Gateway
		if err := a.call(ctx, "POST", "/api/v1/gateways/"+url.PathEscape(id)+"/labels", ch, &g); err != nil {
			return fail("gateways label", fmt.Errorf("%s: %w", id, err))
		}
		if !a.json {
			fmt.Printf("%s\t%s\n", g.ID, labelString(g.Labels))
		}
	}
	return exitOK
}

func gatewaysRevoke(ctx context.Context, args []string) int {
	return gatewaysAction(ctx, "revoke", args, func(a *apiFlags, id string) error {
		return a.call(ctx, "POST", "/api/v1/gateways/"+url.PathEscape(id)+"/revoke", nil, nil)
	})
}

func gatewaysDelete(ctx context.Context, args []string) int {
	return gatewaysAction(ctx, "delete", args, func(a *apiFlags, id string) error {
		return a.call(ctx, "DELETE", "/api/v1/gateways/"+url.PathEscape(id), nil, nil)
	})
}

func gatewaysAction(ctx context.Context, name string, args []string, do func(*apiFlags, string) error) int {
	fs := flag.NewFlagSet("gateways "+name, flag.ContinueOnError)
	var a apiFlags
	a.register(fs)
	sel := fs.String("l", "", "label selector: every matching gateway")
	pos, code, ok := interspersed(fs, args)
	if !ok {
		return code
	}
	selSet := false
	fs.Visit(func(f *flag.Flag) { selSet = selSet || f.Name == "l" })
	ids, _, err := targets(ctx, &a, pos, *sel, selSet)
	if err != nil {
		return fail("gateways "+name, err)
	}
	for _, id := range ids {
		if err := do(&a, id); err != nil {
			return fail("gateways "+name, fmt.Errorf("%s: %w", id, err))
		}
		fmt.Printf("%s: %s done\n", id, name)
	}
	return exitOK
}
