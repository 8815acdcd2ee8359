// Package uplink is Outpost's durable cloud uplink lane, end to end: the
// lanes' durable queues (internal/queue) and the sinks that append to them
// (Lanes, LaneSink: a device's QoS 1 publish is acknowledged once its
// record is durable there), and the Uplink that drains the queues to a
// cloud MQTT v5 broker, removes a record from its lane only after the
// broker's PUBACK, and hands cloud commands (downlink) back to the gateway.
// The agent only wires them: lanes before producers and the Uplink.
//
// # Usage
//
//	lanes := uplink.NewLanes(log, set)       // module "lanes", section uplink.lanes
//	uplink.SetLaneDefaults(dataDir, cfg.Lanes) // queue dir <data_dir>/queue/<lane>
//	_ = module.Of[[]uplink.LaneConfig](lanes).Init(ctx, &cfg.Lanes)
//	_ = lanes.Start(ctx)                     // opens (recovers) every lane's queue
//	sink, _ := lanes.Sink("telemetry")       // "uplink:telemetry": Deliver returns once durable
//
//	u := uplink.New(uplink.Options{
//		Logger:   log,
//		Metrics:  set,
//		Queues:   lanes.Queue,
//		Downlink: localRepublisher, // Deliver(ctx, *message.Message) error
//	})
//	m := module.Of[uplink.Config](u) // defaults and validates the section
//	err := m.Init(ctx, cfg.Uplink)   // loads TLS files, takes the lanes' queues
//	err = u.Start(ctx)              // returns at once; connects in the background
//	st := u.Status()                // JSON-serialisable, per lane (outpost queue status)
//	err = u.Stop(ctx)
//	_ = lanes.Stop(ctx)              // after every producer and the Uplink
//
// Uplink implements module.Typed[Config] (name "uplink"), Lanes
// module.Typed[[]LaneConfig] (name "lanes"). Records' Data are
// message.Encode'd messages; the cloud topic comes from the topic template
// (default "outpost/{node_id}/{topic}").
//
// # Delivery guarantee
//
// At least once, in order per lane:
//
//   - A record is acknowledged in its lane (Queue.Ack) only after a PUBACK
//     with a reason code below 0x80 for it. Every PUBLISH is QoS 1.
//   - When the connection ends, every lane is rewound (Queue.Rewind) and
//     everything unacknowledged is resent, in lane order, on the next
//     connection. Records the broker had accepted but whose PUBACK was lost
//     arrive twice: duplicates are possible (counted as resent), losses are
//     not. A resend has the DUP flag set.
//   - Within a lane, first deliveries are in queue order. Across lanes there
//     is no order: a higher lane overtakes a lower one.
//   - Given up on (dead-lettered: Options.DeadLetter is called, the record
//     is acknowledged, counted in outpost_uplink_dead_lettered_total with a
//     reason, logged) are only: records that are not a valid encoding
//     ("corrupt"), whose MQTT message expiry passed while queued ("expired",
//     MQTT-3.3.2-5), whose cloud topic would be invalid ("bad_topic"), that
//     exceed the broker's Maximum Packet Size ("too_large"), and records the
//     broker rejects with a negative PUBACK max_rejects times in a row
//     ("rejected_0xNN"; e.g. 0x87 not authorized by an ACL). A rejected
//     record is retried after reconnect.min·2ⁿ⁻¹ (capped at reconnect.max)
//     while the lane goes on, so it may arrive after records queued behind
//     it.
//
// # Flow control and priority
//
// Many publishes are in flight at once: the window is min(in_flight, the
// broker's Receive Maximum), shared by all lanes. PUBLISH packets are
// encoded by the uplink and written in batches (up to 64 KiB per write);
// paho.golang's Client runs the connection (CONNECT, keep alive, the read
// loop, SUBSCRIBE) with a session manager of this package that owns the
// window and packet identifiers.
//
// Lanes drain by priority: every time a slot in the window frees, the
// highest-priority lane with a record sends (equal priorities take turns).
// Lower lanes leave a tenth of the window (windows of 10 or more) to the
// top lane, so a live alarm waits for at most about one window of bulk
// acknowledgements, never for the backlog. With a bandwidth cap (token
// bucket over PUBLISH bytes, ~100 ms burst), a lane with a share gets at
// least share/Σshares of the cap while it has records; lanes within their
// share go first by priority, the rest of the cap goes by strict priority.
// Without a cap shares are ignored (strict priority).
//
// Replay after an outage runs at link speed: no per-message sleep, the
// window stays full. Progress (backlog records and bytes, ack rate, ETA)
// is in Status, in metrics, and logged every progress_interval while a
// lane's backlog exceeds 1000 records ("uplink: draining backlog"), with
// a final "uplink: lane drained".
//
// # Connection
//
// Clean start is always false, with session_expiry, so the broker keeps
// the downlink subscription and queues commands while the gateway is
// offline. Reconnects are automatic with jittered exponential backoff
// (uniform in [d/2, d], d doubling from reconnect.min to reconnect.max; it
// resets after a connection that lived 10 s). Health is degraded while
// disconnected, with the last error and the next retry. A refused CONNECT
// is a *ConnectError with the broker's reason code; credential refusals
// match ErrNotAuthorized, TLS failures match ErrTLS (with a hint when the
// broker wants a client certificate). The password is never logged.
//
// # Downlink
//
// The uplink subscribes to downlink.prefix + downlink.filter (default
// outpost/{node_id}/cmd/#, QoS 1, retain handling 1) and hands each message
// to Options.Downlink with the prefix stripped: outpost/gw-1/cmd/valve/open
// becomes cmd/valve/open. Commands are delivered one at a time in arrival
// order. A nil error acknowledges the command (PUBACK 0); an error is
// logged, counted (outpost_uplink_downlink_errors_total) and answered with
// PUBACK 0x80, so the broker does not redeliver it.
//
// # Caveats
//
//   - Resent counts resends within this process; after an agent restart
//     the first resends of records already accepted by the broker are not
//     counted (they are still duplicates at the cloud).
//   - A Queue's Data must stay valid until the record is acknowledged or
//     rewound; Ack is called from another goroutine than Next.
//   - queue.Mem's Ack copies its remaining backlog when its head advances:
//     fine for tests, too slow for a 100k+ backlog (the benchmarks use an
//     amortised in-memory queue from the tests).
//   - Throughput with a small Receive Maximum is bound by round trips: with
//     a window of 20 and a 50 ms RTT it cannot exceed 400 msg/s.
package uplink
