package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/internal/ota"
	"gopkg.in/yaml.v3"
)

func init() {
	register(&command{name: "update", summary: "check for, apply and watch self-updates of the running agent", run: runUpdate})
}

func runUpdate(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("update", flag.ContinueOnError)
	api := fs.String("api", "http://127.0.0.1:9100", "the running agent's local API")
	token := fs.String("token", os.Getenv("OUTPOST_TELEMETRY__TOKEN"), "bearer token when telemetry.token is set (default $OUTPOST_TELEMETRY__TOKEN)")
	asJSON := fs.Bool("json", false, "print the status as JSON")
	noWait := fs.Bool("no-wait", false, "apply: return once the update has started")
	cfgPath := fs.String("config", "/etc/outpost/outpost.yaml", "prestart: the agent's config file (its ota: section)")
	all := fs.Bool("all", false, "forget-bad: forget every bad version")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), helpText("outpost update check|apply|status [--api URL] [--json] [--no-wait]\n"+
			"  outpost update bad [--json]\n  outpost update forget-bad VERSION...|--all\n  outpost update prestart [--config FILE]",
			`Talk to the running agent's updater. check refreshes the signed release
metadata and shows whether a newer version exists; apply downloads it
(delta when possible), verifies, installs and restarts the agent into it,
printing progress until the agent restarts; status shows the state, the
last outcome (committed or rolled back) and versions marked bad.

bad lists the versions marked bad: they failed their health gate, were
rolled back, and are never installed automatically again. forget-bad
removes versions from that list (the agent rewrites its state file
atomically), for instance after fixing the configuration that made them
fail; the next check may then install them again (at once with apply).

prestart is the service manager's pre-start hook, run from the previous
binary (ExecStartPre=-/usr/local/bin/outpost.prev update prestart): it
counts each start of a version on trial and rolls it back when its attempts
are exhausted, even if that version dies before it can count itself.`,
			"outpost update check", "outpost update apply", "outpost update status --json",
			"outpost update bad", "outpost update forget-bad 1.2.0", "outpost update forget-bad --all && outpost update apply"))
		fs.PrintDefaults()
	}
	sub := ""
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		sub, args = args[0], args[1:]
	}
	// Flags may follow positional arguments (forget-bad 1.2.0 --api URL).
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if err == flag.ErrHelp {
				return exitOK
			}
			return exitUsage
		}
		if fs.NArg() == 0 {
			break
		}
		pos, args = append(pos, fs.Arg(0)), fs.Args()[1:]
	}
	base := strings.TrimRight(*api, "/") + "/api/v1/update/"
	apiToken = *token
	var st ota.Status
	var err error
	switch sub {
	case "check":
		err = call(ctx, http.MethodPost, base+"check", &st)
	case "status":
		err = call(ctx, http.MethodGet, base+"status", &st)
	case "prestart":
		return runPrestart(*cfgPath)
	case "bad", "forget-bad":
		return runBad(ctx, sub, base, pos, *all, *asJSON)
	case "apply":
		if err = call(ctx, http.MethodPost, base+"apply", &st); err != nil || st.Available == nil || *noWait {
			break
		}
		fmt.Printf("updating %s -> %s (%s, %d bytes)\n", st.Running, st.Available.Version, st.Available.Kind, st.Available.Download)
		var restarted bool
		if restarted, err = watchUpdate(ctx, base, &st); restarted {
			fmt.Println("agent restarting into the new version; check with `outpost update status`")
			return exitOK
		}
	default:
		fs.Usage()
		return exitUsage
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "outpost update %s: %v\n", sub, err)
		return exitFailure
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(st)
		return exitOK
	}
	printStatus(st)
	return exitOK
}

// watchUpdate polls status and prints progress until the agent restarts (the
// API goes away: restarted) or the update fails.
func watchUpdate(ctx context.Context, base string, st *ota.Status) (restarted bool, err error) {
	sawBusy := false
	for i := 0; i < 36000; i++ {
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
		var s ota.Status
		if err := call(ctx, http.MethodGet, base+"status", &s); err != nil {
			fmt.Println()
			return true, nil
		}
		*st = s
		if p := s.Progress; p != nil {
			fmt.Printf("\r%5.1f%%  %d/%d bytes  %.0f KiB/s  ETA %v   ", p.Percent, p.Done, p.Total,
				p.BytesPerSec/1024, time.Duration(p.ETASeconds*float64(time.Second)).Round(time.Second))
		}
		if s.Busy || s.Restarting {
			sawBusy = true
			continue
		}
		if sawBusy || s.LastError != "" {
			fmt.Println()
			if s.LastError != "" {
				return false, fmt.Errorf("%s", s.LastError)
			}
			return false, nil
		}
	}
	return false, nil
}

