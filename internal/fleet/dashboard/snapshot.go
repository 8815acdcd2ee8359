package dashboard

import (
	"context"
	"sync"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/store"
)

// snapshot is the registry as the pages last read it. Reading 10,000
// gateways from the store (rows and their JSON) costs far more than
// rendering them, so pages share one copy:
//   - a change signal (Fleet.Changes, subscribed for the dashboard's whole
//     life, so nothing between a page's render and its event stream is
//     missed) marks it dirty;
//   - a page load reads the store again only when it is dirty and older
//     than maxAge (a page may be up to maxAge stale; its event stream
//     then brings it up to date);
//   - an event stream reads it again whenever it is dirty before it tells
//     its page to refresh (fresh), so a page never stays stale.
type snapshot struct {
	fleet  Fleet
	ch     <-chan struct{}
	maxAge time.Duration

	mu    sync.Mutex
	gws   []store.Gateway
	at    time.Time
	dirty bool
	ok    bool
	sum   *summary // of gws, computed on first use
}

// summary is the overview's counts of one read of the registry.
type summary struct {
	Total, Connected         int
	States, Versions, Labels []Count
}

// summary returns the overview's counts, computed once per read.
func (s *snapshot) summary(ctx context.Context) (*summary, error) {
	if _, err := s.get(ctx, false); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sum != nil {
		return s.sum, nil
	}
	gws := s.gws // the latest read (a reload since get is as good)
	states, versions, labels := map[string]int{}, map[string]int{}, map[string]int{}
	sum := &summary{Total: len(gws)}
	for _, g := range gws {
		states[GatewayState(g)]++
		v := g.Facts["version"]
		if v == "" {
			v = "(unknown)"
		}
		versions[v]++
		if g.Connected {
			sum.Connected++
		}
		for k, v := range g.Labels {
			labels[k+"="+v]++
		}
	}
	sum.States, sum.Versions, sum.Labels = sortedCounts(states, 0), sortedCounts(versions, 20), sortedCounts(labels, 30)
	s.sum = sum
	return sum, nil
}

func newSnapshot(ctx context.Context, f Fleet, maxAge time.Duration) *snapshot {
	ch, stop := f.Changes()
	context.AfterFunc(ctx, stop)
	return &snapshot{fleet: f, ch: ch, maxAge: maxAge}
}

// get returns the gateways (shared: callers must not modify them); fresh
// forces a read when anything changed since the last one.
func (s *snapshot) get(ctx context.Context, fresh bool) ([]store.Gateway, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.ch:
		s.dirty = true
	default:
	}
	if s.ok && (!s.dirty || !fresh && time.Since(s.at) < s.maxAge) {
		return s.gws, nil
	}
	// Clear the signal before reading: a change during the read marks the
	// new copy dirty again.
	select {
	case <-s.ch:
	default:
	}
	at := time.Now()
	gws, err := s.fleet.Gateways(ctx)
	if err != nil {
		return nil, err
	}
	s.gws, s.at, s.dirty, s.ok, s.sum = gws, at, false, true, nil
	return gws, nil
}

// stale reports whether a change arrived since the last read.
func (s *snapshot) stale() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.ch:
		s.dirty = true
	default:
	}
	return s.dirty
}
