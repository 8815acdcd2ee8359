package queue

import (
	"encoding/binary"
	"hash/crc32"
	"io"
)

// The cursor file ("cursor") holds the consumer position and the persisted
// clock in two fixed 128-byte slots written alternately in place (pwrite, no
// rename). Each slot carries a generation and a CRC32C; the reader takes the
// valid slot with the highest generation, so a torn slot write falls back to
// the previous state. Losing a cursor update only causes redelivery
// (duplicates), never loss, so it is written cheaply and synced lazily.
const (
	cursorName    = "cursor"
	lockName      = "LOCK"
	cursorMagic   = "OPQC"
	cursorSlotLen = 128
)

// Drop reasons, as they appear in metrics and Stats.
const (
	ReasonMaxBytes = "max_bytes" // dropped by on_full: drop_oldest
	ReasonMaxAge   = "max_age"   // expired
	ReasonCorrupt  = "corrupt"   // failed its CRC (or unreadable) and skipped
	ReasonTornTail = "torn_tail" // incomplete tail truncated on open (count of truncations)
)

const (
	rMaxBytes = iota
	rMaxAge
	rCorrupt
	rTornTail
	numReasons
)

var reasonNames = [numReasons]string{ReasonMaxBytes, ReasonMaxAge, ReasonCorrupt, ReasonTornTail}

// cursorState is what one slot holds.
type cursorState struct {
	gen      uint64
	floor    uint64 // every seq below floor is acknowledged or dropped
	clock    int64  // highest queue time handed out (unix nanos)
	appended uint64 // lifetime totals (approximate after a crash)
	acked    uint64
	rejected uint64
	drops    [numReasons]uint64
}

func (c *cursorState) encode(b []byte) {
	clear(b[:cursorSlotLen])
	copy(b, cursorMagic)
	b[4] = 1
	le := binary.LittleEndian
	le.PutUint64(b[8:], c.gen)
	le.PutUint64(b[16:], c.floor)
	le.PutUint64(b[24:], uint64(c.clock))
	le.PutUint64(b[32:], c.appended)
	le.PutUint64(b[40:], c.acked)
	le.PutUint64(b[48:], c.rejected)
	for i, d := range c.drops {
		le.PutUint64(b[56+8*i:], d)
	}
	le.PutUint32(b[cursorSlotLen-4:], crc32.Checksum(b[:cursorSlotLen-4], castagnoli))
}

func decodeCursorSlot(b []byte) (cursorState, bool) {
	le := binary.LittleEndian
	if len(b) < cursorSlotLen || string(b[:4]) != cursorMagic || b[4] != 1 ||
		le.Uint32(b[cursorSlotLen-4:]) != crc32.Checksum(b[:cursorSlotLen-4], castagnoli) {
		return cursorState{}, false
	}
	c := cursorState{
		gen:      le.Uint64(b[8:]),
		floor:    le.Uint64(b[16:]),
		clock:    int64(le.Uint64(b[24:])),
		appended: le.Uint64(b[32:]),
		acked:    le.Uint64(b[40:]),
		rejected: le.Uint64(b[48:]),
	}
	for i := range c.drops {
		c.drops[i] = le.Uint64(b[56+8*i:])
	}
	return c, true
}

// readCursor returns the newest valid slot of a cursor file (ok=false when
// neither slot is valid, e.g. a new queue).
func readCursor(r io.ReaderAt) (cursorState, bool) {
	var b [2 * cursorSlotLen]byte
	n, _ := r.ReadAt(b[:], 0)
	var best cursorState
	found := false
	for i := 0; i+cursorSlotLen <= n; i += cursorSlotLen {
		if c, ok := decodeCursorSlot(b[i : i+cursorSlotLen]); ok && (!found || c.gen > best.gen) {
			best, found = c, true
		}
	}
	return best, found
}

// writeCursor writes c into the slot its generation selects.
func writeCursor(w io.WriterAt, c *cursorState, buf []byte) error {
	c.encode(buf)
	_, err := w.WriteAt(buf[:cursorSlotLen], int64(c.gen%2)*cursorSlotLen)
	return err
}
