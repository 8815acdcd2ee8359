package client_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/fleettest"
	"github.com/outpost-edge/outpost/internal/fleet/server"
)

// Automatic compaction keeps the last CompactKeep change-log events; a
// gateway that was away for more changes than that re-lists when it comes
// back and converges, and one that stayed connected never notices.
func TestAutomaticCompaction(t *testing.T) {
	srv := fleettest.Start(t, t.TempDir(), "", server.Options{CompactKeep: 3, CompactEvery: 50 * time.Millisecond})
	dirOn := enroll(t, srv, "gw-on", nil)
	dirAway := enroll(t, srv, "gw-away", nil)
	on, away := &memApplier{applied: map[string]string{}}, &memApplier{applied: map[string]string{}}
	startSyncer(t, dirOn, on)
	_, stopAway := startSyncer(t, dirAway, away)
	put := func(id, sql string) {
		srv.MustDo(t, "PUT", "/api/v1/objects/ruleset/"+id, map[string]any{"spec": map[string]string{"sql": sql}}, 200, nil)
	}
	put("r0", "v0")
	fleettest.Eventually(t, 5*time.Second, "both gateways apply r0", func() bool {
		return on.get("ruleset/r0") != "" && away.get("ruleset/r0") != ""
	})
	stopAway()
	for i := 1; i <= 10; i++ {
		put(fmt.Sprintf("r%d", i), fmt.Sprintf("v%d", i))
	}
	ctx := context.Background()
	cur, err := srv.Store.CurrentRV(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fleettest.Eventually(t, 5*time.Second, "the change log compacted to the last 3 events", func() bool {
		c, err := srv.Store.CompactedRV(ctx)
		return err == nil && c >= cur-3
	})
	if got := srv.Compactions(); got == 0 {
		t.Fatal("no compaction counted")
	}
	fleettest.Eventually(t, 5*time.Second, "the connected gateway has every change", func() bool { return on.get("ruleset/r10") == `{"sql":"v10"}` })
	// Back after more changes than the log keeps: 410, a new List, converged.
	startSyncer(t, dirAway, away)
	fleettest.Eventually(t, 10*time.Second, "the returning gateway converges after re-listing", func() bool {
		for i := 0; i <= 10; i++ {
			if away.get(fmt.Sprintf("ruleset/r%d", i)) != fmt.Sprintf(`{"sql":"v%d"}`, i) {
				return false
			}
		}
		return true
	})
}
