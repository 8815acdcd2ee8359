package telemetry

import (
	"bufio"
	"bytes"
	"cmp"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strings"
	"sync"

	vm "github.com/VictoriaMetrics/metrics"

	"github.com/outpost-edge/outpost/internal/buildinfo"
)

// Prometheus exposition conventions for /metrics (checked by
// `promtool check metrics` in a test against a real agent): every family
// has # HELP and # TYPE lines, counters end in _total, other types never
// do, units are base units in the name (_seconds, _bytes).
//
// github.com/VictoriaMetrics/metrics writes # TYPE and an empty # HELP
// once ExposeMetadata is on; the help text comes from Help below (a family
// missing there gets a generic text naming this file, so that the output
// stays valid while the omission is visible).

func init() { vm.ExposeMetadata(true) }

// Help is the help text of each metric family Outpost exposes. Packages
// add their families here (or with RegisterHelp) when they add metrics.
var help = map[string]string{
	"outpost_build_info": "Build of the running agent: version, commit and Go version as labels; always 1.",

	"outpost_broker_connections_pending":              "Connections accepted that have not completed CONNECT yet (they count against max_connections).",
	"outpost_broker_password_verifications_total":     "Slow password hash verifications performed (bcrypt or argon2id).",
	"outpost_broker_login_refusals_total":             "Logins refused before or instead of a verification, by reason (busy, rate limited, identity).",
	"outpost_broker_connects_refused_total":           "Authenticated connections refused after login, by reason (will ACL, foreign session).",
	"outpost_broker_persistence_records_failed_total": "Records the persistence store refused; each fails alone, the rest of its batch is saved.",
	"outpost_broker_retained_bytes":                   "Topic and payload bytes held by retained messages now.",

	"outpost_rules_checkpoint_duration_seconds": "Time to write the rule state snapshot that acknowledges windowed inputs.",
	"outpost_rules_checkpoint_errors_total":     "Rule state snapshots that failed (the inputs waiting on them are refused).",

	"outpost_function_invocations_total":       "WebAssembly function invocations, by function.",
	"outpost_function_errors_total":            "Function invocations that failed (trap, panic, bad host call), by function.",
	"outpost_function_timeouts_total":          "Function invocations stopped at their time limit, by function.",
	"outpost_function_denied_total":            "Host calls a function's manifest does not grant, by function.",
	"outpost_function_duration_seconds":        "Function invocation time, by function.",
	"outpost_function_instances":               "Instantiated function modules now, by function.",
	"outpost_function_memory_high_water_bytes": "Highest linear memory a function's instance reached, by function.",
	"outpost_function_outputs_total":           "Outputs functions sent to sinks, by function.",
	"outpost_function_output_errors_total":     "Function outputs a sink refused, by function.",
	"outpost_function_state_denied_total":      "Per-device state writes refused by the state size limit, by function.",

	"outpost_netpol_interfaces":           "Interfaces with a network policy applied.",
	"outpost_netpol_packets_total":        "Packets matched by each network policy rule (or the default), by interface and rule.",
	"outpost_netpol_bytes_total":          "Bytes matched by each network policy rule (or the default), by interface and rule.",
	"outpost_netpol_global_packets_total": "Packets handled outside the rules: rate_limited, non_ip, ipv6, malformed, by interface.",

	"outpost_broker_acl_denied_total":                     "Publishes and subscriptions refused by the ACL, by action.",
	"outpost_broker_auth_failures_total":                  "Failed MQTT logins.",
	"outpost_broker_clients_connected":                    "MQTT clients connected now.",
	"outpost_broker_disconnects_total":                    "Client disconnections, by reason.",
	"outpost_broker_flow_control_waits_total":             "Publishes that waited for the pipeline (backpressure).",
	"outpost_broker_inflight_messages":                    "QoS 1/2 messages in flight to clients now.",
	"outpost_broker_limit_refusals_total":                 "Connections or packets refused by a configured limit, by limit.",
	"outpost_broker_messages_dropped_inflight_full_total": "Messages not delivered because the client's in-flight window was full.",
	"outpost_broker_messages_dropped_total":               "Messages dropped by the broker, by reason.",
	"outpost_broker_messages_received_total":              "PUBLISH packets received from clients.",
	"outpost_broker_messages_sent_total":                  "PUBLISH packets sent to clients.",
	"outpost_broker_received_bytes_total":                 "Bytes received from MQTT clients.",
	"outpost_broker_retained_messages":                    "Retained messages stored now.",
	"outpost_broker_sent_bytes_total":                     "Bytes sent to MQTT clients.",
	"outpost_broker_subscriptions":                        "Subscriptions now.",

	"outpost_config_reloads_total": "Config file reloads, by result (applied, rejected).",
	"outpost_gc_pause_seconds":     "Go GC stop-the-world pauses since start, seconds (quantiles; the sum is a lower estimate).",

	"outpost_ota_applies_total":           "Updates started (download, verify, install).",
	"outpost_ota_apply_errors_total":      "Updates that failed before the restart.",
	"outpost_ota_check_errors_total":      "Repository checks that failed (network, TUF verification, bad targets).",
	"outpost_ota_checks_total":            "Repository checks.",
	"outpost_ota_download_bytes_total":    "Target bytes downloaded.",
	"outpost_ota_download_progress_ratio": "Progress of the download in progress, 0 to 1.",
	"outpost_ota_trial_attempts":          "Starts of the version on trial so far.",
	"outpost_ota_updates_total":           "Finished updates, by result (committed, rolled_back).",

	"outpost_pipeline_backpressure_waits_total": "Submissions that waited for pipeline capacity.",
	"outpost_pipeline_dropped_total":            "Messages dropped by the pipeline, by reason.",
	"outpost_pipeline_messages_total":           "Messages routed by the pipeline, by result.",
	"outpost_pipeline_queue_depth":              "Messages waiting in the pipeline now.",

	"outpost_sink_deliver_seconds":   "Time to deliver a message to a sink, seconds.",
	"outpost_sink_delivered_total":   "Messages delivered to sinks, by sink.",
	"outpost_sink_errors_total":      "Sink delivery errors, by sink.",
	"outpost_webhook_dropped_total":  "Webhook requests dropped.",
	"outpost_webhook_failed_total":   "Webhook requests that failed after retries.",
	"outpost_webhook_requests_total": "Webhook requests sent.",
	"outpost_webhook_retries_total":  "Webhook request retries.",

	"outpost_supervisor_broken_total":             "Components given up on after too many restarts.",
	"outpost_supervisor_oom_kills_total":          "Components killed for exceeding their memory limit.",
	"outpost_supervisor_restarts_total":           "Component restarts.",
	"outpost_supervisor_starts_total":             "Component starts.",
	"outpost_supervisor_state_changes_total":      "Component state changes.",
	"outpost_queue_appended_total":                "Records made durable in a lane's queue.",
	"outpost_queue_acked_total":                   "Records acknowledged and removed from a lane's queue.",
	"outpost_queue_rejected_total":                "Appends refused because the queue was full (on_full: reject_new).",
	"outpost_queue_dropped_total":                 "Records dropped from a queue, by reason (max_bytes, max_age, corrupt, torn_tail).",
	"outpost_queue_depth_records":                 "Unacknowledged records in a queue.",
	"outpost_queue_bytes":                         "Bytes of the unacknowledged records in a queue.",
	"outpost_queue_disk_bytes":                    "Size of a queue's segment files, bytes.",
	"outpost_queue_segments":                      "Segment files of a queue.",
	"outpost_queue_oldest_age_seconds":            "Age of the oldest unacknowledged record of a queue, seconds.",
	"outpost_queue_drain_rate_records_per_second": "Records acknowledged per second from a queue (recent rate).",
	"outpost_queue_fsync_duration_seconds":        "Time of one fsync of queue data, seconds.",

	"outpost_rules_messages_total":                "Messages given to the rule engine.",
	"outpost_rules_matched_total":                 "Messages that matched a rule version's FROM and WHERE.",
	"outpost_rules_emitted_total":                 "Output rows a rule version produced.",
	"outpost_rules_action_sent_total":             "Outputs a rule version's actions delivered, by action.",
	"outpost_rules_errors_total":                  "Rule evaluation errors, by reason.",
	"outpost_rules_eval_duration_seconds":         "Time to evaluate a rule version on one message (sampled 1 in 16), seconds.",
	"outpost_rules_reloads_total":                 "Rule file reloads.",
	"outpost_rules_reload_duration_seconds":       "Time of one rule reload, seconds.",
	"outpost_rules_window_groups_discarded_total": "Window groups discarded (group limit or idle timeout).",
	"outpost_rules_active":                        "Active rule versions.",
	"outpost_rules_rejected_files":                "Rule files currently rejected (errors).",

	"outpost_uplink_connected":                   "1 when the uplink is connected to the cloud broker.",
	"outpost_uplink_window_records":              "Publishes allowed in flight on the current uplink connection.",
	"outpost_uplink_reconnects_total":            "Uplink reconnections.",
	"outpost_uplink_connect_errors_total":        "Failed uplink connection attempts.",
	"outpost_uplink_published_total":             "PUBLISH packets sent to the cloud, resends included, by lane.",
	"outpost_uplink_acked_total":                 "Positive PUBACKs from the cloud, by lane.",
	"outpost_uplink_acked_bytes_total":           "Bytes of the publishes the cloud acknowledged, by lane.",
	"outpost_uplink_resent_total":                "Records sent again after a reconnect (possible duplicates), by lane.",
	"outpost_uplink_rejected_total":              "Negative PUBACKs from the cloud, by lane.",
	"outpost_uplink_dead_lettered_total":         "Records given up on, by lane and reason.",
	"outpost_uplink_inflight_records":            "Records in flight to the cloud, by lane.",
	"outpost_uplink_backlog_records":             "Records waiting to be sent, by lane.",
	"outpost_uplink_backlog_bytes":               "Bytes waiting to be sent, by lane.",
	"outpost_uplink_ack_rate_records_per_second": "Records acknowledged per second (5 s window), by lane.",
	"outpost_uplink_ack_rate_bytes_per_second":   "Bytes acknowledged per second (5 s window), by lane.",
	"outpost_uplink_drain_eta_seconds":           "Estimated time to drain the backlog, seconds (-1 unknown), by lane.",
	"outpost_uplink_downlink_received_total":     "Cloud commands received.",
	"outpost_uplink_downlink_errors_total":       "Cloud commands that could not be republished locally.",
	"outpost_uplink_downlink_ignored_total":      "Cloud commands ignored.",
}

