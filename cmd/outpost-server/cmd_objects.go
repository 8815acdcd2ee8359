package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/url"
	"os"
	"text/tabwriter"

	"github.com/outpost-edge/outpost/internal/fleet/proto"
	"github.com/outpost-edge/outpost/internal/fleet/selector"
	"github.com/outpost-edge/outpost/internal/fleet/server"
)

func init() {
	register(&command{name: "objects", summary: "put, list, get and delete desired-state objects (rule sets, config fragments, ...)", run: runObjects})
}

const objectsHelp = `Usage:
  outpost-server objects put --kind KIND --id ID (--file F | --spec JSON) [--name SLOT] [-l SELECTOR [--priority N] | --gateway ID]
  outpost-server objects list [--kind KIND]
  outpost-server objects get KIND ID
  outpost-server objects delete KIND ID
  outpost-server objects desired GATEWAY

Kinds: ruleset (--file rules.sql), config (--file fragment.yaml), component,
agentversion, function (--spec JSON: {"function": NAME, "version": N}, a
function published with outpost functions publish and release push). Every change gets the next global
resourceVersion. Layers: an object without -l/--gateway is the fleet default;
-l objects are selector groups (higher --priority wins); --gateway is one
gateway's own. Objects with the same --name (default: the id) fill the same
slot; each gateway gets the highest layer that matches it.

Examples:
  outpost-server objects put --kind ruleset --id cold --file cold.sql
  outpost-server objects put --kind ruleset --id cold-plant2 --name cold --file cold2.sql -l site=plant2 --priority 10
  outpost-server objects put --kind function --id anomaly --spec '{"function": "anomaly", "version": 2}' -l ring=canary
  outpost-server objects desired gw-17
  outpost-server objects delete ruleset cold-plant2
`

func runObjects(ctx context.Context, args []string) int {
	return subcommands(ctx, "objects", args, map[string]func(context.Context, []string) int{
		"put": objectsPut, "list": objectsList, "get": objectsGet, "delete": objectsDelete, "desired": objectsDesired,
	}, objectsHelp)
}

func objectsPut(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("objects put", flag.ContinueOnError)
	var a apiFlags
	a.register(fs)
	kind := fs.String("kind", "", "object kind: ruleset, config, component, agentversion, function")
	id := fs.String("id", "", "object id (unique per kind)")
	name := fs.String("name", "", "slot name on the gateway (default: the id; a rule set becomes fleet-NAME.sql)")
	file := fs.String("file", "", "ruleset: the SQL file; config: the YAML fragment")
	spec := fs.String("spec", "", "the spec as a JSON object (instead of --file)")
	sel := fs.String("l", "", "target: label selector (a selector group)")
	prio := fs.Int("priority", 0, "priority among selector groups")
	gw := fs.String("gateway", "", "target: one gateway")
	rv := fs.Int64("resource-version", 0, "only if the stored object is at this resourceVersion (-1: only create)")
	fs.Usage = func() { fmt.Fprint(fs.Output(), objectsHelp+"\nFlags:\n"); fs.PrintDefaults() }
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if _, err := selector.Parse(*sel); err != nil {
		return fail("objects put", fmt.Errorf("%w: -l: %v", errUsage, err))
	}
	var raw json.RawMessage
	switch {
	case *file != "" && *spec != "":
		return fail("objects put", fmt.Errorf("%w: --file or --spec, not both", errUsage))
	case *file != "":
		b, err := os.ReadFile(*file)
		if err != nil {
			return fail("objects put", fmt.Errorf("%w: --file: %v", errUsage, err))
		}
		switch *kind {
		case proto.KindRuleSet:
			raw, _ = json.Marshal(map[string]string{"sql": string(b)})
		case proto.KindConfig:
			raw, _ = json.Marshal(map[string]string{"yaml": string(b)})
		default:
			raw = b
		}
	case *spec != "":
		raw = json.RawMessage(*spec)
	default:
		return fail("objects put", fmt.Errorf("%w: --file or --spec is required", errUsage))
	}
	if *kind == "" || *id == "" {
		return fail("objects put", fmt.Errorf("%w: --kind and --id are required", errUsage))
	}
	body := server.ObjectPut{Name: *name, Target: proto.Target{Selector: *sel, Priority: *prio, Gateway: *gw}, Spec: raw, ResourceVersion: *rv}
	var o proto.Object
	if err := a.call(ctx, "PUT", "/api/v1/objects/"+url.PathEscape(*kind)+"/"+url.PathEscape(*id), body, &o); err != nil {
		return fail("objects put", err)
	}
	if !a.json {
		fmt.Printf("%s/%s resourceVersion %d\n", o.Kind, o.ID, o.ResourceVersion)
	}
	return exitOK
}

func objectsList(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("objects list", flag.ContinueOnError)
	var a apiFlags
	a.register(fs)
	kind := fs.String("kind", "", "only this kind")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	var objs []proto.Object
	if err := a.call(ctx, "GET", "/api/v1/objects?kind="+url.QueryEscape(*kind), nil, &objs); err != nil {
		return fail("objects list", err)
	}
	if a.json {
		return exitOK
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "KIND\tID\tSLOT\tTARGET\tRV")
	for _, o := range objs {
		target := "fleet default"
		switch {
		case o.Target.Gateway != "":
			target = "gateway " + o.Target.Gateway
		case o.Target.Selector != "":
			target = fmt.Sprintf("%s (priority %d)", o.Target.Selector, o.Target.Priority)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\n", o.Kind, o.ID, o.Name, target, o.ResourceVersion)
	}
	w.Flush()
	return exitOK
}

func printJSON(v any) {
	out, _ := json.MarshalIndent(v, "", "  ")
	fmt.Println(string(out))
}

func objectsGet(ctx context.Context, args []string) int {
	a, pos, code, ok := apiArgs("objects get", args, 2, "want KIND ID")
	if !ok {
		return code
	}
	var v any
	if err := a.call(ctx, "GET", "/api/v1/objects/"+url.PathEscape(pos[0])+"/"+url.PathEscape(pos[1]), nil, &v); err != nil {
		return fail("objects get", err)
	}
	if !a.json {
		printJSON(v)
	}
	return exitOK
}

func objectsDelete(ctx context.Context, args []string) int {
	a, pos, code, ok := apiArgs("objects delete", args, 2, "want KIND ID")
	if !ok {
		return code
	}
	var v map[string]int64
	if err := a.call(ctx, "DELETE", "/api/v1/objects/"+url.PathEscape(pos[0])+"/"+url.PathEscape(pos[1]), nil, &v); err != nil {
		return fail("objects delete", err)
	}
	if !a.json {
		fmt.Printf("%s/%s deleted at resourceVersion %d\n", pos[0], pos[1], v["resourceVersion"])
	}
	return exitOK
}

func objectsDesired(ctx context.Context, args []string) int {
	a, pos, code, ok := apiArgs("objects desired", args, 1, "want a gateway id")
	if !ok {
		return code
	}
	var v any
	if err := a.call(ctx, "GET", "/api/v1/gateways/"+url.PathEscape(pos[0])+"/desired", nil, &v); err != nil {
		return fail("objects desired", err)
	}
	if !a.json {
		printJSON(v)
	}
	return exitOK
}
