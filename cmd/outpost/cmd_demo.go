package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"

	"github.com/outpost-edge/outpost/examples"
	"github.com/outpost-edge/outpost/internal/agent"
	"github.com/outpost-edge/outpost/internal/config"
	fleetclient "github.com/outpost-edge/outpost/internal/fleet/client"
	"github.com/outpost-edge/outpost/internal/telemetry"
)

func init() {
	register(&command{name: "demo", summary: "run the agent with a simulated sensor fleet and show messages flowing", run: runDemo})
}

func runDemo(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	devices := fs.Int("devices", 5, "simulated sensors")
	rate := fs.Float64("rate", 5, "messages per second per sensor")
	port := fs.Int("port", 1883, "MQTT port on 127.0.0.1 (0 = any free port)")
	httpPort := fs.Int("http-port", 9100, "telemetry port on 127.0.0.1 (0 = any free port)")
	duration := fs.Duration("duration", 0, "stop after this long (0 = until Ctrl-C)")
	dataDir := fs.String("data", "outpost-demo-data", "directory for the demo's broker store, rule and JSON-lines file")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), helpText("outpost demo [--devices N] [--rate R] [--duration D]",
			`Start Outpost on its embedded demo config (examples/demo.yaml): the broker on
127.0.0.1, a route that republishes sensor data to demo/processed/<device> and
archives it to a JSON-lines file, and a rule that raises demo/alerts/<device>
when a sensor's 5 s average temperature exceeds 30 °C. Simulated sensors
publish over MQTT; a summary line every 2 s shows messages flowing.`,
			"outpost demo",
			"outpost demo --devices 20 --rate 50 --duration 30s",
			"mosquitto_sub -h 127.0.0.1 -p 1883 -t 'demo/#' -v   # in another terminal"))
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if *devices < 1 || *rate <= 0 {
		fmt.Fprintln(os.Stderr, "outpost demo: --devices and --rate must be positive")
		return exitUsage
	}
	raw, _ := examples.Read("demo.yaml")
	text := strings.ReplaceAll(string(raw), "outpost-demo-data", *dataDir)
	text = strings.Replace(text, "127.0.0.1:1883", fmt.Sprintf("127.0.0.1:%d", *port), 1)
	text = strings.Replace(text, "address: 127.0.0.1:9100", fmt.Sprintf("address: 127.0.0.1:%d", *httpPort), 1)
	var cfg agent.Config
	if err := config.Parse("examples/demo.yaml", []byte(text), &cfg, config.Options{NoEnv: true}); err != nil {
		printConfigError(err)
		return exitFailure
	}
	// The demo's rule file, written where the config points.
	if err := os.MkdirAll(cfg.Rules.Dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "outpost demo:", err)
		return exitFailure
	}
	rule, _ := examples.Read("demo-rules/hot.sql")
	if err := os.WriteFile(filepath.Join(cfg.Rules.Dir, "hot.sql"), rule, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "outpost demo:", err)
		return exitFailure
	}
	// Enrolled with a fleet server (outpost enroll --data DIR): stay in sync.
	if _, err := os.Stat(filepath.Join(*dataDir, "fleet", "server.json")); err == nil {
		cfg.Fleet = &fleetclient.Config{Dir: filepath.Join(*dataDir, "fleet")}
		cfg.Fleet.SetDefaults()
	}
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	logs := telemetry.NewLogs(os.Stderr, cfg.Log)
	a, err := agent.New(&cfg, "", logs)
	if err != nil {
		fmt.Fprintln(os.Stderr, "outpost demo:", err)
		return exitFailure
	}
	errc := make(chan error, 1)
	go func() { errc <- a.Run(ctx) }()
	select {
	case <-a.Ready:
	case err := <-errc:
		fmt.Fprintf(os.Stderr, "outpost demo: %v\n", err)
		if strings.Contains(err.Error(), "address already in use") {
			fmt.Fprintln(os.Stderr, "hint: another broker or agent uses that port; try: outpost demo --port 0 --http-port 0")
		}
		return exitFailure
	}
	addr := a.Broker.Addr("tcp")
	_, p, _ := net.SplitHostPort(addr)
	fmt.Printf("\nOutpost demo running: MQTT on %s, metrics on http://%s/metrics\n", addr, a.Telemetry.Addr())
	fmt.Printf("Watch it:  mosquitto_sub -h 127.0.0.1 -p %s -t 'demo/#' -v\n", p)
	fmt.Printf("Archive:   %s\n\n", cfg.Pipeline.Sinks[1].File.Path)

	var sent, alerts, processed atomic.Int64
	var wg sync.WaitGroup
	simCtx, stopSim := context.WithCancel(ctx)
	defer stopSim()
	if err := watch(simCtx, addr, &alerts, &processed); err != nil {
		fmt.Fprintln(os.Stderr, "outpost demo: watcher:", err)
	}
	for i := 1; i <= *devices; i++ {
		wg.Add(1)
		go func(id int) {
			defer wg.Done()
			if err := simulate(simCtx, addr, id, *rate, &sent); err != nil && simCtx.Err() == nil {
				fmt.Fprintf(os.Stderr, "sensor-%d: %v\n", id, err)
			}
		}(i)
	}
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	start, lastSent, lastProc := time.Now(), int64(0), int64(0)
	for {
		select {
		case <-t.C:
			s, pr := sent.Load(), processed.Load()
			fmt.Printf("%6s  sensors=%d  published=%d (%.0f/s)  processed=%d (%.0f/s)  alerts=%d  clients=%d\n",
				time.Since(start).Round(time.Second), *devices, s, float64(s-lastSent)/2, pr, float64(pr-lastProc)/2,
				alerts.Load(), a.Broker.Clients())
			lastSent, lastProc = s, pr
		case err := <-errc:
			stopSim()
			wg.Wait()
			if err != nil {
				fmt.Fprintln(os.Stderr, "outpost demo:", err)
				return exitFailure
			}
			fmt.Printf("demo stopped: %d published, %d processed, %d alerts\n", sent.Load(), processed.Load(), alerts.Load())
			return exitOK
		}
	}
}

