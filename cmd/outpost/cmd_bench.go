//go:build !nobench

package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/outpost-edge/outpost/internal/loadgen"
)

func init() {
	register(&command{name: "bench", summary: "load-test an MQTT broker: throughput, loss and latency", run: runBench})
}

func runBench(ctx context.Context, args []string) int {
	return benchMain(ctx, args, os.Stdout, os.Stderr)
}

func benchMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c loadgen.Config
	var mqttVersion, payload string
	var asJSON, quiet bool
	fs.StringVar(&c.URL, "url", "tcp://127.0.0.1:1883", "broker `URL`: tcp://host:port, ssl://host:port, unix:///path.sock, ws://host:port/path, wss://")
	fs.StringVar(&mqttVersion, "mqtt", "3.1.1", "MQTT protocol `version`: 3.1.1 or 5")
	fs.IntVar(&c.Publishers, "publishers", 1, "number of publishing connections")
	fs.IntVar(&c.Subscribers, "subscribers", 1, "number of subscribing connections (each receives every message; 0 = publish only)")
	fs.IntVar(&c.QoS, "qos", 0, "QoS of publishes and subscriptions: 0 or 1")
	fs.StringVar(&c.Topic, "topic", "bench/{client}/sensors/{n}", "publish topic `template`: {client} client id, {i} publisher index, {n} 0..topics-1")
	fs.IntVar(&c.Topics, "topics", 1, "distinct {n} topics per publisher, cycled message by message")
	fs.StringVar(&c.SubURL, "sub-url", "", "subscribers connect to this broker `URL` instead of --url (measure through a gateway uplink or a bridge)")
	fs.StringVar(&c.SubUsername, "sub-username", "", "MQTT user name for --sub-url (default --username)")
	fs.StringVar(&c.SubPassword, "sub-password", "", "MQTT password for --sub-url (default --password)")
	fs.StringVar(&c.SubTopic, "sub-topic", "", "subscription `filter` (default: the template with placeholder levels replaced by +)")
	fs.StringVar(&payload, "payload", "binary", "payload `format`: binary (28-byte header + filler) or json (sensor reading padded to size)")
	fs.IntVar(&c.PayloadSize, "payload-size", 200, "payload size in `bytes` (min 28 binary, 148 json)")
	fs.Float64Var(&c.Rate, "rate", 0, "aggregate publish rate in `msg/s` over all publishers; 0 = as fast as possible")
	fs.DurationVar(&c.Duration, "duration", 10*time.Second, "length of the publish phase (0 = until --count; default 10s unless --count is given)")
	fs.Int64Var(&c.Count, "count", 0, "total messages to publish over all publishers (0 = until --duration)")
	fs.StringVar(&c.Username, "username", "", "MQTT user name")
	fs.StringVar(&c.Password, "password", "", "MQTT password (or set OUTPOST_BENCH_PASSWORD)")
	fs.StringVar(&c.ClientPrefix, "client-prefix", "", "client id prefix: <prefix>-p<i>, <prefix>-s<i> (default bench-<run id>)")
	fs.IntVar(&c.Inflight, "inflight", 64, "QoS 1 window of unacknowledged publishes per publisher (capped by the broker's Receive Maximum)")
	fs.StringVar(&c.CAFile, "cacert", "", "PEM `file` of CA certificates that verify the broker (ssl://, wss://)")
	fs.StringVar(&c.CertFile, "cert", "", "PEM client certificate `file` for mutual TLS")
	fs.StringVar(&c.KeyFile, "key", "", "PEM client key `file` for mutual TLS")
	fs.BoolVar(&c.Insecure, "insecure", false, "do not verify the broker's certificate")
	fs.DurationVar(&c.ConnectTimeout, "connect-timeout", 10*time.Second, "timeout of each connect and subscribe")
	fs.DurationVar(&c.Drain, "drain", 10*time.Second, "longest wait after publishing for messages still in flight")
	fs.DurationVar(&c.KeepAlive, "keepalive", 60*time.Second, "MQTT keep alive")
	fs.IntVar(&c.MaxPacketSize, "max-packet-size", 1<<20, "largest packet accepted from the broker, in `bytes`")
	fs.IntVar(&c.BrokerPID, "broker-pid", 0, "`pid` of a local broker whose CPU and RSS are reported from /proc")
	fs.BoolVar(&asJSON, "json", false, "print the result as JSON on stdout")
	fs.BoolVar(&quiet, "quiet", false, "no progress lines on stderr")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), helpText("outpost bench [flags]",
			`Load-test an MQTT broker (Outpost's, Mosquitto, any MQTT 3.1.1 or 5 broker).
Subscribers connect and subscribe, publishers publish for --duration and/or
--count messages, then the run drains and reports messages per second sent and
received, lost, duplicate and out-of-order messages (by sequence number per
publisher), end-to-end latency percentiles (HDR histogram), QoS 1 PUBACK
latency, and the load generator's own CPU time. A progress line goes to stderr
every second. Exit status 1 if a client cannot connect or a connection fails.

The load generator shares the machine with a local broker: at max rate you
measure both. Prefer fixed rates (--rate) for latency, and compare brokers
side by side in one run (bench/broker_vs_mosquitto.sh).`,
			"outpost bench --url tcp://127.0.0.1:1883 --publishers 10 --subscribers 1 --duration 10s",
			"outpost bench --publishers 10 --rate 10000 --payload json --payload-size 200 --json",
			"outpost bench --url ssl://gw.local:8883 --cacert ca.pem --username bench --qos 1 --count 100000",
			"outpost bench --url unix:///run/outpost/mqtt.sock --mqtt 5 --qos 1 --duration 20s"))
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "outpost bench: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	switch mqttVersion {
	case "3.1.1", "4":
		c.MQTTVersion = 4
	case "5", "5.0":
		c.MQTTVersion = 5
	default:
		fmt.Fprintf(stderr, "outpost bench: --mqtt %q: want 3.1.1 or 5\n", mqttVersion)
		return exitUsage
	}
	durationSet := false
	fs.Visit(func(f *flag.Flag) { durationSet = durationSet || f.Name == "duration" })
	if c.Count > 0 && !durationSet {
		c.Duration = 0 // --count alone: run until the count is sent
	}
	c.Payload = loadgen.PayloadKind(payload)
	if c.Password == "" {
		c.Password = os.Getenv("OUTPOST_BENCH_PASSWORD")
	}
	if !quiet {
		c.Progress = stderr
	}
	// Validate up front so bad flags exit 2 rather than 1.
	check := c
	check.SetDefaults()
	if err := check.Validate(); err != nil {
		fmt.Fprintf(stderr, "outpost bench: invalid flags:\n%v\n", err)
		return exitUsage
	}
	res, err := loadgen.Run(ctx, c)
	if res != nil {
		if asJSON {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			if err := enc.Encode(res); err != nil {
				fmt.Fprintf(stderr, "outpost bench: %v\n", err)
				return exitFailure
			}
		} else {
			res.WriteText(stdout)
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "outpost bench: %v\n", err)
		if errors.Is(err, loadgen.ErrNotAuthorized) {
			fmt.Fprintln(stderr, "hint: check --username and --password (or OUTPOST_BENCH_PASSWORD)")
		}
		return exitFailure
	}
	return exitOK
}
