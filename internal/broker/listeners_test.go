package broker

import (
	"context"
	"github.com/outpost-edge/outpost/internal/message"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/loadgen"
)

// TestEveryListenerCarriesTraffic: the same QoS 1 run through the TCP,
// WebSocket and Unix-socket listeners of one broker, authenticated, 0 lost.
func TestEveryListenerCarriesTraffic(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "mqtt.sock")
	wsPort := freeAddr(t)
	c := baseConfig(t)
	c.Listeners = []Listener{
		{Name: "tcp", Type: TypeTCP, Address: "127.0.0.1:0"},
		{Name: "ws", Type: TypeWS, Address: wsPort},
		{Name: "unix", Type: TypeUnix, Path: sock},
	}
	tb := startBroker(t, c, "")
	for _, url := range []string{"tcp://" + tb.addr, "ws://" + wsPort + "/", "unix://" + sock} {
		t.Run(url, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			res, err := loadgen.Run(ctx, loadgen.Config{URL: url, Username: "admin", Password: "secret",
				Publishers: 2, Subscribers: 1, QoS: 1, Count: 500, Topic: "lt/{client}/x"})
			if err != nil {
				t.Fatal(err)
			}
			if res.Sent != 500 || res.Lost != 0 || res.Unique != 500 {
				t.Fatalf("sent %d unique %d lost %d", res.Sent, res.Unique, res.Lost)
			}
		})
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// A WebSocket listener binds when the broker starts: connecting right after
// Start never gets "connection refused", and an address already in use
// fails the start instead of only being logged (fork patch 24).
func TestWebSocketListenerBindsAtStart(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	c := baseConfig(t)
	c.Listeners = []Listener{{Name: "ws", Type: TypeWS, Address: busy.Addr().String()}}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	b := New(Options{DataDir: t.TempDir(), OnPublish: func(*message.Message) error { return nil }})
	ctx := context.Background()
	err = b.Init(ctx, c)
	if err == nil {
		err = b.Start(ctx)
	}
	b.Stop(ctx)
	if err == nil {
		t.Fatal("a ws listener on an address in use started without an error")
	}

	for i := 0; i < 20; i++ {
		c := baseConfig(t)
		c.Listeners = []Listener{{Name: "ws", Type: TypeWS, Address: "127.0.0.1:0"}}
		tb := startBroker(t, c, "")
		conn, err := net.Dial("tcp", tb.addr)
		if err != nil {
			t.Fatalf("start %d: dial right after Start: %v", i, err)
		}
		conn.Close()
		tb.Stop(ctx)
	}
}
