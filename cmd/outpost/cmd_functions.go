//go:build functions

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
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/outpost-edge/outpost/internal/function"
	"github.com/outpost-edge/outpost/internal/ota/release"
	"github.com/outpost-edge/outpost/internal/ota/tuf"
)

func init() {
	register(&command{name: "functions", summary: "list, inspect, sign WebAssembly functions and show their logs", run: runFunctions})
}

const functionsUsage = `Usage:
  outpost functions list    [--url URL] [--json]
  outpost functions list    --dir DIR [--root root.json] [--json]
  outpost functions inspect DIR [--root root.json] [--json]
  outpost functions inspect DIR --root root.json --repo REPO [--json]
  outpost functions sign    DIR --keys KEYDIR [--passphrase-file FILE] [--validity 2160h]
  outpost functions publish DIR --repo REPO --keys KEYDIR [--passphrase-file FILE] [--retire-others]
  outpost functions logs    NAME [-f] [--after N] [--json] [--api URL] [--token T] [--config FILE]

WebAssembly functions (docs/functions.md): a directory with function.yaml,
the .wasm module and targets.json (the signature).

  list     the functions a running agent has loaded, with invocations,
           errors, timeouts and memory high-water mark (GET URL/functions);
           with --dir, the function directories on disk (offline)
  inspect  check one function directory offline: the manifest (errors as
           file:line:col), the module's hash, imports and exports, compile
           time, and the signature against --root; exit status 2 if bad
           (with --repo: against the repository's TUF chain instead,
           root → timestamp → snapshot → targets, as gateways verify
           fleet-delivered and functions.tuf functions)
  sign     write DIR/targets.json signed with the release targets key
           (KEYDIR/targets.key, as made by outpost release keygen)
  publish  add the function (its manifest and module, checked and
           compiled first) to the release repository REPO as the targets
           functions/NAME/VERSION/..., and sign: targets, snapshot,
           timestamp. Then outpost release push uploads it to the fleet
           server, and a fleet object of kind function
           ({"function": NAME, "version": V}) delivers it to gateways.
           --retire-others drops the function's other versions from the
           signed targets, so gateways verifying the chain refuse them
  logs     what function NAME logged (its log host call), kept by the
           agent in a ring of the last 1000 lines per function: every
           line, also those rate-limited out of the agent log; -f follows
           new lines until interrupted. Through the agent's API
           (GET /api/v1/functions/NAME/logs: --api, --token as for the
           other API commands)

Examples:
  outpost functions list
  outpost functions list --dir /var/lib/outpost/functions --root /etc/outpost/root.json
  outpost functions inspect examples/functions/anomaly
  OUTPOST_RELEASE_PASSPHRASE=... outpost functions sign ./anomaly --keys ./keys
  OUTPOST_RELEASE_PASSPHRASE=... outpost functions publish ./anomaly --repo ./repo --keys ./keys
  outpost release push --repo ./repo && outpost-server objects put --kind function --id anomaly --spec '{"function":"anomaly","version":2}' -l site=plant2
  outpost functions inspect ./anomaly --root ./repo/metadata/1.root.json --repo ./repo
  outpost functions logs anomaly
  outpost functions logs anomaly -f --api unix:///run/outpost/api.sock
`

func runFunctions(ctx context.Context, args []string) int {
	return functionsMain(ctx, args, os.Stdout, os.Stderr)
}

func functionsMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		w := stderr
		if len(args) > 0 {
			w = stdout
		}
		fmt.Fprint(w, functionsUsage)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	sub, rest := args[0], args[1:]
	fs := flag.NewFlagSet("functions "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, functionsUsage) }
	asJSON := fs.Bool("json", false, "print JSON")
	root := fs.String("root", "", "pinned release root.json to verify signatures against")
	switch sub {
	case "list":
		url := fs.String("url", "http://127.0.0.1:9100", "the agent's HTTP endpoint (telemetry.address)")
		dir := fs.String("dir", "", "list function directories on disk instead of asking the agent")
		if err := fs.Parse(rest); err != nil {
			return exitUsage
		}
		if *dir != "" {
			return functionsListDir(*dir, *root, *asJSON, stdout, stderr)
		}
		return functionsListAgent(ctx, *url, *asJSON, stdout, stderr)
	case "inspect":
		repo := fs.String("repo", "", "check against this release repository's TUF chain (REPO/metadata) instead of DIR/targets.json")
		pos, err := parseInterleaved(fs, rest)
		if err != nil {
			return exitUsage
		}
		if len(pos) != 1 {
			fmt.Fprintln(stderr, "outpost functions inspect: one function directory expected")
			return exitUsage
		}
		if *repo != "" && *root == "" {
			fmt.Fprintln(stderr, "outpost functions inspect: --repo needs --root (the pinned root the chain starts from)")
			return exitUsage
		}
		return functionsInspect(ctx, pos[0], *root, *repo, *asJSON, stdout, stderr)
	case "publish":
		repo := fs.String("repo", "", "the release repository (outpost release keygen)")
		keys := fs.String("keys", "", "its private key directory")
		passFile := fs.String("passphrase-file", "", "file holding the key passphrase (default $"+passphraseEnv+")")
		retire := fs.Bool("retire-others", false, "remove the function's other versions from the signed targets")
		pos, err := parseInterleaved(fs, rest)
		if err != nil {
			return exitUsage
		}
		if len(pos) != 1 || *repo == "" || *keys == "" {
			fmt.Fprintln(stderr, "outpost functions publish: DIR, --repo and --keys are required")
			return exitUsage
		}
		return functionsPublish(ctx, pos[0], *repo, *keys, *passFile, *retire, stdout, stderr)
	case "sign":
		keys := fs.String("keys", "", "private key directory (targets.key)")
		passFile := fs.String("passphrase-file", "", "file holding the key passphrase (default $"+passphraseEnv+")")
		validity := fs.Duration("validity", tuf.DefaultTargetsExpiry, "how long the signature stays valid")
		pos, err := parseInterleaved(fs, rest)
		if err != nil {
			return exitUsage
		}
		if len(pos) != 1 || *keys == "" {
			fmt.Fprintln(stderr, "outpost functions sign: DIR and --keys are required")
			return exitUsage
		}
		pass, err := readPassphrase(*passFile)
		if err != nil {
			fmt.Fprintln(stderr, "outpost functions sign:", err)
			return exitFailure
		}
		key, err := tuf.ReadKey(filepath.Join(*keys, tuf.RoleTargets+".key"), pass)
		if err != nil {
			fmt.Fprintln(stderr, "outpost functions sign:", err)
			return exitFailure
		}
		if err := function.Sign(pos[0], *validity, key); err != nil {
			fmt.Fprintln(stderr, "outpost functions sign:", err)
			return exitUsage
		}
		fmt.Fprintf(stdout, "signed %s (valid until %s)\n", filepath.Join(pos[0], function.SignatureFile), time.Now().Add(*validity).UTC().Format(time.RFC3339))
		return exitOK
	case "logs":
		api := addAPIFlags(fs)
		follow := fs.Bool("f", false, "follow: print new lines as they are logged, until interrupted")
		after := fs.Uint64("after", 0, "start after this line number (the seq of a line; 0: the oldest kept)")
		pos, err := parseInterleaved(fs, rest)
		if err != nil {
			return exitUsage
		}
		if len(pos) != 1 {
			fmt.Fprintln(stderr, "outpost functions logs: one function name expected")
			return exitUsage
		}
		c, err := api.client()
		if err != nil {
			fmt.Fprintln(stderr, "outpost functions logs:", err)
			return exitUsage
		}
		return functionsLogs(ctx, c, pos[0], *after, *follow, *asJSON, stdout, stderr)
	}
	fmt.Fprintf(stderr, "outpost functions: unknown subcommand %q\n\n%s", sub, functionsUsage)
	return exitUsage
}

