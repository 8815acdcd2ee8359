package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
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
	apiF := addAPIFlags(fs)
	asJSON := fs.Bool("json", false, "print the status as JSON")
	noWait := fs.Bool("no-wait", false, "apply: return once the update has started")
	timeout := fs.Duration("timeout", 30*time.Minute, "apply: give up waiting for the commit after this long")
	poll := fs.Duration("poll", 500*time.Millisecond, "apply: status poll interval")
	all := fs.Bool("all", false, "forget-bad: forget every bad version")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), helpText("outpost update check|apply|status [--api URL] [--token T] [--config FILE] [--json] [--no-wait]\n"+
			"  outpost update bad [--json]\n  outpost update forget-bad VERSION...|--all\n  outpost update prestart [--config FILE]",
			`Talk to the running agent's updater. check refreshes the signed release
metadata and shows whether a newer version exists; apply downloads it
(delta when possible), verifies, installs and restarts the agent into it,
printing progress, and then follows the new version's trial until it is
committed (exit 0) or rolled back (exit 1); --no-wait returns at once.
status shows the state, the last outcome (committed or rolled back) and
versions marked bad.

The update API needs the agent's telemetry.token (sent as a Bearer token:
--token, $OUTPOST_TOKEN, or read from the config with --config) or a
connection on its unix socket telemetry.socket (--api unix:///PATH, or
found in the config).

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
			"outpost update apply --api unix:///run/outpost/api.sock",
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
	switch sub {
	case "prestart":
		return runPrestart(apiF.config)
	case "check", "status", "apply", "bad", "forget-bad":
	default:
		fs.Usage()
		return exitUsage
	}
	c, err := apiF.client()
	if err != nil {
		fmt.Fprintf(os.Stderr, "outpost update %s: %v\n", sub, err)
		return exitUsage
	}
	const base = "/api/v1/update/"
	var st ota.Status
	switch sub {
	case "check":
		err = c.call(ctx, http.MethodPost, base+"check", &st)
	case "status":
		err = c.call(ctx, http.MethodGet, base+"status", &st)
	case "bad", "forget-bad":
		return runBad(ctx, c, sub, base, pos, *all, *asJSON)
	case "apply":
		started := time.Now()
		if err = c.call(ctx, http.MethodPost, base+"apply", &st); err != nil || st.Available == nil || *noWait {
			break
		}
		fmt.Printf("updating %s -> %s (%s, %d bytes)\n", st.Running, st.Available.Version, st.Available.Kind, st.Available.Download)
		if err = followUpdate(ctx, c, st.Available.Version, started, *poll, *timeout); err == nil {
			return exitOK
		}
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

// maxUnreachable bounds how long `update apply` waits for the agent to
// answer again while it restarts.
const maxUnreachable = 2 * time.Minute

// followUpdate follows an update to version target, accepted by the agent
// at started, until the agent runs target committed (nil) or the update
// failed or was rolled back (an error saying why). It goes by the version
// the agent runs and the state it reports, never by catching the moment
// of the restart: the agent may restart between two polls, or be briefly
// unreachable while it does, and both are fine.
func followUpdate(ctx context.Context, c *apiClient, target string, started time.Time, poll, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var said string // the last phase line printed
	say := func(line string) {
		if line != said {
			fmt.Println(line)
			said = line
		}
	}
	inProgress := false
	var gone time.Time // since when the agent does not answer
	for {
		var s ota.Status
		err := c.call(ctx, http.MethodGet, "/api/v1/update/status", &s)
		if err == nil {
			gone = time.Time{}
		}
		switch {
		case ctx.Err() != nil:
			if inProgress {
				fmt.Println()
			}
			return fmt.Errorf("%s not committed after %v (see `outpost update status`)", target, timeout)
		case errors.Is(err, ErrAgentUnreachable):
			if inProgress {
				fmt.Println()
				inProgress = false
			}
			if gone.IsZero() {
				gone = time.Now()
			}
			if time.Since(gone) > maxUnreachable {
				return fmt.Errorf("the agent has not answered at %s for %v (restarted elsewhere, or down?); see `outpost update status`", c.where, maxUnreachable)
			}
			say("agent restarting ...")
		case err != nil:
			return err
		case s.Running == target:
			if inProgress {
				fmt.Println()
				inProgress = false
			}
			switch {
			case s.Phase == ota.PhaseTrial:
				say(fmt.Sprintf("running %s on trial (attempt %d); waiting for the health gate to commit it", target, s.Attempts))
			case s.Phase == ota.PhaseIdle:
				say(fmt.Sprintf("%s committed", target))
				return nil
			}
		default:
			if l := s.Last; l != nil && l.Version == target && l.Result != "committed" && l.Time.After(started.Add(-time.Second)) {
				if inProgress {
					fmt.Println()
				}
				return fmt.Errorf("%s %s: %s; running %s", target, strings.ReplaceAll(l.Result, "_", " "), l.Reason, s.Running)
			}
			if p := s.Progress; p != nil {
				inProgress = true
				fmt.Printf("\r%5.1f%%  %d/%d bytes  %.0f KiB/s  ETA %v   ", p.Percent, p.Done, p.Total,
					p.BytesPerSec/1024, time.Duration(p.ETASeconds*float64(time.Second)).Round(time.Second))
			}
			if s.Restarting {
				if inProgress {
					fmt.Println()
					inProgress = false
				}
				say("installed; agent restarting into " + target)
			}
			if !s.Busy && !s.Restarting && s.Phase == ota.PhaseIdle && s.LastError != "" {
				if inProgress {
					fmt.Println()
				}
				return fmt.Errorf("%s", s.LastError)
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(poll):
		}
	}
}

// runBad lists (bad) or forgets (forget-bad) bad versions through the API.
func runBad(ctx context.Context, c *apiClient, sub, base string, args []string, all, asJSON bool) int {
	versions := args
	var l ota.BadList
	var err error
	switch {
	case sub == "bad":
		if len(versions) > 0 || all {
			fmt.Fprintln(os.Stderr, "outpost update bad: takes no arguments (did you mean forget-bad?)")
			return exitUsage
		}
		err = c.call(ctx, http.MethodGet, base+"bad", &l)
	case all && len(versions) > 0, !all && len(versions) == 0:
		fmt.Fprintln(os.Stderr, "outpost update forget-bad: give one or more versions, or --all")
		return exitUsage
	case all:
		err = c.call(ctx, http.MethodDelete, base+"bad", &l)
	default:
		for _, v := range versions {
			var one ota.BadList
			if err = c.call(ctx, http.MethodDelete, base+"bad/"+url.PathEscape(v), &one); err != nil {
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
