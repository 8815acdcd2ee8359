package store

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/twin"
)

// TwinKey identifies a twin.
type TwinKey struct{ Gateway, Device string }

// ReportedState is the reported side of a stored twin.
type ReportedState struct {
	Reported json.RawMessage
	Version  int64
	Meta     map[string]int64
	Updated  time.Time
}

// GroupReported groups a batch of reported updates by twin, keys sorted
// (implementations lock rows in this order: no deadlock between batches),
// each group in arrival order.
func GroupReported(ups []twin.Reported) ([]TwinKey, map[TwinKey][]twin.Reported) {
	groups := map[TwinKey][]twin.Reported{}
	var keys []TwinKey
	for _, u := range ups {
		k := TwinKey{u.Gateway, u.Device}
		if _, ok := groups[k]; !ok {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], u)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].Gateway != keys[j].Gateway {
			return keys[i].Gateway < keys[j].Gateway
		}
		return keys[i].Device < keys[j].Device
	})
	return keys, groups
}

// FoldReported applies ups in order to cur, skipping every update whose
// version is not newer than the state's. It returns the new state and how
// many updates were applied.
func FoldReported(cur ReportedState, ups []twin.Reported) (ReportedState, int, error) {
	n := 0
	for _, u := range ups {
		if u.Version <= cur.Version {
			continue
		}
		at := u.Time
		if at.IsZero() {
			at = time.Now()
		}
		doc, meta, err := twin.MergeStamp(cur.Reported, u.Patch, cur.Meta, at)
		if err != nil {
			return cur, n, fmt.Errorf("store: twin %s/%s: %w", u.Gateway, u.Device, err)
		}
		cur.Reported, cur.Version, cur.Meta = doc, u.Version, meta
		cur.Updated = at.UTC().Truncate(time.Millisecond)
		n++
	}
	return cur, n, nil
}

// GroupCommit merges concurrent ApplyTwinReported calls into one
// transaction: a committer goroutine (started when work arrives, gone when
// none is left) commits everything queued while the previous transaction
// ran, up to Max updates per transaction; callers wait for their batch's
// result. This is what turns many small reported updates from many
// gateways into few commits. No caller commits for others, so one caller's
// latency does not grow with the load behind it.
type GroupCommit struct {
	Store Store
	Max   int // updates per transaction (default 4096)

	mu      sync.Mutex
	pending []*gcReq
	running bool
}

type gcReq struct {
	ups  []twin.Reported
	err  error
	done chan struct{}
}

// Apply queues ups and returns once they are committed (or failed), or ctx
// ends (the updates may still be committed: they are idempotent).
func (g *GroupCommit) Apply(ctx context.Context, ups []twin.Reported) error {
	r := &gcReq{ups: ups, done: make(chan struct{})}
	g.mu.Lock()
	g.pending = append(g.pending, r)
	if !g.running {
		g.running = true
		go g.commitLoop()
	}
	g.mu.Unlock()
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (g *GroupCommit) commitLoop() {
	max := g.Max
	if max <= 0 {
		max = 4096
	}
	g.mu.Lock()
	for len(g.pending) > 0 {
		var batch []*gcReq
		size := 0
		for len(g.pending) > 0 && (size == 0 || size+len(g.pending[0].ups) <= max) {
			batch = append(batch, g.pending[0])
			size += len(g.pending[0].ups)
			g.pending = g.pending[1:]
		}
		g.mu.Unlock()
		all := make([]twin.Reported, 0, size)
		for _, b := range batch {
			all = append(all, b.ups...)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		_, err := g.Store.ApplyTwinReported(ctx, all)
		cancel()
		for _, b := range batch {
			b.err = err
			close(b.done)
		}
		g.mu.Lock()
	}
	g.running = false
	g.mu.Unlock()
}
