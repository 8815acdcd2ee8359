package dashboard

import (
	"context"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/store"
)

type countFleet struct {
	store.Notifier
	reads int
}

func (f *countFleet) Gateways(context.Context) ([]store.Gateway, error) {
	f.reads++
	return []store.Gateway{{ID: "gw"}}, nil
}
func (f *countFleet) Gateway(context.Context, string) (store.Gateway, error) {
	return store.Gateway{}, store.ErrNotFound
}
func (f *countFleet) Changes() (<-chan struct{}, func()) { return f.Notify() }

func TestSnapshotReads(t *testing.T) {
	f := &countFleet{}
	s := newSnapshot(t.Context(), f, time.Hour)
	step := func(what string, change, fresh bool, wantReads int, wantStale bool) {
		t.Helper()
		if change {
			f.Broadcast()
		}
		if _, err := s.get(context.Background(), fresh); err != nil {
			t.Fatal(err)
		}
		if f.reads != wantReads || s.stale() != wantStale {
			t.Fatalf("%s: %d reads, stale %v; want %d, %v", what, f.reads, s.stale(), wantReads, wantStale)
		}
	}
	step("first page", false, false, 1, false)
	step("second page, nothing changed", false, false, 1, false)
	step("a change, page load within maxAge: the copy is served", true, false, 1, true)
	step("the event stream reads it fresh", false, true, 2, false)
	step("fresh without a change: no read", false, true, 2, false)
	s.maxAge = 0
	step("a change past maxAge: a page load reads", true, false, 3, false)
}
