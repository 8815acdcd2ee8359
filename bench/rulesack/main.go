// Command rulesack measures what a QoS 1 publish costs when its PUBACK
// waits for durability through the rule engine: 16 devices publish 300
// sequenced QoS 1 messages each (one in flight per device) into an `outpost
// run` process whose uplink lane is fsynced (fsync: always) and whose cloud
// broker is unreachable (the lane just fills). Modes: a direct route to the
// lane (the reference, new binary only), a per-message UPLINK rule, and a
// tumbling-window UPLINK rule (PUBACK after the state checkpoint). Each
// binary given is run in every rule mode, twice, side by side.
//
// Usage: go run ./bench/rulesack OLD_OUTPOST_BINARY NEW_OUTPOST_BINARY
package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

func freePort() string {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	defer l.Close()
	return l.Addr().String()
}

func run(bin string, window, direct bool) {
	dir, _ := os.MkdirTemp("", "rulesdur-measure")
	defer os.RemoveAll(dir)
	os.MkdirAll(filepath.Join(dir, "rules"), 0o755)
	rule := `CREATE RULE fwd AS SELECT seq FROM 'sensors/+' DO UPLINK LANE 'telemetry' TOPIC 'r/${topic(2)}';`
	if window {
		rule = `CREATE RULE agg AS SELECT count(*) AS n FROM 'sensors/+' GROUP BY deviceid(), TUMBLINGWINDOW(ss, 1) DO UPLINK LANE 'telemetry' TOPIC 'agg';`
	}
	os.WriteFile(filepath.Join(dir, "rules", "r.sql"), []byte(rule), 0o644)
	mqttAddr, httpAddr, cloud := freePort(), freePort(), freePort()
	cfg := fmt.Sprintf("node_id: gw\ndata_dir: %s/data\ntelemetry: {address: %q}\nbroker:\n  listeners: [{type: tcp, address: %q}]\n  allow_anonymous: true\n  anonymous_acl: [{topic: \"#\", access: all}]\nrules: {dir: %s/rules}\nuplink:\n  enabled: true\n  broker: mqtt://%s\n  lanes: [{name: telemetry}]\n", dir, httpAddr, mqttAddr, dir, cloud)
	if direct {
		cfg = strings.Replace(cfg, "rules: {dir: "+dir+"/rules}\n", "pipeline: {routes: [{from: [\"sensors/#\"], to: [\"uplink:telemetry\"]}]}\n", 1)
	}
	os.WriteFile(filepath.Join(dir, "o.yaml"), []byte(cfg), 0o600)
	cmd := exec.Command(bin, "run", "--config", filepath.Join(dir, "o.yaml"))
	cmd.Start()
	defer func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() }()
	for {
		r, err := http.Get("http://" + httpAddr + "/readyz")
		if err == nil && r.StatusCode == 200 {
			r.Body.Close()
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	const pubs, per = 16, 300
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	t0 := time.Now()
	for p := 0; p < pubs; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			conn, _ := net.Dial("tcp", mqttAddr)
			c := paho.NewClient(paho.ClientConfig{ClientID: fmt.Sprint("d", p), Conn: conn})
			c.Connect(context.Background(), &paho.Connect{ClientID: fmt.Sprint("d", p), KeepAlive: 30, CleanStart: true})
			for i := 0; i < per; i++ {
				s := time.Now()
				_, err := c.Publish(context.Background(), &paho.Publish{Topic: fmt.Sprint("sensors/d", p), QoS: 1, Payload: []byte(fmt.Sprintf(`{"seq":%d}`, i))})
				if err != nil {
					panic(err)
				}
				mu.Lock()
				lat = append(lat, time.Since(s))
				mu.Unlock()
			}
		}(p)
	}
	wg.Wait()
	el := time.Since(t0)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	fmt.Printf("%-14s direct=%-5v window=%-5v %5d msgs %6.0f msg/s  PUBACK p50 %6.2fms p99 %6.2fms\n", filepath.Base(bin), direct, window, len(lat), float64(len(lat))/el.Seconds(),
		float64(lat[len(lat)/2].Microseconds())/1000, float64(lat[len(lat)*99/100].Microseconds())/1000)
}

func main() {
	for round := 0; round < 2; round++ {
		run(os.Args[2], false, true)
		for _, w := range []bool{false, true} {
			for _, b := range os.Args[1:] {
				run(b, w, false)
			}
		}
	}
}
