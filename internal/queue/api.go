// Package queue is Outpost's durable store-and-forward log: everything bound
// for the cloud waits here until the cloud broker has acknowledged it.
//
// A queue has one producer side (Append, safe for concurrent use) and one
// consumer cursor (Next / Ack / Rewind), used by one uplink lane.
//
// # Contract shared by every implementation
//
//   - Append returns only after the record is durable per the queue's fsync
//     policy; the returned sequence numbers are strictly increasing.
//   - Next returns records in append order, each once, until Rewind.
//   - Ack(seq) marks one record delivered. A record is removed only after it
//     and every record before it is acknowledged; acknowledgements may arrive
//     out of order.
//   - Rewind moves the cursor back to the oldest unacknowledged record, so a
//     reconnecting uplink resends everything not yet acknowledged, in order.
//   - After a crash, every record whose Append returned nil is present unless
//     it was acknowledged (and acknowledged ones may reappear: duplicates are
//     possible, losses are not).
//
// Mem is the in-memory implementation (tests, and lanes configured as
// non-durable); the disk implementation is the segmented log in this package.
package queue

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Record is one queued item.
type Record struct {
	Seq  uint64    // position in the queue, strictly increasing, starts at 1
	Time time.Time // append time from the queue's persisted clock
	Data []byte    // the caller's bytes (an encoded message.Message for uplink lanes)
}

// Sentinel errors callers act on.
var (
	// ErrFull is returned by Append when the queue is at max_bytes and its
	// on_full policy is reject_new. It wraps message.ErrRejected semantics at
	// the sink layer (negative PUBACK).
	ErrFull = errors.New("queue: full")
	// ErrClosed is returned by operations on a closed queue.
	ErrClosed = errors.New("queue: closed")
)

// Mem is an in-memory queue implementing the package contract (without
// durability). Its zero value is not usable; use NewMem.
type Mem struct {
	mu       sync.Mutex
	cond     chan struct{} // closed and replaced when records arrive
	recs     []Record      // unacknowledged and unread records, in order
	acked    map[uint64]bool
	next     uint64 // next seq to assign
	cursor   int    // index into recs of the next record Next returns
	maxBytes int64
	bytes    int64
	closed   bool
}

// NewMem returns an empty in-memory queue bounded by maxBytes of record data
// (0 = unbounded); Append returns ErrFull beyond it.
func NewMem(maxBytes int64) *Mem {
	return &Mem{cond: make(chan struct{}), acked: map[uint64]bool{}, next: 1, maxBytes: maxBytes}
}

// Append adds a copy of data to the queue.
func (q *Mem) Append(ctx context.Context, data []byte) (uint64, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return 0, ErrClosed
	}
	if q.maxBytes > 0 && q.bytes+int64(len(data)) > q.maxBytes {
		return 0, ErrFull
	}
	r := Record{Seq: q.next, Time: time.Now(), Data: append([]byte(nil), data...)}
	q.next++
	q.recs = append(q.recs, r)
	q.bytes += int64(len(data))
	close(q.cond)
	q.cond = make(chan struct{})
	return r.Seq, nil
}

// Next blocks until a record is available after the cursor or ctx ends.
func (q *Mem) Next(ctx context.Context) (Record, error) {
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return Record{}, ErrClosed
		}
		if q.cursor < len(q.recs) {
			r := q.recs[q.cursor]
			q.cursor++
			q.mu.Unlock()
			return r, nil
		}
		wait := q.cond
		q.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return Record{}, ctx.Err()
		}
	}
}

// Ack marks seq delivered and drops the acknowledged prefix.
func (q *Mem) Ack(seq uint64) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return ErrClosed
	}
	q.acked[seq] = true
	n := 0
	for n < len(q.recs) && q.acked[q.recs[n].Seq] {
		delete(q.acked, q.recs[n].Seq)
		q.bytes -= int64(len(q.recs[n].Data))
		n++
	}
	if n > 0 {
		q.recs = append(q.recs[:0:0], q.recs[n:]...)
		q.cursor -= n
		if q.cursor < 0 {
			q.cursor = 0
		}
	}
	return nil
}

// Rewind moves the cursor back to the oldest unacknowledged record.
func (q *Mem) Rewind() {
	q.mu.Lock()
	q.cursor = 0
	q.mu.Unlock()
}

// Len returns the number of records not yet acknowledged.
func (q *Mem) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.recs)
}

// Close wakes blocked readers with ErrClosed.
func (q *Mem) Close() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.closed {
		q.closed = true
		close(q.cond)
	}
	return nil
}
