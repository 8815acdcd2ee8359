package server

import (
	"context"
	"time"
)

// compactLock is the singleton lock key of the change-log compaction.
const compactLock int64 = 0x6f7574706f6363 // "outpocc"

// compactLoop compacts the change log every opt.CompactEvery, keeping the
// last opt.CompactKeep events, on one replica at a time (the store's
// singleton lock, taken for each pass and released after it). A gateway
// whose resourceVersion falls behind the compacted one re-lists (410), as
// after any compaction; its cache makes that one read, not a rebuild.
func (s *Server) compactLoop(ctx context.Context) {
	if s.opt.CompactKeep < 0 {
		return
	}
	t := time.NewTicker(s.opt.CompactEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := s.compactOnce(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("fleet: compacting the change log", "err", err)
		}
	}
}

// compactOnce runs one compaction pass if this replica gets the lock; it
// returns the resourceVersion compacted up to (0 when nothing was done).
func (s *Server) compactOnce(ctx context.Context) (int64, error) {
	release, ok, err := s.st.TryLock(ctx, compactLock)
	if err != nil || !ok {
		return 0, err
	}
	defer release()
	cur, err := s.st.CurrentRV(ctx)
	if err != nil {
		return 0, err
	}
	done, err := s.st.CompactedRV(ctx)
	if err != nil {
		return 0, err
	}
	upTo := cur - s.opt.CompactKeep
	if upTo <= done {
		return 0, nil
	}
	if err := s.st.Compact(ctx, upTo); err != nil {
		return 0, err
	}
	s.compactions.Inc()
	s.log.Info("fleet: change log compacted", "up_to_rv", upTo, "kept", s.opt.CompactKeep)
	return upTo, nil
}
