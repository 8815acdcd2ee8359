package client_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/client"
	"github.com/outpost-edge/outpost/internal/fleet/fleettest"
	"github.com/outpost-edge/outpost/internal/fleet/server"
	"github.com/outpost-edge/outpost/internal/fleet/store"
	"github.com/outpost-edge/outpost/internal/fleet/store/sqlite"
)

// sharedStore lets two in-process replicas use one store; only the last
// one to stop closes it.
type sharedStore struct{ store.Store }

func (sharedStore) Close() error { return nil }

// A gateway given two replicas moves to the other when the one it watches
// stops, and changes made there reach it.
func TestFailoverToAnotherReplica(t *testing.T) {
	st, err := sqlite.Open(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	a := fleettest.StartWith(t, sharedStore{st}, "", server.Options{Keepalive: 200 * time.Millisecond})
	b := fleettest.StartWith(t, st, "", server.Options{Keepalive: 200 * time.Millisecond})
	b.Admin = a.Admin // made by the first replica on the shared store
	dir := filepath.Join(t.TempDir(), "fleet")
	if err := client.Enroll(context.Background(), client.EnrollOptions{Server: a.URL, Token: a.Token(t, nil, "1h"), CAPEM: a.CA, ID: "gw-ha", Dir: dir}); err != nil {
		t.Fatal(err)
	}
	app := &memApplier{applied: map[string]string{}}
	logs := &fleettest.SyncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	s, err := client.New(ctx, client.Options{Dir: dir, Servers: []string{b.URL}, Applier: app, ReconnectMax: time.Second,
		Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); s.Run(ctx) }()
	defer func() { cancel(); wg.Wait() }()
	a.MustDo(t, "PUT", "/api/v1/objects/ruleset/r1", map[string]any{"spec": map[string]string{"sql": "v1"}}, 200, nil)
	fleettest.Eventually(t, 5*time.Second, "r1 applied through replica A", func() bool { return app.get("ruleset/r1") != "" })
	fleettest.Eventually(t, 5*time.Second, "watching replica A first", func() bool {
		return strings.Contains(logs.String(), `msg="fleet: watching" server=`+a.URL)
	})
	a.Stop()
	b.MustDo(t, "PUT", "/api/v1/objects/ruleset/r2", map[string]any{"spec": map[string]string{"sql": "v2"}}, 200, nil)
	fleettest.Eventually(t, 5*time.Second, "r2 applied through replica B", func() bool { return app.get("ruleset/r2") != "" })
	if !strings.Contains(logs.String(), "trying the next replica") {
		t.Fatalf("no failover logged:\n%s", logs.String())
	}
	fleettest.Eventually(t, 5*time.Second, "status recorded through replica B", func() bool {
		var g store.Gateway
		b.MustDo(t, "GET", "/api/v1/gateways/gw-ha", nil, 200, &g)
		c, ok := condition(g, "ruleset/r2")
		return ok && c.Applied
	})
}
