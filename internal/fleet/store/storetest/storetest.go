// Package storetest holds checks every fleet store implementation must
// pass (run from each implementation's tests against the real engine).
package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/proto"
	"github.com/outpost-edge/outpost/internal/fleet/store"
	"github.com/outpost-edge/outpost/internal/fleet/twin"
)

// Twins checks the twin methods on an empty store.
func Twins(t *testing.T, s store.Store) {
	t.Helper()
	ctx := context.Background()
	now := time.Now()
	if err := s.CreateGateway(ctx, store.Gateway{ID: "gw", Labels: map[string]string{}, CertSerial: "1", Enrolled: now}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetTwin(ctx, "gw", "d1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetTwin of nothing = %v, want ErrNotFound", err)
	}
	rv0, _ := s.CurrentRV(ctx)
	tw, err := s.PatchTwinDesired(ctx, "gw", "d1", json.RawMessage(`{"fan":"on","rate":5}`), 0, now)
	if err != nil || tw.DesiredVersion != 1 || tw.ResourceVersion <= rv0 {
		t.Fatalf("create = %+v, %v", tw, err)
	}
	if _, err := s.PatchTwinDesired(ctx, "gw", "d1", json.RawMessage(`{"fan":"off"}`), 0, now); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale desired version = %v, want ErrConflict", err)
	}
	tw, err = s.PatchTwinDesired(ctx, "gw", "d1", json.RawMessage(`{"rate":null}`), -1, now)
	if err != nil || tw.DesiredVersion != 2 || string(tw.Desired) != `{"fan":"on"}` {
		t.Fatalf("unconditional patch = %s v%d, %v", tw.Desired, tw.DesiredVersion, err)
	}
	evs, err := s.Events(ctx, rv0, 10)
	if err != nil || len(evs) != 2 || evs[1].Kind != proto.KindTwin || evs[1].ID != "gw/d1" || evs[1].Name != "d1" || evs[1].RV != tw.ResourceVersion {
		t.Fatalf("twin events = %+v, %v", evs, err)
	}
	// Reported: a batch over two twins, out of order within neither,
	// with a replay; then the same batch again (everything a replay).
	var ups []twin.Reported
	for v := int64(1); v <= 5; v++ {
		ups = append(ups, twin.Reported{Gateway: "gw", Device: "d1", Patch: json.RawMessage(fmt.Sprintf(`{"n":%d}`, v)), Version: v, Time: now})
		ups = append(ups, twin.Reported{Gateway: "gw", Device: "d2", Patch: json.RawMessage(fmt.Sprintf(`{"m":%d}`, v)), Version: v, Time: now})
	}
	ups = append(ups, twin.Reported{Gateway: "gw", Device: "d1", Patch: json.RawMessage(`{"n":-1}`), Version: 3, Time: now})
	if n, err := s.ApplyTwinReported(ctx, ups); err != nil || n != 10 {
		t.Fatalf("ApplyTwinReported = %d, %v; want 10", n, err)
	}
	if n, err := s.ApplyTwinReported(ctx, ups); err != nil || n != 0 {
		t.Fatalf("replayed batch = %d, %v; want 0", n, err)
	}
	tw, err = s.GetTwin(ctx, "gw", "d1")
	if err != nil || string(tw.Reported) != `{"n":5}` || tw.ReportedVersion != 5 || tw.DesiredVersion != 2 || tw.Metadata.Reported["n"] != now.UnixMilli() {
		t.Fatalf("d1 = %+v, %v", tw, err)
	}
	if rv, _ := s.CurrentRV(ctx); rv != evs[1].RV {
		t.Fatalf("reported updates logged events: rv %d, want %d", rv, evs[1].RV)
	}
	// Group commit from many goroutines.
	g := &store.GroupCommit{Store: s, Max: 7}
	errc := make(chan error, 20)
	for i := 0; i < 20; i++ {
		go func() {
			errc <- g.Apply(ctx, []twin.Reported{{Gateway: "gw", Device: fmt.Sprintf("g%d", i), Patch: json.RawMessage(`{"x":1}`), Version: 1, Time: now}})
		}()
	}
	for i := 0; i < 20; i++ {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	// Delete one twin: a deleted event for the gateway, gone from reads;
	// a reported update after it starts the twin again from nothing (no
	// cached reported version survives the delete).
	rvDel, err := s.DeleteTwin(ctx, "gw", "d1")
	if err != nil {
		t.Fatalf("DeleteTwin = %v", err)
	}
	if _, err := s.GetTwin(ctx, "gw", "d1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetTwin after DeleteTwin = %v, want ErrNotFound", err)
	}
	if evs, err := s.Events(ctx, rvDel-1, 10); err != nil || len(evs) != 1 || evs[0].Kind != proto.KindTwin || evs[0].ID != "gw/d1" || evs[0].Name != "d1" || !evs[0].Deleted {
		t.Fatalf("delete event = %+v, %v", evs, err)
	}
	if _, err := s.DeleteTwin(ctx, "gw", "d1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("DeleteTwin of a deleted twin = %v, want ErrNotFound", err)
	}
	if _, err := s.DeleteTwin(ctx, "other", "d2"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("DeleteTwin on another gateway = %v, want ErrNotFound", err)
	}
	if n, err := s.ApplyTwinReported(ctx, []twin.Reported{{Gateway: "gw", Device: "d1", Patch: json.RawMessage(`{"again":1}`), Version: 1, Time: now}}); err != nil || n != 1 {
		t.Fatalf("reported v1 after the delete = %d, %v; want 1 applied", n, err)
	}
	if tw, err := s.GetTwin(ctx, "gw", "d1"); err != nil || tw.ReportedVersion != 1 || string(tw.Reported) != `{"again":1}` || tw.DesiredVersion != 0 {
		t.Fatalf("d1 after delete and report = %+v, %v", tw, err)
	}
	if tw, err := s.GetTwin(ctx, "gw", "d2"); err != nil || tw.ReportedVersion != 5 {
		t.Fatalf("d2 after deleting d1 = %+v, %v", tw, err)
	}
	all, err := s.ListTwins(ctx, "gw")
	if err != nil || len(all) != 22 {
		t.Fatalf("ListTwins = %d, %v; want 22", len(all), err)
	}
	if _, err := s.DeleteGateway(ctx, "gw"); err != nil {
		t.Fatal(err)
	}
	if all, _ := s.ListTwins(ctx, ""); len(all) != 0 {
		t.Fatalf("twins outlive their gateway: %d", len(all))
	}
}
