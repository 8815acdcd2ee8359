package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/url"
	"os"
	"text/tabwriter"

	"github.com/outpost-edge/outpost/internal/fleet/twin"
)

func init() {
	register(&command{name: "twins", summary: "list, show and set device twins (desired/reported device properties)", run: runTwins})
}

const twinsHelp = `Usage:
  outpost-server twins list GATEWAY
  outpost-server twins get GATEWAY DEVICE
  outpost-server twins set GATEWAY DEVICE --desired JSON [--version N]
  outpost-server twins delete GATEWAY DEVICE

A device twin holds, per device behind a gateway, the desired properties
(set here) and the reported ones (sent by the device over MQTT on the
gateway), each with a version. 'set' merges --desired into the desired
state (JSON merge patch: a key set to null is removed) and streams it to the
gateway, which publishes the difference to the device on
$outpost/twin/DEVICE/update/delta. With --version the change is made only if
the desired state is still at that version (0 = none yet); otherwise the
answer is a conflict (exit 1) and nothing changes. 'delete' removes the
twin from the server and, once the change reaches it, from the gateway; a
device that reports again starts a new twin. See docs/twins.md.

Examples:
  outpost-server twins set gw-17 pump-3 --desired '{"speed": 1200, "mode": "eco"}'
  outpost-server twins set gw-17 pump-3 --desired '{"mode": null}' --version 4
  outpost-server twins list gw-17
  outpost-server twins get gw-17 pump-3 --json
  outpost-server twins delete gw-17 pump-3
`

func runTwins(ctx context.Context, args []string) int {
	return subcommands(ctx, "twins", args, map[string]func(context.Context, []string) int{
		"list": twinsList, "get": twinsGet, "set": twinsSet, "delete": twinsDelete,
	}, twinsHelp)
}

func twinPath(gw string, dev ...string) string {
	p := "/api/v1/gateways/" + url.PathEscape(gw) + "/twins"
	for _, d := range dev {
		p += "/" + url.PathEscape(d)
	}
	return p
}

func twinsList(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("twins list", flag.ContinueOnError)
	var a apiFlags
	a.register(fs)
	fs.Usage = func() { fmt.Fprint(fs.Output(), twinsHelp+"\nFlags:\n"); fs.PrintDefaults() }
	pos, code, ok := interspersed(fs, args)
	if !ok {
		return code
	}
	if len(pos) != 1 {
		return fail("twins list", fmt.Errorf("%w: want GATEWAY", errUsage))
	}
	var ts []twin.Twin
	if err := a.call(ctx, "GET", twinPath(pos[0]), nil, &ts); err != nil {
		return fail("twins list", err)
	}
	if a.json {
		return exitOK
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "DEVICE\tDESIRED\tREPORTED\tIN SYNC\tREPORTED AT")
	for _, t := range ts {
		at := "-"
		if !t.Metadata.ReportedUpdated.IsZero() {
			at = t.Metadata.ReportedUpdated.Format("2006-01-02T15:04:05Z")
		}
		sync := "yes"
		if t.Delta != nil {
			sync = "no"
		}
		fmt.Fprintf(w, "%s\tv%d\tv%d\t%s\t%s\n", t.Device, t.DesiredVersion, t.ReportedVersion, sync, at)
	}
	w.Flush()
	return exitOK
}

func twinsGet(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("twins get", flag.ContinueOnError)
	var a apiFlags
	a.register(fs)
	fs.Usage = func() { fmt.Fprint(fs.Output(), twinsHelp+"\nFlags:\n"); fs.PrintDefaults() }
	pos, code, ok := interspersed(fs, args)
	if !ok {
		return code
	}
	if len(pos) != 2 {
		return fail("twins get", fmt.Errorf("%w: want GATEWAY DEVICE", errUsage))
	}
	var v any
	if err := a.call(ctx, "GET", twinPath(pos[0], pos[1]), nil, &v); err != nil {
		return fail("twins get", err)
	}
	if !a.json {
		printJSON(v)
	}
	return exitOK
}

func twinsSet(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("twins set", flag.ContinueOnError)
	var a apiFlags
	a.register(fs)
	desired := fs.String("desired", "", "merge patch for the desired state, a JSON object (null removes a key)")
	version := fs.Int64("version", -1, "only if the desired state is at this version (0 = none yet; -1 = no check)")
	fs.Usage = func() { fmt.Fprint(fs.Output(), twinsHelp+"\nFlags:\n"); fs.PrintDefaults() }
	pos, code, ok := interspersed(fs, args)
	if !ok {
		return code
	}
	if len(pos) != 2 {
		return fail("twins set", fmt.Errorf("%w: want GATEWAY DEVICE", errUsage))
	}
	if !twin.ValidDevice(pos[1]) {
		return fail("twins set", fmt.Errorf("%w: device %q: must be 1-128 letters, digits, _ . -", errUsage, pos[1]))
	}
	if !json.Valid([]byte(*desired)) {
		return fail("twins set", fmt.Errorf("%w: --desired: not valid JSON (want an object such as '{\"speed\": 1200}')", errUsage))
	}
	body := map[string]any{"desired": json.RawMessage(*desired)}
	if *version >= 0 {
		body["version"] = *version
	}
	b, _ := json.Marshal(body)
	if _, err := twin.ParseDesiredPatch(b); err != nil || *desired == "" {
		if err == nil {
			err = fmt.Errorf("--desired is required")
		}
		return fail("twins set", fmt.Errorf("%w: --desired: %v", errUsage, err))
	}
	var t twin.Twin
	if err := a.call(ctx, "PATCH", twinPath(pos[0], pos[1]), json.RawMessage(b), &t); err != nil {
		return fail("twins set", err)
	}
	if !a.json {
		fmt.Printf("%s/%s desired version %d (resourceVersion %d)\n", t.Gateway, t.Device, t.DesiredVersion, t.ResourceVersion)
	}
	return exitOK
}

func twinsDelete(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("twins delete", flag.ContinueOnError)
	var a apiFlags
	a.register(fs)
	fs.Usage = func() { fmt.Fprint(fs.Output(), twinsHelp+"\nFlags:\n"); fs.PrintDefaults() }
	pos, code, ok := interspersed(fs, args)
	if !ok {
		return code
	}
	if len(pos) != 2 {
		return fail("twins delete", fmt.Errorf("%w: want GATEWAY DEVICE", errUsage))
	}
	if !twin.ValidDevice(pos[1]) {
		return fail("twins delete", fmt.Errorf("%w: device %q: must be 1-128 letters, digits, _ . -", errUsage, pos[1]))
	}
	if err := a.call(ctx, "DELETE", twinPath(pos[0], pos[1]), nil, nil); err != nil {
		return fail("twins delete", err)
	}
	if !a.json {
		fmt.Printf("%s/%s deleted\n", pos[0], pos[1])
	}
	return exitOK
}