func dialMQTT(ctx context.Context, addr, id string, onMsg func(*paho.Publish)) (*paho.Client, error) {
	conn, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	// NewThreadSafeConn: paho writes a packet with several Writes and
	// serialises them only on a sync.Locker connection (see docs/broker.md).
	cc := paho.ClientConfig{ClientID: id, Conn: packets.NewThreadSafeConn(conn)}
	if onMsg != nil {
		cc.OnPublishReceived = []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			onMsg(pr.Packet)
			return true, nil
		}}
	}
	c := paho.NewClient(cc)
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := c.Connect(cctx, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true}); err != nil {
		conn.Close()
		return nil, err
	}
	go func() { <-ctx.Done(); c.Disconnect(&paho.Disconnect{}) }()
	return c, nil
}

// simulate publishes realistic sensor JSON at rate msg/s: a slow sine around
// a per-device baseline plus noise; every few minutes a device runs hot.
func simulate(ctx context.Context, addr string, id int, rate float64, sent *atomic.Int64) error {
	name := fmt.Sprintf("sensor-%d", id)
	c, err := dialMQTT(ctx, addr, name, nil)
	if err != nil {
		return err
	}
	topic := "sensors/" + name + "/telemetry"
	base := 20 + float64(id%5)*2.5
	tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer tick.Stop()
	for seq := 1; ; seq++ {
		select {
		case <-ctx.Done():
			return nil
		case now := <-tick.C:
			phase := float64(now.UnixMilli()%120000) / 120000 * 2 * math.Pi
			temp := base + 6*math.Sin(phase+float64(id)) + rand.NormFloat64()*0.3
			if id == 1 && now.Unix()%60 < 20 {
				temp += 12 // sensor-1 overheats for 20 s every minute
			}
			payload, _ := json.Marshal(map[string]any{
				"device_id": name, "seq": seq, "ts": now.UnixMilli(),
				"temp": math.Round(temp*100) / 100, "humidity": math.Round((45+rand.Float64()*10)*10) / 10,
				"quality": "good",
			})
			if _, err := c.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: payload}); err != nil {
				return err
			}
			sent.Add(1)
		}
	}
}

// watch subscribes to what the pipeline and rules produce.
func watch(ctx context.Context, addr string, alerts, processed *atomic.Int64) error {
	c, err := dialMQTT(ctx, addr, "demo-watcher", func(p *paho.Publish) {
		if strings.HasPrefix(p.Topic, "demo/alerts/") {
			alerts.Add(1)
			fmt.Printf("ALERT  %s %s\n", p.Topic, p.Payload)
		} else {
			processed.Add(1)
		}
	})
	if err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err = c.Subscribe(sctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "demo/#", QoS: 0}}})
	return err
}
