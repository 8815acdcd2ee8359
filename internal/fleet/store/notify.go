package store

import "sync"

// Notifier fans one "something changed" signal out to many subscribers;
// each subscriber's channel has capacity 1, so signals coalesce and a slow
// subscriber never blocks the writer. Implementations embed it.
type Notifier struct {
	mu   sync.Mutex
	subs map[chan struct{}]struct{}
}

// Notify subscribes (see Store.Notify).
func (n *Notifier) Notify() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	n.mu.Lock()
	if n.subs == nil {
		n.subs = map[chan struct{}]struct{}{}
	}
	n.subs[ch] = struct{}{}
	n.mu.Unlock()
	return ch, func() {
		n.mu.Lock()
		delete(n.subs, ch)
		n.mu.Unlock()
	}
}

// Broadcast signals every subscriber.
func (n *Notifier) Broadcast() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for ch := range n.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}
