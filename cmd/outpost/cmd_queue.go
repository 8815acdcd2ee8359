package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/queue"
	"github.com/outpost-edge/outpost/internal/uplink"
)

func init() {
	register(&command{name: "queue", summary: "inspect durable queues offline: status, inspect, verify", run: runQueue})
}

const queueUsage = `Usage:
  outpost queue status  [--dir DIR] [--offline] [--api URL] [--token T] [--config FILE] [--json]
  outpost queue inspect --dir DIR [-n N] [--all] [--json]
  outpost queue verify  --dir DIR [--json]

Tools for the durable store-and-forward queues. DIR is one queue directory
or a directory whose subdirectories are queues (one per uplink lane).

  status   with the agent running (its API reachable, see --api): LIVE
           figures from the agent: the uplink connection (state, broker,
           connected since or next retry, last error, reconnects, window,
           in flight, bandwidth cap) and per lane the backlog, in flight,
           published, acknowledged, resent, rejected, dead-lettered,
           acknowledgement rate and ETA, depth, oldest age and drops.
           Otherwise (or with --offline) OFFLINE figures read from the
           files in --dir: depth, bytes, oldest age, drops by reason. The
           first line says which.
  inspect  print records from the first unacknowledged one (--all: from the
           oldest on disk), decoding Outpost messages where possible
  verify   scan every record's CRC; report damage with file and offset;
           exit status 1 if any is found

inspect and verify only read the files, without taking the queue's lock,
so they are safe next to a running agent (which may have newer records
than they see).

Examples:
  outpost queue status
  outpost queue status --dir /var/lib/outpost/queue
  outpost queue inspect --dir /var/lib/outpost/queue/alarms -n 5
  outpost queue verify --dir /var/lib/outpost/queue
`

func runQueue(ctx context.Context, args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		w := os.Stderr
		if len(args) > 0 {
			w = os.Stdout
		}
		fmt.Fprint(w, queueUsage)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	sub, rest := args[0], args[1:]
	fs := flag.NewFlagSet("queue "+sub, flag.ContinueOnError)
	dir := fs.String("dir", "", "queue directory, or a directory of lane queue directories (required)")
	asJSON := fs.Bool("json", false, "print JSON")
	var n *int
	var all, offline *bool
	var apiF *apiFlags
	switch sub {
	case "status":
		offline = fs.Bool("offline", false, "read the files in --dir even when the agent runs")
		apiF = addAPIFlags(fs)
	case "verify":
	case "inspect":
		n = fs.Int("n", 10, "number of records to print (0 = all)")
		all = fs.Bool("all", false, "start at the oldest record on disk, acknowledged ones included")
	default:
		fmt.Fprintf(os.Stderr, "outpost queue: unknown subcommand %q\n\n%s", sub, queueUsage)
		return exitUsage
	}
	fs.Usage = func() { fmt.Fprint(fs.Output(), queueUsage+"\nFlags:\n"); fs.PrintDefaults() }
	if err := fs.Parse(rest); err != nil {
		if err == flag.ErrHelp {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "outpost queue %s: no arguments are taken (did you mean --dir %s?)\n", sub, fs.Arg(0))
		return exitUsage
	}
	if sub == "status" && !*offline {
		c, err := apiF.client()
		if err != nil {
			fmt.Fprintf(os.Stderr, "outpost queue status: %v\n", err)
			return exitUsage
		}
		live, err := liveQueueStatus(ctx, c)
		switch {
		case err == nil:
			return printLiveQueue(os.Stdout, c, live, *asJSON)
		case *dir == "":
			fmt.Fprintf(os.Stderr, "outpost queue status: no live figures (%v) and no --dir for offline ones\n", err)
			return exitFailure
		}
		fmt.Fprintf(os.Stderr, "outpost queue status: no live figures: %v\n", err)
	}
	if *dir == "" {
		fmt.Fprintf(os.Stderr, "outpost queue %s: --dir is required\n", sub)
		return exitUsage
	}
	lanes, err := queue.LaneDirs(*dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "outpost queue %s: %v\n", sub, err)
		return exitUsage
	}
	switch sub {
	case "status":
		if !*asJSON {
			fmt.Printf("OFFLINE figures read from %s (the agent's connection, in-flight, acknowledged counts and ETA need the agent running)\n", *dir)
		}
		return queueStatus(os.Stdout, lanes, *asJSON)
	case "inspect":
		return queueInspect(os.Stdout, lanes, *n, *all, *asJSON)
	default:
		return queueVerify(os.Stdout, lanes, *asJSON)
	}
}

