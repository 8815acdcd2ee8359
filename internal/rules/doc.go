// Package rules is Outpost's streaming SQL rule engine: it filters,
// transforms, aggregates and routes device messages with rules such as
//
//	CREATE RULE overheat VERSION 3
//	AS SELECT deviceid() AS device, avg(temp) AS avg_temp
//	   FROM 'factory/+/sensors/#' WHERE quality = 'good'
//	   GROUP BY deviceid(), TUMBLINGWINDOW(ss, 10) HAVING avg(temp) > 80
//	DO UPLINK LANE 'alarms' TOPIC 'alerts/overheat';
//
// The language is documented in docs/rules.md (every example there is a
// golden test). Subpackages: parser (lexer, parser, AST, diagnostics) and
// jsonpath (zero-copy field extraction).
//
// # Usage
//
// The integrator implements Env (where actions deliver, lanes, device
// labels) and either runs the Module (name "rules": config section
// rules.Config, rule directory watching, state snapshot, HTTP API) or wires
// the pieces itself:
//
//	eng := rules.New(rules.Options{Env: env, Metrics: set})
//	store := rules.NewStore(eng, "/etc/outpost/rules", 0, log)
//	store.Reload(); store.Watch(); eng.Start(ctx)
//	store.RegisterHTTP(mux)                  // /api/v1/rules
//	err := eng.Process(ctx, msg)             // per message, or eng.Sink()
//
// # Guarantees
//
//   - Rules are parsed once and compiled to closures; a topic trie over all
//     FROM filters selects candidates; only referenced fields are extracted,
//     in one pass, without copying the payload. A filter + projection rule
//     does not allocate per message.
//   - Process is safe for concurrent use. Messages are serialized per device
//     (DeviceID, else ClientID) through Options.Partitions lock stripes, so
//     per-device state and order are consistent when each device's messages
//     are submitted in order.
//   - A rule's state is sharded (stateShards stripes): per-device state by
//     device, window groups by GROUP BY key. Closing windows (watermark past
//     windowState.nextClose) locks every stripe of the rule and emits in
//     window start, then group creation order.
//   - Apply (and so every reload) switches the active rule set atomically at
//     a message boundary: each message is evaluated by exactly one set, none
//     is lost or evaluated twice. Window and device state carry over when
//     the state layout of a rule is unchanged and reset otherwise.
//   - Run-time errors never stop a rule: the expression is NULL and the
//     reason is counted (outpost_rules_errors_total{rule,version,reason}).
//     Load-time problems (syntax, unknown function, arity, aggregate misuse,
//     unknown lane/file/function) are parser.ErrorList diagnostics with
//     file:line:col and the rule name.
//   - Output messages passed to sinks are reused after Deliver returns: a
//     sink that keeps one must Clone it (the message.Sink contract).
//   - One Module, one Engine: a config change (Module.Reconfigure) sets the
//     live engine's settings (Set...) instead of building another, so the
//     sink the pipeline holds, the timer, the store and the HTTP API keep
//     acting on the same engine and state.
//   - Durability (when the Env has lanes): Sink() is message.AsyncDurable;
//     ProcessAsync completes only when every durable (UPLINK) output of the
//     message is durable and, for a QoS 1/2 message that changed the state
//     of a rule with a durable action, when a state checkpoint holding the
//     change is on disk (checkpoint.go). Window outputs are delivered
//     synchronously, so a group leaves the state only once its output is
//     durable. See docs/rules.md, "Delivery guarantees".
//
// # Metrics
//
// outpost_rules_messages_total, outpost_rules_matched_total{rule,version},
// outpost_rules_emitted_total{rule,version},
// outpost_rules_action_sent_total{rule,version,action},
// outpost_rules_errors_total{rule,version,reason},
// outpost_rules_eval_duration_seconds{rule,version} (sampled 1 in 16),
// outpost_rules_checkpoint_duration_seconds,
// outpost_rules_checkpoint_errors_total,
// outpost_rules_reloads_total, outpost_rules_reload_duration_seconds,
// outpost_rules_window_groups_discarded_total, outpost_rules_active,
// outpost_rules_rejected_files. The per-version series are unregistered when
// their version is removed or replaced (an action dropped from a version
// drops its action_sent series).
//
// # Caveats
//
//   - Loops: a REPUBLISH that can match the rule's own FROM is a compile
//     error (a ${...} level counts as +); the Store (and CheckFiles, for `rules check`) refuses a
//     rule closing a REPUBLISH → FROM cycle through other rules. At run
//     time REPUBLISH outputs carry HopsProperty (input hops + 1) and a
//     message with Options.MaxHops hops is not evaluated (reason "loop").
//   - Actions run while a lock of the rule's state is held (windowed and
//     stateful rules): sinks must not block for long. WEBHOOK sinks queue by default.
//   - Processing-time windows close on a timer (Options.Tick); event-time
//     windows close as newer events arrive, or, once a rule received
//     nothing for Options.Idle (default 5s), as the wall clock advances
//     its watermark from the newest event time seen.
package rules
