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
// Mem is the in-memory implementation, for tests (it keeps the contract
// except surviving a crash; no lane uses it: every uplink lane is a Disk);
// Disk (Open) is the segmented log on local disk, opened for each lane by
// uplink.Lanes. Both satisfy Queue.
//
// # Disk queue: usage
//
//	q, err := queue.Open(queue.Config{Dir: "/var/lib/outpost/queue/alarms"},
//		queue.Options{Name: "alarms", Logger: log, Metrics: set})
//	seq, err := q.Append(ctx, data)          // returns once durable (fsync: always)
//	q.AppendAsync(data, func(seq uint64, err error) { ... }) // pipelined, callbacks in order
//	rec, err := q.Next(ctx)                  // blocks; then send rec.Data to the cloud
//	q.Ack(rec.Seq)                           // on PUBACK, in any order
//	q.Rewind()                               // on reconnect: resend all unacknowledged
//	q.Close()
//
// # On-disk format (version 1, little-endian)
//
// A queue directory holds segment files, a cursor file and a LOCK file.
//
//   - Segment "<20-digit first seq>.seg": a 16-byte header (magic "OPQS",
//     version byte 1, 3 reserved bytes, first seq uint64) followed by records.
//   - Record: a 28-byte header then the data. Header: word0 uint32 (bits
//     0-27 data length, at most MaxRecordSize; bits 28-31 kind, 0 = data),
//     header crc uint32 (CRC-32C/Castagnoli over bytes 0-3 and 8-27), data
//     crc uint32 (CRC-32C of the data), seq uint64, time int64 (unix
//     nanoseconds from the persisted clock).
//   - Seqs are consecutive across segments; a segment holds seqs from its
//     name up to the next segment's name minus one.
//   - "cursor": two 128-byte slots written alternately in place, each with
//     magic "OPQC", a generation, the ack floor (first seq not yet removed),
//     the clock high-water mark, lifetime counters and a CRC-32C. The valid
//     slot with the highest generation wins.
//
// # Writing
//
// Appenders frame their record into a shared batch and wait; one committer
// goroutine writes the batch with one pwrite, fsyncs once (fsync: always)
// and completes every appender in the batch: concurrent appenders share an
// fsync (group commit). A segment is sealed when the next record would take
// it past segment_size: it is fsynced, the next file is created with its
// header, and the directory is fsynced before any record in it is reported
// durable. Under fsync: interval and never, Append returns once the batch is
// written to the OS (safe against a crash of the process, not a power cut).
//
// # Recovery rules (Open)
//
//   - The newest segment is scanned completely. Bytes after its last valid
//     record that do not hold a later valid record are a torn tail: the file
//     is truncated there (counted as torn_tail, logged with file and offset).
//   - Older segments are not scanned at open (open time does not grow with
//     the backlog); only their first record is read for its time.
//   - A record that fails a CRC anywhere is skipped, never returned. If its
//     header is intact (header CRC matches) only its data was damaged and
//     the reader skips exactly that record; otherwise it resyncs byte by
//     byte to the next offset holding a header with a matching header CRC
//     and a plausible seq (cost linear in the damaged length). Skipped seqs
//     are counted as corrupt and logged with file and offset. No length
//     field is trusted for an allocation beyond MaxRecordSize and the bytes
//     left in the file.
//   - Delivery resumes at the cursor's ack floor (or the oldest segment, if
//     later). Cursor writes are not fsynced on every ack, so after a crash
//     records acknowledged shortly before it are delivered again.
//
// # Guarantees
//
//   - fsync: always: every record whose Append returned nil (or whose
//     AppendAsync callback got a nil error) survives a power cut, unless it
//     was acknowledged, dropped by a limit, or its bytes were later damaged.
//   - interval / never: survives a crash of the process; a power cut loses
//     at most the records of the last fsync_interval (never: whatever the
//     OS had not written back).
//   - Records are delivered in seq order; duplicates are possible after a
//     crash or Rewind, losses only by the policies above (counted).
//
// # Limits
//
// max_bytes bounds the segment files' total size. on_full: reject_new makes
// Append return ErrFull (the broker answers a QoS 1 publish with a negative
// PUBACK); drop_oldest deletes the oldest whole segments, counting their
// unacknowledged records as dropped (reason max_bytes). max_age: records
// older than max_age are skipped when read, and sealed segments whose newest
// record is older are deleted (reason max_age). Ages use the persisted clock
// (see clock.go): queue time never goes backwards, and a gateway that boots
// without a real-time clock at 1970 continues from the last time it saw.
//
// # Caveats
//
// Memory holds a few words per segment and one 32-byte entry per record
// between the ack floor and the read position (bounded by
// Options.MaxInflight), never the backlog itself. Only one process may open a
// directory (LOCK, flock); the offline tools (Inspect, Verify, ReadStatus)
// read without the lock. AppendAsync callbacks run on the committer
// goroutine and must not block.
package queue

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Queue is the contract both implementations satisfy (the uplink consumes
// it; the integrator picks Mem or Disk per lane).
type Queue interface {
	Append(ctx context.Context, data []byte) (uint64, error)
	AppendAsync(data []byte, done func(seq uint64, err error))
	Next(ctx context.Context) (Record, error)
	Ack(seq uint64) error
	Rewind()
	Stats() Stats
	Close() error
}

var (
	_ Queue = (*Mem)(nil)
	_ Queue = (*Disk)(nil)
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
	mu                         sync.Mutex
	cond                       chan struct{} // closed and replaced when records arrive
	recs                       []Record      // unacknowledged and unread records, in order
	acked                      map[uint64]bool
	next                       uint64 // next seq to assign
	cursor                     int    // index into recs of the next record Next returns
	maxBytes                   int64
	bytes                      int64
	closed                     bool
	appended, ackedN, rejected uint64
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
		q.rejected++
		return 0, ErrFull
	}
	q.appended++
	r := Record{Seq: q.next, Time: time.Now(), Data: append([]byte(nil), data...)}
	q.next++
	q.recs = append(q.recs, r)
	q.bytes += int64(len(data))
	close(q.cond)
	q.cond = make(chan struct{})
	return r.Seq, nil
}

