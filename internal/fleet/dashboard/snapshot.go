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
	s.gws, s.at, s.dirty, s.ok = gws, at, false, true
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