var helpMu sync.RWMutex

// RegisterHelp sets the help text of a metric family.
func RegisterHelp(family, text string) {
	helpMu.Lock()
	help[family] = text
	helpMu.Unlock()
}

// helpFor returns the help text of a family.
func helpFor(family string) string {
	helpMu.RLock()
	h, ok := help[family]
	helpMu.RUnlock()
	switch {
	case ok:
		return h
	case strings.HasPrefix(family, "go_"):
		return "Go runtime metric " + family + " (github.com/VictoriaMetrics/metrics)."
	case strings.HasPrefix(family, "process_"):
		return "Process metric " + family + " (github.com/VictoriaMetrics/metrics)."
	}
	return "Outpost metric " + family + " (no description registered in internal/telemetry/help.go)."
}

// registerBuildInfo adds outpost_build_info{version,commit,goversion} 1.
func registerBuildInfo(set *vm.Set) {
	bi := buildinfo.Read()
	name := fmt.Sprintf(`outpost_build_info{version=%s,commit=%s,goversion=%s}`,
		labelValue(bi.Version), labelValue(bi.Commit), labelValue(runtime.Version()))
	set.GetOrCreateGauge(name, func() float64 { return 1 })
}

// labelValue quotes a label value for the exposition format.
func labelValue(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	return `"` + r.Replace(s) + `"`
}

