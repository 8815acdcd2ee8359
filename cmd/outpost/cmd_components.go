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
	"time"

	"github.com/outpost-edge/outpost/internal/agent"
	"github.com/outpost-edge/outpost/internal/supervisor"
	"github.com/outpost-edge/outpost/internal/supervisor/recipe"
)

func init() {
	register(&command{name: "components", summary: "list, inspect, restart and read logs of supervised components", run: runComponents})
}

func runComponents(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("components", flag.ContinueOnError)
	apiF := addAPIFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	lines := fs.Int("n", 100, "logs: number of lines")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), helpText("outpost components [flags] list|status NAME|restart NAME|logs NAME|check DIR",
			`Inspect and control the components supervised by a running agent, over its
local HTTP API (/api/v1/components). "check" validates a recipes directory
offline (no agent needed) and exits 2 if any recipe is invalid; with
--config it also applies the agent's container policy (mounts, privileged).
It warns (exit 0) about costly choices: an exec health check on a container
more often than once a minute.

States: waiting, installing, install_failed, starting, running, healthy,
unhealthy, stopping, stopped, finished, backoff, broken, invalid.`,
			"outpost components list",
			"outpost components status temp-sensor",
			"outpost components restart temp-sensor",
			"outpost components logs -n 50 temp-sensor",
			"outpost components check /etc/outpost/components",
			"outpost components check --config /etc/outpost/outpost.yaml /etc/outpost/components"))
		fs.PrintDefaults()
	}
	// Flags may come before or after the subcommand.
	var pos []string
	rest := args
	for {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return exitOK
			}
			return exitUsage
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if len(pos) == 0 {
		fs.Usage()
		return exitUsage
	}
	needName := func() (string, bool) {
		if len(pos) != 2 {
			fmt.Fprintf(os.Stderr, "outpost components %s: expected one component name\n", pos[0])
			return "", false
		}
		return pos[1], true
	}
	var c *apiClient
	if pos[0] != "check" {
		var err error
		if c, err = apiF.client(); err != nil {
			fmt.Fprintln(os.Stderr, "outpost components:", err)
			return exitUsage
		}
	}
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "outpost components:", err)
		return exitCode(err)
	}
	switch pos[0] {
	case "list":
		var sts []supervisor.Status
		if err := c.call(ctx, http.MethodGet, "/api/v1/components", &sts); err != nil {
			return fail(err)
		}
		if *asJSON {
			return printJSON(sts)
		}
		printComponentTable(os.Stdout, sts)
	case "status":
		name, ok := needName()
		if !ok {
			return exitUsage
		}
		var st supervisor.Status
		if err := c.call(ctx, http.MethodGet, "/api/v1/components/"+url.PathEscape(name), &st); err != nil {
			return fail(err)
		}
		if *asJSON {
			return printJSON(st)
		}
		printComponentStatus(os.Stdout, st)
	case "restart":
		name, ok := needName()
		if !ok {
			return exitUsage
		}
		if err := c.call(ctx, http.MethodPost, "/api/v1/components/"+url.PathEscape(name)+"/restart", nil); err != nil {
			return fail(err)
		}
		fmt.Printf("restarting %s\n", name)
	case "logs":
		name, ok := needName()
		if !ok {
			return exitUsage
		}
		body, err := c.stream(ctx, http.MethodGet, fmt.Sprintf("/api/v1/components/%s/logs?lines=%d", url.PathEscape(name), *lines))
		if err != nil {
			return fail(err)
		}
		defer body.Close()
		if _, err := io.Copy(os.Stdout, body); err != nil {
			return fail(err)
		}
	case "check":
		if len(pos) != 2 {
			fmt.Fprintln(os.Stderr, "outpost components check: expected a recipes directory")
			return exitUsage
		}
		// check applies the agent's container policy only from a config
		// named on the command line (--config).
		cfgPath := ""
		fs.Visit(func(f *flag.Flag) {
			if f.Name == "config" {
				cfgPath = apiF.config
			}
		})
		return checkRecipes(pos[1], cfgPath)
	default:
		fmt.Fprintf(os.Stderr, "outpost components: unknown subcommand %q\n", pos[0])
		fs.Usage()
		return exitUsage
	}
	return exitOK
}

func printJSON(v any) int {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return exitFailure
	}
	return exitOK
}

