package queue

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"
)

// ent returns the i-th entry of the in-flight window (seq floor+i).
func (q *Disk) ent(i int) *entry { return &q.ents[(q.entHead+i)%len(q.ents)] }

func (q *Disk) pushEnt(e entry) {
	if q.entN == len(q.ents) {
		n := make([]entry, 2*len(q.ents))
		for i := 0; i < q.entN; i++ {
			n[i] = *q.ent(i)
		}
		q.ents, q.entHead = n, 0
	}
	q.ents[(q.entHead+q.entN)%len(q.ents)] = e
	q.entN++
	if e.acked {
		q.entAcked++
	}
}

func (q *Disk) popEnt() entry {
	e := *q.ent(0)
	q.entHead = (q.entHead + 1) % len(q.ents)
	q.entN--
	if e.acked {
		q.entAcked--
	}
	return e
}

// advance moves the floor over the acknowledged prefix (caller holds mu).
func (q *Disk) advance() {
	moved := false
	for q.entN > 0 && q.ent(0).acked {
		e := q.popEnt()
		q.floor++
		q.floorSeg, q.floorOff = e.seg, e.end
		moved = true
	}
	if moved {
		q.csDirty = true
		if len(q.segs) > 1 && q.segs[1].base <= q.floor {
			q.signal() // the committer deletes the consumed segment
		}
	}
}

// setFloor moves the floor forward to f (records below were dropped), at
// position (seg, off) if known (off 0 = start of seg). Caller holds mu.
func (q *Disk) setFloor(f, seg uint64, off int64) {
	for q.entN > 0 && q.floor < f {
		q.popEnt()
		q.floor++
	}
	q.floor = max(q.floor, f)
	q.floorSeg, q.floorOff = seg, off
	if q.readSeq < q.floor {
		q.readSeq = q.floor
		q.reposition = true
	}
	q.counted = max(q.counted, q.floor)
	q.advance()
}

// Next returns the next record after the cursor, blocking until one is
// available, ctx ends, or the queue is closed. Records whose age exceeds
// max_age are skipped (counted as expired) and corrupt records are skipped
// (counted and logged with file and offset); neither is ever returned.
// Next may be called from one goroutine at a time (further callers wait).
func (q *Disk) Next(ctx context.Context) (Record, error) {
	q.nextMu.Lock()
	defer q.nextMu.Unlock()
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return Record{}, ErrClosed
		}
		if q.readSeq < q.floor {
			q.readSeq = q.floor
			q.reposition = true
		}
		fresh := q.readSeq >= q.floor+uint64(q.entN)
		if q.readSeq >= q.visible || (fresh && q.entN >= q.maxInfl) {
			w := q.wake
			q.waiting = true
			q.mu.Unlock()
			select {
			case <-w:
				continue
			case <-ctx.Done():
				return Record{}, ctx.Err()
			}
		}
		i := q.segIndex(q.readSeq)
		m := q.segs[i]
		maxSeq := q.visible - 1
		if i+1 < len(q.segs) && q.segs[i+1].base <= q.visible {
			maxSeq = q.segs[i+1].base - 1
		}
		if q.rd.f == nil || q.rd.base != m.base || q.reposition {
			if q.rd.f == nil || q.rd.base != m.base {
				if q.rd.f != nil {
					q.rd.f.Close()
					q.rd.f = nil
				}
				f, err := q.fs.OpenFile(q.path(m.base), os.O_RDONLY, 0)
				if err != nil {
					q.mu.Unlock()
					return Record{}, fmt.Errorf("queue: open %s: %w", q.path(m.base), err)
				}
				q.rd.f, q.rd.base = f, m.base
			}
			off := int64(segHeaderLen)
			if q.floorSeg == m.base && q.readSeq == q.floor && q.floorOff > 0 {
				off = q.floorOff
			}
			if q.rd.sc == nil {
				q.rd.sc = newScanner(q.rd.f, m.base, m.visSize, off, m.base, maxSeq)
			} else {
				buf := q.rd.sc.buf
				*q.rd.sc = *newScanner(q.rd.f, m.base, m.visSize, off, m.base, maxSeq)
				q.rd.sc.buf = buf[:0]
			}
			q.reposition = false
		} else {
			q.rd.sc.size = m.visSize
			q.rd.sc.maxSeq = min(maxSeq, m.base+uint64(m.visSize/recHeaderLen))
		}
		sc, readSeq, base := q.rd.sc, q.readSeq, m.base
		q.mu.Unlock()

		r, sk, err := sc.next()

		q.mu.Lock()
		if q.reposition || q.readSeq != readSeq || q.closed {
			q.mu.Unlock()
			continue
		}
		if err != nil && err != io.EOF {
			q.mu.Unlock()
			return Record{}, fmt.Errorf("queue: read %s: %w", q.path(base), err)
		}
		if err == io.EOF {
			// Everything up to maxSeq should have been here.
			q.missing(readSeq, maxSeq+1, base, sk)
			q.readSeq = max(q.readSeq, maxSeq+1)
			q.mu.Unlock()
			continue
		}
		if r.seq < readSeq {
			q.mu.Unlock()
			continue
		}
		if r.seq > readSeq || sk.n > 0 {
			q.missing(readSeq, r.seq, base, sk)
		}
		q.readSeq = r.seq + 1
		idx := r.seq - q.floor
		var e *entry
		if idx < uint64(q.entN) {
			e = q.ent(int(idx))
			if e.acked {
				q.mu.Unlock()
				continue
			}
		} else {
			q.pushEnt(entry{seg: base, end: r.end(), nanos: r.nanos})
			e = q.ent(q.entN - 1)
		}
		if q.maxAge > 0 && q.clk.nanos()-r.nanos > q.maxAge {
			e.acked = true
			q.entAcked++
			q.cs.drops[rMaxAge]++
			q.met.drops[rMaxAge].Inc()
			q.advance()
			q.mu.Unlock()
			continue
		}
		q.lastRead = r.nanos
		q.mu.Unlock()
		return Record{Seq: r.seq, Time: time.Unix(0, r.nanos), Data: append([]byte(nil), r.data...)}, nil
	}
}