// libraryFixes corrects families that github.com/VictoriaMetrics/metrics
// writes against the Prometheus conventions (promtool's lint): counters
// named _count, cumulative counters typed gauge.
var libraryRenames = map[string]string{
	"go_cgo_calls_count": "go_cgo_calls_total",
	"go_gc_forced_count": "go_gc_forced_total",
	"go_cpu_count":       "go_cpus",
}

// libraryCounters are cumulative process counters the library types gauge.
var libraryCounters = map[string]bool{
	"process_io_read_bytes_total":            true,
	"process_io_written_bytes_total":         true,
	"process_io_read_syscalls_total":         true,
	"process_io_write_syscalls_total":        true,
	"process_io_storage_read_bytes_total":    true,
	"process_io_storage_written_bytes_total": true,
}

// fixLine applies libraryRenames and libraryCounters to one line.
func fixLine(line string) string {
	if strings.HasPrefix(line, "# ") {
		parts := strings.SplitN(line, " ", 4) // "#", HELP|TYPE, family, rest
		if len(parts) < 3 {
			return line
		}
		fam := parts[2]
		if to, ok := libraryRenames[fam]; ok {
			parts[2] = to
			fam = to
			if parts[1] == "TYPE" && len(parts) == 4 && (to == "go_cgo_calls_total" || to == "go_gc_forced_total") {
				parts[3] = "counter"
			}
		}
		if parts[1] == "TYPE" && len(parts) == 4 && libraryCounters[fam] {
			parts[3] = "counter"
		}
		return strings.Join(parts, " ")
	}
	name := line
	if i := strings.IndexAny(line, "{ "); i >= 0 {
		name = line[:i]
	}
	if to, ok := libraryRenames[name]; ok {
		return to + line[len(name):]
	}
	return line
}