func printComponentTable(w io.Writer, sts []supervisor.Status) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tVERSION\tSTATE\tPID\tRESTARTS\tSINCE\tREASON")
	for _, st := range sts {
		pid := "-"
		if st.PID != 0 {
			pid = fmt.Sprint(st.PID)
		}
		reason := st.Reason
		if st.Error != "" {
			reason = st.Error
		}
		if i := strings.IndexByte(reason, '\n'); i >= 0 {
			reason = reason[:i] + " ..."
		}
		since := "-"
		if !st.Since.IsZero() {
			since = time.Since(st.Since).Round(time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", st.Name, st.Version, st.State, pid, st.Restarts, since, reason)
	}
	tw.Flush()
}

func printComponentStatus(w io.Writer, st supervisor.Status) {
	p := func(k string, v any) { fmt.Fprintf(w, "%-10s %v\n", k+":", v) }
	p("name", st.Name)
	p("version", st.Version)
	p("state", st.State)
	if !st.Since.IsZero() {
		p("since", st.Since.Format(time.RFC3339)+" ("+time.Since(st.Since).Round(time.Second).String()+" ago)")
	}
	if st.Reason != "" {
		p("reason", st.Reason)
	}
	if st.PID != 0 {
		p("pid", st.PID)
	}
	if st.Health != "" {
		p("health", st.Health)
	}
	p("restarts", st.Restarts)
	if st.LastExit != nil {
		p("last exit", st.LastExit.Description+" at "+st.LastExit.At.Format(time.RFC3339))
	}
	if len(st.DependsOn) > 0 {
		p("depends", strings.Join(st.DependsOn, ", "))
	}
	if l := st.Limits; l != nil && (l.Memory != 0 || l.CPU != 0 || l.Pids != 0 || l.Note != "") {
		p("limits", fmt.Sprintf("memory=%d cpu=%g pids=%d enforced=%v %s", l.Memory, l.CPU, l.Pids, l.Enforced, l.Note))
	}
	if st.Memory != 0 {
		p("memory", fmt.Sprintf("%.1f MiB", float64(st.Memory)/(1<<20)))
	}
	if c := st.Container; c != nil {
		p("container", fmt.Sprintf("%s image=%s adopted=%v cpu=%.2fs via %s", c.ID, c.Image, c.Adopted, c.CPUSeconds, c.Runtime))
	}
	if st.Recipe != "" {
		p("recipe", st.Recipe)
	}
	if st.Error != "" {
		p("error", st.Error)
	}
	if st.Output != "" {
		fmt.Fprintf(w, "output:\n%s\n", st.Output)
	}
}

// checkRecipes validates a recipes directory offline; with an agent
// config it also applies the config's container policy.
func checkRecipes(dir, cfgPath string) int {
	var cc *supervisor.ContainersConfig
	if cfgPath != "" {
		cfg, err := agent.Load(cfgPath)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return exitUsage
		}
		c := supervisor.Config{}
		if cfg.Supervisor != nil {
			c = *cfg.Supervisor
		}
		c.SetDefaults()
		cc = &c.Containers
	}
	recipes, fileErrs, err := recipe.LoadDir(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return exitFailure
	}
	var msgs, warns []string
	if cc != nil {
		kept := recipes[:0]
		for _, r := range recipes {
			if err := supervisor.CheckContainerPolicy(r, *cc); err != nil {
				for _, e := range unjoin(err) {
					msgs = append(msgs, e.Error())
				}
				continue
			}
			kept = append(kept, r)
		}
		recipes = kept
	}
	for _, r := range recipes {
		for _, w := range supervisor.ContainerWarnings(r) {
			warns = append(warns, "warning: "+w.Error())
		}
	}
	g, rejected := recipe.Resolve(recipes)
	for _, e := range fileErrs {
		msgs = append(msgs, e.Error())
	}
	for _, e := range rejected {
		msgs = append(msgs, e.Error())
	}
	sort.Strings(msgs)
	sort.Strings(warns)
	for _, m := range append(msgs, warns...) {
		fmt.Fprintln(os.Stderr, m)
	}
	fmt.Printf("%d valid components (start order: %s), %d problems, %d warnings\n", g.Len(), strings.Join(g.Order(), ", "), len(msgs), len(warns))
	if len(msgs) > 0 {
		return exitUsage
	}
	return exitOK
}

// unjoin splits an errors.Join into its errors.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}
