// Package loadgen is Outpost's MQTT load generator, the engine behind
// `outpost bench`: N publishers and M subscribers against any MQTT 3.1.1 or
// 5 broker, reporting throughput, loss and end-to-end latency.
//
// # Usage
//
//	res, err := loadgen.Run(ctx, loadgen.Config{
//		URL:         "tcp://127.0.0.1:1883",
//		Publishers:  10,
//		Subscribers: 1,
//		PayloadSize: 200,
//		Rate:        10_000, // aggregate msg/s; 0 = as fast as possible
//		Duration:    10 * time.Second,
//		Progress:    os.Stderr,
//	})
//	if res != nil {
//		res.WriteText(os.Stdout) // or json.Marshal(res)
//	}
//
// Subscribers connect and subscribe first, then publishers connect, then
// the publish phase runs for Duration and/or until Count messages are sent,
// then a drain phase waits (at most Config.Drain) for the subscribers to
// receive what was sent. Every loop is bounded by those limits.
//
// # What is measured
//
// Each payload carries a run id, the publisher index, a per-publisher
// sequence number and the send time in nanoseconds since a start instant of
// this process (monotonic clock), in a binary header or in fixed-width
// fields of a realistic sensor JSON document (see PayloadJSON). Each
// subscriber tracks sequence numbers per publisher: a message never seen is
// lost, one seen twice is a duplicate, one below the highest seen is out of
// order (within a 65,536-message window; older stragglers count as out of
// order). End-to-end latency (receive time − send time) goes into an HDR
// histogram (1 ns–60 s, 3 significant digits). QoS 1 publishers also record
// PUBLISH→PUBACK latency. The load generator's own CPU time (getrusage) and,
// given Config.BrokerPID, a local broker's CPU and RSS from /proc are
// reported beside the results, because on a small machine the load
// generator competes with the broker for the same cores.
//
// # Hot path
//
// The client is written for throughput, not generality: each publisher owns
// pre-encoded PUBLISH packets (one per topic) whose packet identifier,
// sequence number and timestamp bytes are patched in place and appended to
// a bufio.Writer; each connection has one reader goroutine with a
// hand-written fixed-header parser that hands out views into its
// bufio.Reader without copying. QoS 1 publishers keep a window of
// Config.Inflight outstanding PUBLISHes (capped by the broker's MQTT 5
// Receive Maximum). Fixed rates are paced per publisher against an absolute
// schedule (falling behind sends a burst, it never lowers the rate), and
// publishers are staggered over one send interval.
//
// # Caveats
//
//   - Only QoS 0 and 1; no retained messages, sessions or reconnects: a
//     connection that fails mid-run ends that client and is reported
//     (ErrConnectionLost) beside the partial Result.
//   - Loss assumes every subscriber's filter matches every publisher's
//     topic; a narrower SubTopic makes the unmatched messages count as lost.
//   - Payload timestamps are only meaningful to subscribers in the same
//     process; messages from another run or client are counted as foreign.
//   - The broker parser treats all input as untrusted (fuzzed by
//     FuzzPacketReader and FuzzParsers) and rejects packets larger than
//     Config.MaxPacketSize.
package loadgen