// WriteMetrics writes set and the process metrics in the Prometheus text
// format with help text on every # HELP line. VictoriaMetrics histograms
// (buckets labelled vmrange="lo...hi", typed untyped) are written as
// Prometheus histograms (cumulative le buckets at the ranges' upper
// bounds, +Inf, _sum, _count): the same counts, in the form Prometheus
// tools understand.
func WriteMetrics(w io.Writer, set *vm.Set) {
	var buf bytes.Buffer
	set.WritePrometheus(&buf)
	vm.WriteProcessMetrics(&buf)
	lines := strings.Split(strings.TrimRight(buf.String(), "\n"), "\n")
	bw := bufio.NewWriter(w)
	defer bw.Flush()
	for i := 0; i < len(lines); i++ {
		line := fixLine(lines[i])
		if fam, ok := strings.CutPrefix(line, "# TYPE "); ok && strings.HasSuffix(fam, " untyped") {
			fam = strings.TrimSuffix(fam, " untyped")
			j := i + 1
			for j < len(lines) && !strings.HasPrefix(lines[j], "#") && strings.HasPrefix(lines[j], fam) {
				j++
			}
			if writeVMHistogram(bw, fam, lines[i+1:j]) {
				i = j - 1
				continue
			}
		}
		if fam, ok := strings.CutPrefix(line, "# HELP "); ok && !strings.Contains(fam, " ") {
			line = "# HELP " + fam + " " + helpFor(fam)
			if i+1 < len(lines) && strings.HasPrefix(lines[i+1], "# TYPE "+fam+" untyped") {
				// writeVMHistogram writes its own HELP line.
				if j := i + 2; j < len(lines) && strings.HasPrefix(lines[j], fam+"_bucket{") && strings.Contains(lines[j], "vmrange=") {
					continue
				}
			}
		}
		bw.WriteString(line)
		bw.WriteByte('\n')
	}
}

// writeVMHistogram converts one VictoriaMetrics histogram family's samples;
// it reports false (nothing written) when they are not one.
func writeVMHistogram(w *bufio.Writer, fam string, samples []string) bool {
	type bucket struct {
		hi float64
		n  float64
	}
	type group struct {
		labels     string
		buckets    []bucket
		sum, count string
	}
	groups := map[string]*group{}
	var order []string
	get := func(labels string) *group {
		g := groups[labels]
		if g == nil {
			g = &group{labels: labels, sum: "0", count: "0"}
			groups[labels] = g
			order = append(order, labels)
		}
		return g
	}
	sawRange := false
	for _, l := range samples {
		sp := strings.LastIndexByte(l, ' ')
		if sp < 0 {
			return false
		}
		series, value := l[:sp], l[sp+1:]
		name, labels := series, ""
		if k := strings.IndexByte(series, '{'); k >= 0 {
			name, labels = series[:k], strings.TrimSuffix(series[k+1:], "}")
		}
		switch name {
		case fam + "_bucket":
			k := strings.Index(labels, `vmrange="`)
			if k < 0 {
				return false
			}
			end := strings.IndexByte(labels[k+9:], '"')
			if end < 0 {
				return false
			}
			rng := labels[k+9 : k+9+end]
			rest := strings.Trim(labels[:k]+labels[k+9+end+1:], ",")
			rest = strings.ReplaceAll(rest, ",,", ",")
			_, hiText, ok := strings.Cut(rng, "...")
			var hi, n float64
			if _, err := fmt.Sscan(hiText, &hi); !ok || err != nil {
				return false
			}
			if _, err := fmt.Sscan(value, &n); err != nil {
				return false
			}
			g := get(rest)
			g.buckets = append(g.buckets, bucket{hi, n})
			sawRange = true
		case fam + "_sum":
			get(labels).sum = value
		case fam + "_count":
			get(labels).count = value
		default:
			return false
		}
	}
	if !sawRange {
		return false
	}
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s histogram\n", fam, helpFor(fam), fam)
	with := func(labels, extra string) string {
		switch {
		case labels == "" && extra == "":
			return ""
		case labels == "":
			return "{" + extra + "}"
		case extra == "":
			return "{" + labels + "}"
		}
		return "{" + labels + "," + extra + "}"
	}
	for _, key := range order {
		g := groups[key]
		slices.SortFunc(g.buckets, func(a, b bucket) int { return cmp.Compare(a.hi, b.hi) })
		cum := 0.0
		for _, b := range g.buckets {
			cum += b.n
			fmt.Fprintf(w, "%s_bucket%s %g\n", fam, with(g.labels, fmt.Sprintf(`le="%g"`, b.hi)), cum)
		}
		fmt.Fprintf(w, "%s_bucket%s %s\n", fam, with(g.labels, `le="+Inf"`), g.count)
		fmt.Fprintf(w, "%s_sum%s %s\n", fam, with(g.labels, ""), g.sum)
		fmt.Fprintf(w, "%s_count%s %s\n", fam, with(g.labels, ""), g.count)
	}
	return true
}