// AppendAsync appends and calls done before returning.
func (q *Mem) AppendAsync(data []byte, done func(seq uint64, err error)) {
	seq, err := q.Append(context.Background(), data)
	if done != nil {
		done(seq, err)
	}
}

// Stats returns depth, bytes and totals (the fields a memory queue has).
func (q *Mem) Stats() Stats {
	q.mu.Lock()
	defer q.mu.Unlock()
	s := Stats{Lane: "mem", Depth: uint64(len(q.recs) - len(q.acked)), Bytes: q.bytes,
		FirstSeq: q.next, NextSeq: q.next, Appended: q.appended, Acked: q.ackedN,
		Rejected: q.rejected, Drops: map[string]uint64{}}
	if len(q.recs) > 0 {
		s.FirstSeq = q.recs[0].Seq
		s.OldestAge = time.Since(q.recs[0].Time)
	}
	return s
}

// Next blocks until a record is available after the cursor or ctx ends.
func (q *Mem) Next(ctx context.Context) (Record, error) {
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return Record{}, ErrClosed
		}
		for q.cursor < len(q.recs) && q.acked[q.recs[q.cursor].Seq] {
			q.cursor++ // acknowledged out of order before a Rewind
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
	if len(q.recs) == 0 || seq < q.recs[0].Seq || seq >= q.next || q.acked[seq] {
		return nil
	}
	q.acked[seq] = true
	q.ackedN++
	n := 0
	for n < len(q.recs) && q.acked[q.recs[n].Seq] {
		delete(q.acked, q.recs[n].Seq)
		q.bytes -= int64(len(q.recs[n].Data))
		n++
	}
	if n > 0 {
		// Drop the acknowledged prefix without copying the rest (a backlog of
		// a million records must not cost a million copies per ack); clear
		// the dropped slots for the GC and compact when mostly empty.
		clear(q.recs[:n])
		q.recs = q.recs[n:]
		if c := cap(q.recs); c > 1024 && len(q.recs) < c/4 {
			q.recs = append([]Record(nil), q.recs...)
		}
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