// functionsLogs prints a function's log lines; with follow it long-polls
// the agent (wait=25s per request) until ctx ends (Ctrl-C: exit 0).
func functionsLogs(ctx context.Context, c *apiClient, name string, after uint64, follow, asJSON bool, stdout, stderr io.Writer) int {
	enc := json.NewEncoder(stdout)
	for {
		path := fmt.Sprintf("/api/v1/functions/%s/logs?after=%d", url.PathEscape(name), after)
		if follow {
			path += "&wait=25s"
		}
		body, err := c.stream(ctx, http.MethodGet, path)
		if err != nil {
			if follow && ctx.Err() != nil {
				return exitOK
			}
			fmt.Fprintln(stderr, "outpost functions logs:", err)
			return exitFailure
		}
		var page function.Logs
		err = json.NewDecoder(body).Decode(&page)
		body.Close()
		if err != nil {
			if follow && ctx.Err() != nil {
				return exitOK
			}
			fmt.Fprintln(stderr, "outpost functions logs: bad answer from the agent:", err)
			return exitFailure
		}
		if page.Lost > 0 {
			fmt.Fprintf(stderr, "(%d lines left the ring before they were read)\n", page.Lost)
		}
		for _, l := range page.Lines {
			if asJSON {
				_ = enc.Encode(l)
				continue
			}
			dev := l.Device
			if dev == "" {
				dev = "-"
			}
			fmt.Fprintf(stdout, "%s %-5s v%d %s %s\n", l.Time.UTC().Format("2006-01-02T15:04:05.000Z"), l.Level, l.Version, dev, l.Msg)
		}
		if f, ok := stdout.(interface{ Flush() error }); ok {
			_ = f.Flush()
		}
		after = page.Next
		if !follow && (len(page.Lines) == 0 || len(page.Lines) < function.LogRingSize) {
			return exitOK
		}
	}
}

func functionsListAgent(ctx context.Context, url string, asJSON bool, stdout, stderr io.Writer) int {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(url, "/")+"/functions", nil)
	if err != nil {
		fmt.Fprintln(stderr, "outpost functions list:", err)
		return exitUsage
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintln(stderr, "outpost functions list: is the agent running with functions enabled?", err)
		return exitFailure
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "outpost functions list: %s: %s\n", resp.Status, strings.TrimSpace(string(body)))
		return exitFailure
	}
	if asJSON {
		stdout.Write(body)
		return exitOK
	}
	var st struct {
		Functions []function.Status  `json:"functions"`
		Problems  []function.Problem `json:"problems"`
	}
	if err := json.Unmarshal(body, &st); err != nil {
		fmt.Fprintln(stderr, "outpost functions list:", err)
		return exitFailure
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tVERSION\tSIGNED\tDEVICES\tINVOCATIONS\tERRORS\tTIMEOUTS\tMEMORY HW\tSTATE\tDIR")
	for _, f := range st.Functions {
		var inv, errs uint64
		for _, n := range f.Stats.Invocations {
			inv += n
		}
		for _, m := range f.Stats.Errors {
			for _, n := range m {
				errs += n
			}
		}
		fmt.Fprintf(tw, "%s\t%d\t%v\t%s\t%d\t%d\t%d\t%s\t%d dev / %d B\t%s\n", f.Name, f.Version, f.Signed, devices(f.Devices),
			inv, errs, f.Stats.Timeouts, fmtBytes(f.Stats.MemoryHighWater), f.StateDevices, f.StateBytes, f.Dir)
	}
	tw.Flush()
	for _, p := range st.Problems {
		fmt.Fprintf(stdout, "refused: %s: %s\n", p.Dir, p.Err)
	}
	return exitOK
}

func devices(d map[string]function.StringList) string {
	if len(d) == 0 {
		return "all"
	}
	var s []string
	for k, v := range d {
		s = append(s, k+"="+strings.Join(v, "|"))
	}
	sort.Strings(s)
	return strings.Join(s, ",")
}

