package loadgen

// seqWindow is how many sequence numbers below the highest one seen a
// tracker remembers individually (a bitmap of seqWindow bits, 8 KiB).
// A message older than that is counted as out of order; whether it was a
// duplicate can no longer be told.
const seqWindow = 1 << 16

// seqTracker follows the sequence numbers one subscriber receives from one
// publisher and counts unique, duplicate and out-of-order arrivals. Not safe
// for concurrent use: each subscriber owns its trackers.
type seqTracker struct {
	next       uint64 // highest sequence seen + 1 (0 = none yet)
	unique     uint64
	duplicates uint64
	outOfOrder uint64
	seen       []uint64 // ring bitmap over [next-seqWindow, next), allocated on first use
}

func (t *seqTracker) bit(seq uint64) (word int, mask uint64) {
	i := seq % seqWindow
	return int(i / 64), 1 << (i % 64)
}

// observe records one arrival of seq.
func (t *seqTracker) observe(seq uint64) {
	if t.seen == nil {
		t.seen = make([]uint64, seqWindow/64)
	}
	if seq >= t.next {
		// Clear the bits of the gap [next, seq): they belonged to seqs a
		// whole window older and now stand for seqs not yet received.
		gap := seq - t.next
		if gap >= seqWindow {
			clear(t.seen)
		} else {
			for s := t.next; s < seq; s++ {
				w, m := t.bit(s)
				if m == 1 && s+64 <= seq {
					t.seen[w] = 0 // whole word
					s += 63
					continue
				}
				t.seen[w] &^= m
			}
		}
		w, m := t.bit(seq)
		t.seen[w] |= m
		t.next = seq + 1
		t.unique++
		return
	}
	if t.next-seq > seqWindow {
		t.outOfOrder++
		t.unique++ // cannot tell; assume it was not seen
		return
	}
	w, m := t.bit(seq)
	if t.seen[w]&m != 0 {
		t.duplicates++
		return
	}
	t.seen[w] |= m
	t.outOfOrder++
	t.unique++
}
