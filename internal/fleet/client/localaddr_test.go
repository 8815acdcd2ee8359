package client_test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/client"
	"github.com/outpost-edge/outpost/internal/fleet/fleettest"
	"github.com/outpost-edge/outpost/internal/fleet/server"
)

// Options.LocalAddr: the gateway's connection to the server comes from
// that address (load tests spread over 127.0.0.2, ...); a bad one is
// refused naming it.
func TestSyncerLocalAddr(t *testing.T) {
	srv := fleettest.Start(t, t.TempDir(), "", server.Options{})
	dir := filepath.Join(t.TempDir(), "fleet")
	if err := client.Enroll(context.Background(), client.EnrollOptions{Server: srv.URL, Token: srv.Token(t, nil, "1h"), CAPEM: srv.CA, ID: "gw-src", Dir: dir}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.New(context.Background(), client.Options{Dir: dir, Applier: &memApplier{applied: map[string]string{}}, LocalAddr: "nope"}); err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Fatalf("bad local address: %v", err)
	}
	app := &memApplier{applied: map[string]string{}}
	ctx, cancel := context.WithCancel(context.Background())
	s, err := client.New(ctx, client.Options{Dir: dir, Applier: app, LocalAddr: "127.0.0.7"})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); s.Run(ctx) }()
	defer func() { cancel(); wg.Wait() }()
	fleettest.Eventually(t, 30*time.Second, "connected", func() bool { return s.State().Connected })
	u, _ := url.Parse(srv.URL)
	var port int
	fmt.Sscanf(u.Port(), "%d", &port)
	// /proc/net/tcp: local 127.0.0.7 (0700007F) -> the server's port.
	want := "0700007F:"
	remote := fmt.Sprintf("0100007F:%04X", port)
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Skip("no /proc/net/tcp:", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 3 && strings.HasPrefix(f[1], want) && f[2] == remote && f[3] == "01" { // ESTABLISHED
			return
		}
	}
	t.Fatalf("no established connection from 127.0.0.7 to port %d in /proc/net/tcp", port)
}