// apiToken is sent as a bearer token when set.
var apiToken string

func call(ctx context.Context, method, url string, out any) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return err
	}
	if apiToken != "" {
		req.Header.Set("Authorization", "Bearer "+apiToken)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("agent API: %w (is `outpost run` running with ota enabled?)", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode >= 300 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return fmt.Errorf("%s", e.Error)
		}
		return fmt.Errorf("agent API: HTTP %s", resp.Status)
	}
	return json.Unmarshal(body, out)
}

// runBad lists (bad) or forgets (forget-bad) bad versions through the API.
func runBad(ctx context.Context, sub, base string, args []string, all, asJSON bool) int {
	versions := args
	var l ota.BadList
	var err error
	switch {
	case sub == "bad":
		if len(versions) > 0 || all {
			fmt.Fprintln(os.Stderr, "outpost update bad: takes no arguments (did you mean forget-bad?)")
			return exitUsage
		}
		err = call(ctx, http.MethodGet, base+"bad", &l)
	case all && len(versions) > 0, !all && len(versions) == 0:
		fmt.Fprintln(os.Stderr, "outpost update forget-bad: give one or more versions, or --all")
		return exitUsage
	case all:
		err = call(ctx, http.MethodDelete, base+"bad", &l)
	default:
		for _, v := range versions {
			var one ota.BadList
			if err = call(ctx, http.MethodDelete, base+"bad/"+url.PathEscape(v), &one); err != nil {
				break
			}
			l.Bad, l.Forgotten = one.Bad, append(l.Forgotten, one.Forgotten...)
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "outpost update %s: %v\n", sub, err)
		return exitFailure
	}
	if asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(l)
		return exitOK
	}
	if sub == "forget-bad" {
		if len(l.Forgotten) == 0 {
			fmt.Println("no bad versions to forget")
		} else {
			fmt.Printf("forgotten: %s\n", strings.Join(l.Forgotten, ", "))
		}
	}
	if len(l.Bad) == 0 {
		fmt.Println("bad:       none")
	} else {
		fmt.Printf("bad:       %s\n", strings.Join(l.Bad, ", "))
	}
	return exitOK
}

func printStatus(s ota.Status) {
	fmt.Printf("running:   %s (%s)\n", s.Running, s.Platform)
	fmt.Printf("phase:     %s\n", s.Phase)
	if s.Target != nil {
		fmt.Printf("updating:  %s (%s, attempt %d)\n", s.Target.Version, s.Target.Kind, s.Attempts)
	}
	if s.Available != nil {
		fmt.Printf("available: %s (%s, %d bytes to download; full %d)\n", s.Available.Version, s.Available.Kind, s.Available.Download, s.Available.FullSize)
	} else if !s.LastCheck.IsZero() {
		fmt.Printf("available: nothing newer (checked %s)\n", s.LastCheck.Format(time.RFC3339))
	}
	if s.Last != nil {
		fmt.Printf("last:      %s %s", s.Last.Version, s.Last.Result)
		if s.Last.Reason != "" {
			fmt.Printf(" (%s)", s.Last.Reason)
		}
		fmt.Println()
	}
	if len(s.Bad) > 0 {
		fmt.Printf("bad:       %s\n", strings.Join(s.Bad, ", "))
	}
	if s.LastError != "" {
		fmt.Printf("error:     %s\n", s.LastError)
	}
}

// runPrestart reads the ota: section of the agent's config (other sections
// are ignored here; `outpost run` validates the whole file) and runs
// ota.Prestart.
func runPrestart(path string) int {
	raw, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "outpost update prestart: %v\n", err)
		return exitUsage
	}
	var doc struct {
		OTA ota.Config `yaml:"ota"`
	}
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		fmt.Fprintf(os.Stderr, "outpost update prestart: %s: %v\n", path, err)
		return exitUsage
	}
	doc.OTA.SetDefaults()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	rolledBack, err := ota.Prestart(doc.OTA, log)
	if err != nil {
		fmt.Fprintf(os.Stderr, "outpost update prestart: %v\n", err)
		return exitFailure
	}
	if rolledBack {
		fmt.Println("outpost update prestart: rolled back to the previous version")
	}
	return exitOK
}