func fmtBytes(n uint64) string {
	if n >= 1<<20 {
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d KiB", n>>10)
}

// inspection is what inspect reports about one function directory.
type inspection struct {
	Dir         string             `json:"dir"`
	Manifest    *function.Manifest `json:"manifest,omitempty"`
	SHA256      string             `json:"sha256,omitempty"`
	Size        int                `json:"size,omitempty"`
	CompileTime string             `json:"compile_time,omitempty"`
	Signature   string             `json:"signature"`
	Errors      []string           `json:"errors,omitempty"`
}

// functionsPublish adds a checked function to the release repository as
// signed targets (docs/functions.md, "Delivery through the fleet").
func functionsPublish(ctx context.Context, dir, repo, keys, passFile string, retire bool, stdout, stderr io.Writer) int {
	in := inspectDir(ctx, dir, "", "")
	if len(in.Errors) > 0 {
		for _, e := range in.Errors {
			fmt.Fprintln(stderr, e)
		}
		fmt.Fprintln(stderr, "outpost functions publish: not published")
		return exitUsage
	}
	man := in.Manifest
	r, err := openRepo(repo, keys, passFile)
	if err == nil {
		err = release.CheckKeys(r, "") // a wrong passphrase fails before anything is written
	}
	if err != nil {
		fmt.Fprintln(stderr, "outpost functions publish:", err)
		return exitFailure
	}
	custom := map[string]any{"function": man.Name, "version": man.Version}
	var added []string
	for _, file := range []string{function.ManifestFile, man.Module} {
		name := function.TargetName(man, file)
		if _, err := r.AddTarget(name, filepath.Join(dir, file), custom); err != nil {
			fmt.Fprintln(stderr, "outpost functions publish:", err)
			return exitFailure
		}
		added = append(added, name)
	}
	var retired []string
	if retire {
		mine := "functions/" + man.Name + "/" + strconv.Itoa(man.Version) + "/"
		for name := range r.Targets.Targets {
			if strings.HasPrefix(name, "functions/"+man.Name+"/") && !strings.HasPrefix(name, mine) {
				delete(r.Targets.Targets, name)
				retired = append(retired, name)
			}
		}
		sort.Strings(retired)
	}
	if err := release.Sign(r); err != nil {
		fmt.Fprintln(stderr, "outpost functions publish:", err)
		return exitFailure
	}
	for _, name := range added {
		fmt.Fprintf(stdout, "published %s\n", name)
	}
	for _, name := range retired {
		fmt.Fprintf(stdout, "retired   %s\n", name)
	}
	fmt.Fprintf(stdout, "signed: targets v%d, timestamp expires %s\nnext: outpost release push --repo %s (then a fleet object of kind function: {\"function\": %q, \"version\": %d})\n",
		r.Targets.Version, r.Timestamp.Expires.Format(time.RFC3339), repo, man.Name, man.Version)
	return exitOK
}

func inspectDir(ctx context.Context, dir, root, repo string) inspection {
	in := inspection{Dir: dir, Signature: "not checked (no --root)"}
	mpath := filepath.Join(dir, function.ManifestFile)
	raw, err := os.ReadFile(mpath)
	if err != nil {
		in.Errors = append(in.Errors, err.Error())
		return in
	}
	man, err := function.ParseManifest(mpath, raw)
	if err != nil {
		var ps interface{ Unwrap() []error }
		if errors.As(err, &ps) {
			for _, e := range ps.Unwrap() {
				in.Errors = append(in.Errors, e.Error())
			}
		} else {
			in.Errors = append(in.Errors, err.Error())
		}
		return in
	}
	in.Manifest = man
	wasm, err := os.ReadFile(filepath.Join(dir, man.Module))
	if err != nil {
		in.Errors = append(in.Errors, err.Error())
		return in
	}
	if root != "" && repo != "" {
		state, err := os.MkdirTemp("", "outpost-inspect-*")
		if err != nil {
			in.Errors = append(in.Errors, err.Error())
			return in
		}
		defer os.RemoveAll(state)
		ct, err := function.NewChainTrust(root, filepath.Join(repo, "metadata"), state)
		if err == nil {
			_, err = ct.Refresh(ctx)
		}
		if err == nil {
			err = ct.Verify(man, raw, wasm)
		}
		if err != nil {
			in.Signature = "refused by the repository's TUF chain"
			in.Errors = append(in.Errors, err.Error())
		} else {
			in.Signature = "valid (TUF chain of " + repo + ")"
		}
	} else if root != "" {
		tr, err := function.LoadTrust(root)
		if err != nil {
			in.Errors = append(in.Errors, err.Error())
			return in
		}
		sig, err := os.ReadFile(filepath.Join(dir, function.SignatureFile))
		if errors.Is(err, os.ErrNotExist) {
			sig = nil
		}
		if err := tr.Verify(man, raw, wasm, sig); err != nil {
			in.Signature = "refused"
			in.Errors = append(in.Errors, err.Error())
		} else {
			in.Signature = "valid"
		}
	}
	rt, err := function.NewRuntime(function.RuntimeOptions{})
	if err != nil {
		in.Errors = append(in.Errors, err.Error())
		return in
	}
	defer rt.Close(ctx)
	m, err := rt.Load(ctx, man, wasm, function.LoadOptions{})
	if err != nil {
		in.Errors = append(in.Errors, err.Error())
		return in
	}
	in.SHA256, in.Size, in.CompileTime = m.Hash, m.Size, m.CompileTime.Round(time.Microsecond).String()
	_ = m.Close(ctx)
	return in
}

func functionsInspect(ctx context.Context, dir, root, repo string, asJSON bool, stdout, stderr io.Writer) int {
	in := inspectDir(ctx, dir, root, repo)
	if asJSON {
		b, _ := json.MarshalIndent(in, "", "  ")
		fmt.Fprintln(stdout, string(b))
	} else {
		fmt.Fprintf(stdout, "dir:        %s\n", in.Dir)
		if m := in.Manifest; m != nil {
			fmt.Fprintf(stdout, "function:   %s version %d\n", m.Name, m.Version)
			fmt.Fprintf(stdout, "module:     %s (%d bytes, sha256 %s, compiled in %s)\n", m.Module, in.Size, in.SHA256, in.CompileTime)
			fmt.Fprintf(stdout, "entry:      on_message=%q call=%q\n", m.Entry.OnMessage, m.Entry.Call)
			for _, t := range m.Triggers {
				fmt.Fprintf(stdout, "trigger:    %s -> %s\n", strings.Join(t.From, ", "), strings.Join(t.To, ", "))
			}
			fmt.Fprintf(stdout, "limits:     memory %v, timeout %v, instances %d, state %v per device\n", m.Limits.Memory, m.Limits.Timeout, m.Limits.Instances, m.Limits.State)
			fmt.Fprintf(stdout, "devices:    %s\n", devices(m.Devices))
			fmt.Fprintf(stdout, "publish:    %s\n", strings.Join(m.Capabilities.Publish, ", "))
		}
		fmt.Fprintf(stdout, "signature:  %s\n", in.Signature)
	}
	if len(in.Errors) > 0 {
		for _, e := range in.Errors {
			fmt.Fprintln(stderr, e)
		}
		return exitUsage
	}
	return exitOK
}

func functionsListDir(dir, root string, asJSON bool, stdout, stderr io.Writer) int {
	entries, err := os.ReadDir(dir)
	if err != nil {
		fmt.Fprintln(stderr, "outpost functions list:", err)
		return exitFailure
	}
	var all []inspection
	for _, e := range entries {
		if e.IsDir() {
			if _, err := os.Stat(filepath.Join(dir, e.Name(), function.ManifestFile)); err == nil {
				all = append(all, inspectDir(context.Background(), filepath.Join(dir, e.Name()), root, ""))
			}
		}
	}
	if asJSON {
		b, _ := json.MarshalIndent(all, "", "  ")
		fmt.Fprintln(stdout, string(b))
		return exitOK
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tVERSION\tSIGNATURE\tDEVICES\tSTATUS\tDIR")
	bad := false
	for _, in := range all {
		name, ver, devs := "?", 0, ""
		if in.Manifest != nil {
			name, ver, devs = in.Manifest.Name, in.Manifest.Version, devices(in.Manifest.Devices)
		}
		status := "ok"
		if len(in.Errors) > 0 {
			status, bad = in.Errors[0], true
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", name, ver, in.Signature, devs, status, in.Dir)
	}
	tw.Flush()
	if bad {
		return exitUsage
	}
	return exitOK
}