func queueStatus(w io.Writer, lanes []string, asJSON bool) int {
	var all []queue.Stats
	for _, d := range lanes {
		s, err := queue.ReadStatus(d)
		if err != nil {
			fmt.Fprintf(os.Stderr, "outpost queue status: %s: %v\n", d, err)
			return exitFailure
		}
		all = append(all, s)
	}
	if asJSON {
		return writeJSON(w, all)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "LANE\tDEPTH\tBYTES\tDISK\tSEGMENTS\tOLDEST\tFIRST_SEQ\tNEXT_SEQ\tREJECTED\tDROPS")
	for _, s := range all {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%s\t%d\t%d\t%d\t%s\n", s.Lane, s.Depth, humanBytes(s.Bytes),
			humanBytes(s.DiskBytes), s.Segments, s.OldestAge.Round(time.Second), s.FirstSeq, s.NextSeq, s.Rejected, dropsText(s.Drops))
	}
	tw.Flush()
	return exitOK
}

// liveQueue is the agent's GET /api/v1/queue answer.
type liveQueue struct {
	Source string                 `json:"source"` // "live"
	Lanes  map[string]queue.Stats `json:"lanes"`
	Uplink *uplink.Status         `json:"uplink,omitempty"`
}

// liveQueueStatus asks the running agent. An agent without an uplink
// answers 404 (no queues to show).
func liveQueueStatus(ctx context.Context, c *apiClient) (*liveQueue, error) {
	var l liveQueue
	if err := c.call(ctx, http.MethodGet, "/api/v1/queue", &l); err != nil {
		var ae *APIError
		if errors.As(err, &ae) && ae.Status == http.StatusNotFound {
			return nil, fmt.Errorf("the agent at %s has no uplink lanes", c.where)
		}
		return nil, err
	}
	l.Source = "live"
	return &l, nil
}

func printLiveQueue(w io.Writer, c *apiClient, l *liveQueue, asJSON bool) int {
	if asJSON {
		return writeJSON(w, l)
	}
	fmt.Fprintf(w, "LIVE figures from the agent at %s\n", c.where)
	if u := l.Uplink; u != nil {
		fmt.Fprintf(w, "uplink:      %s (broker %s)\n", u.State, u.Broker)
		switch {
		case u.ConnectedSince != nil:
			fmt.Fprintf(w, "connected:   since %s (%s)\n", u.ConnectedSince.Format(time.RFC3339), time.Since(*u.ConnectedSince).Round(time.Second))
		case u.NextRetry != nil:
			fmt.Fprintf(w, "connected:   no; next retry %s\n", u.NextRetry.Format(time.RFC3339))
		default:
			fmt.Fprintf(w, "connected:   no\n")
		}
		if u.LastError != "" {
			fmt.Fprintf(w, "last error:  %s\n", u.LastError)
		}
		bw := "none"
		if u.Bandwidth > 0 {
			bw = humanBytes(u.Bandwidth) + "/s"
		}
		fmt.Fprintf(w, "reconnects:  %d   window: %d   in flight: %d   bandwidth cap: %s\n", u.Reconnects, u.Window, u.InFlight, bw)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "LANE\tPRIORITY\tBACKLOG\tBYTES\tIN_FLIGHT\tPUBLISHED\tACKED\tRESENT\tREJECTED\tDEAD\tRATE\tETA\tOLDEST\tDROPS")
	seen := map[string]bool{}
	if l.Uplink != nil {
		for _, ln := range l.Uplink.Lanes {
			seen[ln.Name] = true
			q := l.Lanes[ln.Name]
			eta := "-"
			if ln.ETASeconds != nil {
				eta = (time.Duration(*ln.ETASeconds * float64(time.Second))).Round(time.Second).String()
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%.1f/s\t%s\t%s\t%s\n", ln.Name, ln.Priority, ln.Backlog, humanBytes(ln.BacklogBytes),
				ln.InFlight, ln.Published, ln.Acked, ln.Resent, ln.Rejected, ln.DeadLettered, ln.Rate, eta, q.OldestAge.Round(time.Second), dropsText(q.Drops))
		}
	}
	names := make([]string, 0, len(l.Lanes))
	for n := range l.Lanes {
		if !seen[n] {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		q := l.Lanes[n]
		fmt.Fprintf(tw, "%s\t-\t%d\t%s\t%d\t-\t%d\t-\t%d\t-\t-\t-\t%s\t%s\n", n, q.Depth, humanBytes(q.Bytes), q.Inflight, q.Acked, q.Rejected, q.OldestAge.Round(time.Second), dropsText(q.Drops))
	}
	tw.Flush()
	return exitOK
}

func dropsText(d map[string]uint64) string {
	var parts []string
	keys := make([]string, 0, len(d))
	for k := range d {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if d[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", k, d[k]))
		}
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ",")
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fGiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fKiB", float64(n)/(1<<10))
	}
	return strconv.FormatInt(n, 10) + "B"
}

