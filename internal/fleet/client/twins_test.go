package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/client"
	"github.com/outpost-edge/outpost/internal/fleet/fleettest"
	"github.com/outpost-edge/outpost/internal/fleet/server"
	"github.com/outpost-edge/outpost/internal/fleet/twin"
)

// TestTwinsOverTheAgentProtocol: a desired twin change reaches the
// gateway's syncer as an object of kind twin targeted at that gateway only;
// reported updates posted over mTLS are validated per update (the error
// names updates[i] and the field), applied once by version (a resend is a
// no-op) and land on the gateway's own twin only.
func TestTwinsOverTheAgentProtocol(t *testing.T) {
	srv := fleettest.Start(t, t.TempDir(), "", server.Options{Keepalive: time.Second})
	dirA, dirB := enroll(t, srv, "gw-a", nil), enroll(t, srv, "gw-b", nil)
	appA, appB := &memApplier{applied: map[string]string{}}, &memApplier{applied: map[string]string{}}
	sa, _ := startSyncer(t, dirA, appA)
	startSyncer(t, dirB, appB)

	srv.MustDo(t, "PATCH", "/api/v1/gateways/gw-a/twins/pump-1", map[string]any{"desired": map[string]any{"speed": 1200}, "version": 0}, 200, nil)
	fleettest.Eventually(t, 10*time.Second, "the twin object on gw-a", func() bool {
		return strings.Contains(appA.get("twin/pump-1"), `"speed":1200`)
	})
	var spec twin.Spec
	if err := json.Unmarshal([]byte(appA.get("twin/pump-1")), &spec); err != nil || spec.Version != 1 {
		t.Fatalf("twin spec on the gateway: %s %v", appA.get("twin/pump-1"), err)
	}
	if appB.get("twin/pump-1") != "" {
		t.Fatal("gw-b received gw-a's twin")
	}

	ctx := context.Background()
	ups := []twin.Reported{
		{Device: "pump-1", Patch: json.RawMessage(`{"speed":1100}`), Version: 1, Time: time.Now()},
		{Device: "pump-1", Patch: json.RawMessage(`{"speed":1200}`), Version: 2, Time: time.Now()},
	}
	if err := sa.PostReported(ctx, ups); err != nil {
		t.Fatal(err)
	}
	if err := sa.PostReported(ctx, ups[:1]); err != nil { // a resend after a lost answer
		t.Fatal(err)
	}
	var got twin.Twin
	srv.MustDo(t, "GET", "/api/v1/gateways/gw-a/twins/pump-1", nil, 200, &got)
	if got.ReportedVersion != 2 || got.Delta != nil {
		t.Fatalf("after reported updates: v%d delta %s reported %s", got.ReportedVersion, got.Delta, got.Reported)
	}
	if code, _ := srv.Do(t, srv.Admin, "GET", "/api/v1/gateways/gw-b/twins/pump-1", nil); code != 404 {
		t.Fatalf("gw-b's pump-1 = %d, want 404 (a gateway writes only its own twins)", code)
	}

	bad := []struct {
		ups  []twin.Reported
		want string
	}{
		{[]twin.Reported{{Device: "ok", Patch: json.RawMessage(`{}`), Version: 3}, {Device: "ok", Patch: json.RawMessage(`{}`), Version: 0}}, "updates[1].version: must be > 0"},
		{[]twin.Reported{{Device: "a/b", Patch: json.RawMessage(`{}`), Version: 1}}, `updates[0].device: "a/b"`},
		{[]twin.Reported{{Device: "ok", Patch: json.RawMessage(`[1]`), Version: 1}}, "updates[0].patch: must be a JSON object"},
		{make([]twin.Reported, server.MaxReportedBatch+1), "at most 1000 per request"},
	}
	for _, b := range bad {
		err := sa.PostReported(ctx, b.ups)
		var se *client.StatusError
		if !errors.As(err, &se) || se.Code != 400 || !strings.Contains(err.Error(), b.want) {
			t.Errorf("PostReported(bad) = %v, want 400 with %q", err, b.want)
		}
	}
}
