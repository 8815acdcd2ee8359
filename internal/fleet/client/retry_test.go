package client_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/client"
	"github.com/outpost-edge/outpost/internal/fleet/fleettest"
	"github.com/outpost-edge/outpost/internal/fleet/proto"
	"github.com/outpost-edge/outpost/internal/fleet/server"
)

// flakyApplier fails the first failures applies of each content with
// ErrRetry (a download that did not work yet), and a permanent error for
// a spec containing BROKEN.
type flakyApplier struct {
	memApplier
	mu       sync.Mutex
	failures int
	tries    map[string]int
}

func (f *flakyApplier) Apply(ctx context.Context, d proto.Desired) error {
	f.mu.Lock()
	f.tries[string(d.Spec)]++
	n := f.tries[string(d.Spec)]
	f.mu.Unlock()
	if !strings.Contains(string(d.Spec), "BROKEN") && n <= f.failures {
		return fmt.Errorf("fetching %s: connection refused (%w)", d.Name, client.ErrRetry)
	}
	return f.memApplier.Apply(ctx, d)
}

func (f *flakyApplier) triesOf(spec string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tries[spec]
}

// TestApplyRetriedWithBackoff: an object whose apply fails with ErrRetry
// is applied again by the syncer itself (2 s, then 4 s) with no new
// version of the object, and the applied condition reaches the server; a
// permanent error is not retried.
func TestApplyRetriedWithBackoff(t *testing.T) {
	srv := fleettest.Start(t, t.TempDir(), "", server.Options{})
	dir := enroll(t, srv, "gw", map[string]string{"site": "a"})
	app := &flakyApplier{memApplier: memApplier{applied: map[string]string{}}, failures: 2, tries: map[string]int{}}
	startSyncer(t, dir, app)
	srv.MustDo(t, "PUT", "/api/v1/objects/ruleset/fn", fleettest.RuleSet("v1", nil), 200, nil)
	spec := `{"sql":"v1"}`
	fleettest.Eventually(t, 30*time.Second, "applied after two retried failures", func() bool {
		c, ok := condition(gateway(t, srv, "gw"), "ruleset/fn")
		return ok && c.Applied && app.get("ruleset/fn") == spec
	})
	if n := app.triesOf(spec); n != 3 {
		t.Fatalf("%d applies, want 3 (two failures, then success)", n)
	}
	srv.MustDo(t, "PUT", "/api/v1/objects/ruleset/bad", fleettest.RuleSet("BROKEN", nil), 200, nil)
	fleettest.Eventually(t, 30*time.Second, "the broken one reported", func() bool {
		c, ok := condition(gateway(t, srv, "gw"), "ruleset/bad")
		return ok && !c.Applied && strings.Contains(c.Error, "BROKEN")
	})
	time.Sleep(3 * time.Second) // longer than the first retry delay
	if n := app.triesOf(`{"sql":"BROKEN"}`); n != 1 {
		t.Fatalf("a permanent error was applied %d times, want 1", n)
	}
}

// TestLiveFiguresReported: Options.Live is polled and a change is reported
// as facts without any change to the desired state.
func TestLiveFiguresReported(t *testing.T) {
	srv := fleettest.Start(t, t.TempDir(), "", server.Options{})
	dir := enroll(t, srv, "gw", map[string]string{"site": "a"})
	var mu sync.Mutex
	rate := "0"
	ctx, cancel := context.WithCancel(context.Background())
	s, err := client.New(ctx, client.Options{Dir: dir, Applier: &memApplier{applied: map[string]string{}}, ReconnectMax: 200 * time.Millisecond,
		LiveEvery: 50 * time.Millisecond, Live: func() map[string]string {
			mu.Lock()
			defer mu.Unlock()
			return map[string]string{"msg_rate": rate, "queue_depth": "7"}
		}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	fleettest.Eventually(t, 20*time.Second, "live figures reported", func() bool {
		g := gateway(t, srv, "gw")
		return g.Facts["msg_rate"] == "0" && g.Facts["queue_depth"] == "7"
	})
	mu.Lock()
	rate = "120"
	mu.Unlock()
	fleettest.Eventually(t, 20*time.Second, "the new rate reported", func() bool {
		return gateway(t, srv, "gw").Facts["msg_rate"] == "120"
	})
}