// inspected is one record as `queue inspect --json` prints it.
type inspected struct {
	Lane    string    `json:"lane"`
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time"`
	Size    int       `json:"size"`
	Topic   string    `json:"topic,omitempty"`
	QoS     *byte     `json:"qos,omitempty"`
	Client  string    `json:"client,omitempty"`
	Payload string    `json:"payload"`
}

func queueInspect(w io.Writer, lanes []string, n int, all, asJSON bool) int {
	enc := json.NewEncoder(w)
	for _, d := range lanes {
		if !asJSON && len(lanes) > 1 {
			fmt.Fprintf(w, "== %s\n", d)
		}
		err := queue.Inspect(d, all, n, func(r queue.Record) error {
			rec := inspected{Lane: d, Seq: r.Seq, Time: r.Time.UTC(), Size: len(r.Data)}
			payload := r.Data
			if m, err := message.Decode(r.Data); err == nil {
				rec.Topic, rec.Client, payload = m.Topic, m.ClientID, m.Payload
				q := m.QoS
				rec.QoS = &q
			}
			rec.Payload = preview(payload, 120)
			if asJSON {
				return enc.Encode(rec)
			}
			if rec.QoS != nil {
				_, err := fmt.Fprintf(w, "%d\t%s\t%dB\ttopic=%s qos=%d client=%s\t%s\n", rec.Seq, rec.Time.Format(time.RFC3339Nano), rec.Size, rec.Topic, *rec.QoS, rec.Client, rec.Payload)
				return err
			}
			_, err := fmt.Fprintf(w, "%d\t%s\t%dB\t%s\n", rec.Seq, rec.Time.Format(time.RFC3339Nano), rec.Size, rec.Payload)
			return err
		})
		if err != nil {
			fmt.Fprintf(os.Stderr, "outpost queue inspect: %s: %v\n", d, err)
			return exitFailure
		}
	}
	return exitOK
}

// preview renders b as quoted text if it is UTF-8, else as hex, cut at max
// bytes.
func preview(b []byte, max int) string {
	cut := ""
	if len(b) > max {
		b, cut = b[:max], "…"
	}
	if utf8.Valid(b) {
		return strconv.Quote(string(b)) + cut
	}
	return fmt.Sprintf("hex:%x%s", b, cut)
}

func queueVerify(w io.Writer, lanes []string, asJSON bool) int {
	var reps []queue.VerifyReport
	bad := false
	for _, d := range lanes {
		r, err := queue.Verify(d)
		if err != nil {
			fmt.Fprintf(os.Stderr, "outpost queue verify: %s: %v\n", d, err)
			return exitFailure
		}
		reps = append(reps, r)
		bad = bad || !r.OK()
	}
	if asJSON {
		if code := writeJSON(w, reps); code != exitOK {
			return code
		}
	} else {
		for _, r := range reps {
			status := "ok"
			if !r.OK() {
				status = fmt.Sprintf("%d damaged region(s)", len(r.Damage))
			}
			fmt.Fprintf(w, "%s: %d segments, %d records, %s: %s\n", r.Dir, r.Segments, r.Records, humanBytes(r.Bytes), status)
			for _, d := range r.Damage {
				fmt.Fprintf(w, "  %s:%d: %s (%d bytes, %d records missing)\n", d.File, d.Offset, d.Problem, d.Bytes, d.Records)
			}
		}
	}
	if bad {
		return exitFailure
	}
	return exitOK
}

func writeJSON(w io.Writer, v any) int {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return exitFailure
	}
	return exitOK
}
