package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/selector"
	"github.com/outpost-edge/outpost/internal/fleet/server"
	"github.com/outpost-edge/outpost/internal/fleet/store"
)

func init() {
	register(&command{name: "token", summary: "create and list single-use gateway bootstrap tokens", run: runToken})
	register(&command{name: "apitoken", summary: "create API tokens with a role (viewer, operator, admin)", run: runAPIToken})
}

const tokenHelp = `Usage:
  outpost-server token create [--labels k=v,...] [--expires 24h]
  outpost-server token list

A bootstrap token lets one gateway enroll once ('outpost enroll'); the gateway
gets the token's labels. Tokens are stored hashed, are single-use and expire.

Examples:
  outpost-server token create --labels site=plant2,line=3 --expires 24h
  outpost-server token list
`

func runToken(ctx context.Context, args []string) int {
	return subcommands(ctx, "token", args, map[string]func(context.Context, []string) int{
		"create": tokenCreate, "list": tokenList,
	}, tokenHelp)
}

func tokenCreate(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("token create", flag.ContinueOnError)
	var a apiFlags
	a.register(fs)
	labels := fs.String("labels", "", "labels the gateway gets, k=v,k2=v2")
	expires := fs.Duration("expires", 24*time.Hour, "lifetime (at most 720h)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), helpText("outpost-server token create [--labels k=v,...] [--expires 24h]",
			"Create a single-use bootstrap token; it is printed once.",
			"outpost-server token create --labels site=plant2,line=3 --expires 24h"))
		fs.PrintDefaults()
	}
	if code, ok := parse(fs, args); !ok {
		return code
	}
	l, err := selector.ParseLabels(*labels)
	if err != nil {
		return fail("token create", fmt.Errorf("%w: --labels: %v", errUsage, err))
	}
	var resp server.TokenResponse
	if err := a.call(ctx, "POST", "/api/v1/tokens", server.TokenRequest{Labels: l, Expires: expires.String()}, &resp); err != nil {
		return fail("token create", err)
	}
	if a.json {
		return exitOK
	}
	fmt.Printf("%s\n", resp.Token)
	fmt.Fprintf(os.Stderr, "single use, expires %s; on the gateway:\n  outpost enroll --server %s --ca %s --token %s\n",
		resp.Expires.Format(time.RFC3339), a.server, a.ca, resp.Token)
	return exitOK
}

func tokenList(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("token list", flag.ContinueOnError)
	var a apiFlags
	a.register(fs)
	if code, ok := parse(fs, args); !ok {
		return code
	}
	var ts []store.BootstrapToken
	if err := a.call(ctx, "GET", "/api/v1/tokens", nil, &ts); err != nil {
		return fail("token list", err)
	}
	if a.json {
		return exitOK
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tLABELS\tEXPIRES\tUSED BY")
	for _, t := range ts {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", t.ID, labelString(t.Labels), t.Expires.Format(time.RFC3339), t.UsedBy)
	}
	w.Flush()
	return exitOK
}

func runAPIToken(ctx context.Context, args []string) int {
	return subcommands(ctx, "apitoken", args, map[string]func(context.Context, []string) int{"create": apiTokenCreate},
		`Usage:
  outpost-server apitoken create --role viewer|operator|admin --name NAME

Create an API token. viewer reads; operator also changes labels and desired
state; admin also manages tokens and revokes or deletes gateways.

Examples:
  outpost-server apitoken create --role viewer --name grafana
`)
}

func apiTokenCreate(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("apitoken create", flag.ContinueOnError)
	var a apiFlags
	a.register(fs)
	role := fs.String("role", "viewer", "viewer, operator or admin")
	name := fs.String("name", "", "what the token is for")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	var resp map[string]string
	if err := a.call(ctx, "POST", "/api/v1/apitokens", server.APITokenRequest{Role: *role, Name: *name}, &resp); err != nil {
		return fail("apitoken create", err)
	}
	if !a.json {
		fmt.Println(resp["token"])
	}
	return exitOK
}