// missing records that seqs [from, to) of segment base are not on disk
// (corrupt or lost): they become acknowledged gap entries, counted once.
// Caller holds mu.
func (q *Disk) missing(from, to, base uint64, sk skip) {
	if to <= from && sk.n == 0 {
		return
	}
	n := uint64(0)
	if to > q.counted {
		n = to - max(from, q.counted)
		q.counted = to
	}
	if n > 0 || (sk.n > 0 && from >= q.counted) {
		q.log.Warn("corrupt records skipped", "file", q.path(base), "offset", sk.off, "bytes", sk.n, "records", n)
	}
	if n > 0 {
		q.cs.drops[rCorrupt] += n
		q.met.drops[rCorrupt].Add(int(n))
		q.csDirty = true
	}
	for s := max(from, q.floor+uint64(q.entN)); s < to; s++ {
		q.pushEnt(entry{seg: base, acked: true})
	}
	q.advance()
}

// segIndex returns the index of the segment holding seq (caller holds mu).
func (q *Disk) segIndex(seq uint64) int {
	lo, hi := 0, len(q.segs)
	for lo < hi {
		h := (lo + hi) / 2
		if q.segs[h].base <= seq {
			lo = h + 1
		} else {
			hi = h
		}
	}
	return max(lo-1, 0)
}

// Ack marks seq delivered. Records are removed once they and every record
// before them are acknowledged; acks may arrive in any order. Acknowledging
// a record already removed (or dropped) is a no-op; acknowledging one that
// Next has not returned is an error.
func (q *Disk) Ack(seq uint64) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return ErrClosed
	}
	if seq < q.floor {
		return nil
	}
	i := seq - q.floor
	if i >= uint64(q.entN) {
		return fmt.Errorf("queue: ack %d: not returned by Next", seq)
	}
	e := q.ent(int(i))
	if e.acked {
		return nil
	}
	e.acked = true
	q.entAcked++
	q.cs.acked++
	q.met.acked.Inc()
	if i == 0 {
		full := q.entN >= q.maxInfl
		q.advance()
		if full {
			q.broadcast()
		}
	}
	return nil
}

// Rewind moves the cursor back to the oldest unacknowledged record: the
// following Next calls return again every record not yet acknowledged, in
// order (records acknowledged out of order are not repeated).
func (q *Disk) Rewind() {
	q.mu.Lock()
	q.readSeq = q.floor
	q.reposition = true
	q.broadcast()
	q.mu.Unlock()
}
