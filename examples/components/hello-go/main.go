// Command hello-go is a minimal Outpost component in Go. It shows the
// whole component contract:
//
//   - connect to the local bus with the credentials the supervisor passes in
//     OUTPOST_MQTT_URL (unix:///path/to/socket), OUTPOST_MQTT_USERNAME and
//     OUTPOST_MQTT_PASSWORD (any MQTT client library works; this one uses
//     github.com/eclipse/paho.golang);
//   - read its configuration from OUTPOST_CONFIG (JSON);
//   - publish a heartbeat on components/<name>/heartbeat (the recipe's MQTT
//     health check watches it);
//   - answer requests on components/<name>/ping with components/<name>/pong;
//   - exit cleanly on SIGTERM.
//
// Build it static: CGO_ENABLED=0 go build -o hello-go ./examples/components/hello-go
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"net"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

type config struct {
	HeartbeatMS int    `json:"heartbeat_ms"`
	Greeting    string `json:"greeting"`
}

func main() {
	log.SetFlags(0)
	name := os.Getenv("OUTPOST_COMPONENT_NAME")
	cfg := config{HeartbeatMS: 1000, Greeting: "hello"}
	if s := os.Getenv("OUTPOST_CONFIG"); s != "" {
		if err := json.Unmarshal([]byte(s), &cfg); err != nil {
			log.Fatalf("bad configuration: %v", err)
		}
	}
	conn, err := dial(os.Getenv("OUTPOST_MQTT_URL"))
	if err != nil {
		log.Fatalf("connect to the local bus: %v", err)
	}
	prefix := "components/" + name + "/"
	var client *paho.Client
	client = paho.NewClient(paho.ClientConfig{
		Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			if pr.Packet.Topic == prefix+"ping" {
				reply := fmt.Sprintf("%s: %s", cfg.Greeting, pr.Packet.Payload)
				_, err := client.Publish(context.Background(), &paho.Publish{Topic: prefix + "pong", Payload: []byte(reply)})
				if err != nil {
					log.Printf("pong: %v", err)
				}
			}
			return true, nil
		}},
		OnClientError: func(err error) { log.Fatalf("bus connection lost: %v", err) },
		OnServerDisconnect: func(d *paho.Disconnect) {
			log.Fatalf("disconnected by the bus (reason %d)", d.ReasonCode)
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ca, err := client.Connect(ctx, &paho.Connect{
		ClientID:     name,
		Username:     os.Getenv("OUTPOST_MQTT_USERNAME"),
		UsernameFlag: true,
		Password:     []byte(os.Getenv("OUTPOST_MQTT_PASSWORD")),
		PasswordFlag: true,
		KeepAlive:    30,
		CleanStart:   true,
	})
	if err != nil {
		log.Fatalf("connect: %v (%+v)", err, ca)
	}
	if _, err := client.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: prefix + "ping", QoS: 0}}}); err != nil {
		log.Fatalf("subscribe: %v", err)
	}
	fmt.Println("hello-go ready, heartbeat every", time.Duration(cfg.HeartbeatMS)*time.Millisecond)

	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM, syscall.SIGINT)
	tick := time.NewTicker(time.Duration(cfg.HeartbeatMS) * time.Millisecond)
	defer tick.Stop()
	beat := func() {
		if _, err := client.Publish(context.Background(), &paho.Publish{Topic: prefix + "heartbeat", Payload: []byte(time.Now().UTC().Format(time.RFC3339Nano))}); err != nil {
			log.Printf("heartbeat: %v", err)
		}
	}
	beat()
	for {
		select {
		case <-tick.C:
			beat()
		case <-term:
			_ = client.Disconnect(&paho.Disconnect{})
			fmt.Println("hello-go stopped")
			return
		}
	}
}

// dial opens the bus connection from OUTPOST_MQTT_URL: unix:///path or
// mqtt://host:port (tcp).
func dial(raw string) (net.Conn, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	switch u.Scheme {
	case "unix":
		return net.Dial("unix", u.Path)
	case "mqtt", "tcp":
		return net.Dial("tcp", u.Host)
	}
	return nil, fmt.Errorf("unsupported bus URL %q", raw)
}
