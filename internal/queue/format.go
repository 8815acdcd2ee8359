package queue

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"strconv"
	"strings"
)

// On-disk format, version 1 (see the package doc for the full description).
const (
	segMagic     = "OPQS" // first four bytes of every segment file
	segVersion   = 1
	segHeaderLen = 16 // magic(4) version(1) reserved(3) base seq(8)
	recHeaderLen = 28 // word0(4) header crc(4) data crc(4) seq(8) unix nanos(8)
	segSuffix    = ".seg"

	// MaxRecordSize bounds the data of one record. Append refuses larger
	// records with ErrTooLarge, and the reader never allocates more than this
	// (plus a header) for a length field, whatever the bytes on disk say.
	MaxRecordSize = 16 << 20

	kindShift = 28
	lenMask   = 1<<kindShift - 1
	kindData  = 0
)

// ErrTooLarge is returned by Append for a record larger than MaxRecordSize.
var ErrTooLarge = errors.New("queue: record too large")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// frameSize is the number of bytes a record of n data bytes occupies on disk.
func frameSize(n int) int64 { return int64(recHeaderLen + n) }

// appendFrame appends the framed record to dst. The header CRC covers
// word0, the data CRC, seq and time (bytes 0-3 and 8-27), so a scanner can
// validate a candidate header in constant time when resynchronising.
func appendFrame(dst []byte, seq uint64, nanos int64, data []byte) []byte {
	start := len(dst)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(kindData<<kindShift|len(data)))
	dst = append(dst, 0, 0, 0, 0) // header crc placeholder
	dst = binary.LittleEndian.AppendUint32(dst, crc32.Checksum(data, castagnoli))
	dst = binary.LittleEndian.AppendUint64(dst, seq)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(nanos))
	h := dst[start:]
	binary.LittleEndian.PutUint32(h[4:8], headerCRC(h))
	return append(dst, data...)
}

func headerCRC(h []byte) uint32 {
	c := crc32.Update(0, castagnoli, h[0:4])
	return crc32.Update(c, castagnoli, h[8:recHeaderLen])
}

// segHeader returns the 16-byte header of the segment whose first seq is base.
func segHeader(base uint64) []byte {
	h := make([]byte, segHeaderLen)
	copy(h, segMagic)
	h[4] = segVersion
	binary.LittleEndian.PutUint64(h[8:], base)
	return h
}

// segName is the file name of the segment whose first record has seq base.
func segName(base uint64) string { return fmt.Sprintf("%020d%s", base, segSuffix) }

// parseSegName returns the base seq of a segment file name.
func parseSegName(name string) (uint64, bool) {
	s, ok := strings.CutSuffix(name, segSuffix)
	if !ok || len(s) != 20 {
		return 0, false
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil || v == 0 {
		return 0, false
	}
	return v, true
}

// rawRecord is one valid record found by the scanner. data aliases the
// scanner's buffer and is valid until the next call.
type rawRecord struct {
	off   int64 // file offset of the header
	seq   uint64
	nanos int64
	data  []byte
}

func (r rawRecord) end() int64 { return r.off + frameSize(len(r.data)) }

// skip describes bytes the scanner passed over because they did not hold a
// valid record (corruption, or a torn tail when it reaches the end).
type skip struct {
	off int64 // first bad byte
	n   int64 // number of bytes skipped (0 = none)
}

// scanner reads framed records from one segment file through ReadAt with a
// reusable buffer. It never allocates more than one record (bounded by
// MaxRecordSize and by the bytes left in the file) beyond its chunk size.
type scanner struct {
	r      io.ReaderAt
	size   int64  // readable bytes; nothing at or past size is read
	off    int64  // offset of the next header to try
	minSeq uint64 // a valid record has minSeq <= seq <= maxSeq
	maxSeq uint64

	buf    []byte
	bufOff int64 // file offset of buf[0]
	bufN   int   // valid bytes in buf
	chunk  int
	err    error // sticky read error
}

// newScanner scans the segment with first seq base, readable up to size,
// from offset off, accepting records with minSeq <= seq <= maxSeq. A
// segment cannot hold more records than size/recHeaderLen, which bounds the
// seq a valid record can carry and keeps resynchronisation over garbage
// cheap.
func newScanner(r io.ReaderAt, base uint64, size, off int64, minSeq, maxSeq uint64) *scanner {
	if off < segHeaderLen {
		off = segHeaderLen
	}
	minSeq = max(minSeq, base)
	if lim := base + uint64(max(size, 0)/recHeaderLen); maxSeq > lim {
		maxSeq = lim
	}
	return &scanner{r: r, size: size, off: off, minSeq: minSeq, maxSeq: maxSeq, chunk: 256 << 10}
}

// window returns the bytes [o, o+n) of the file, reading as needed, or nil if
// they are not all below size.
func (s *scanner) window(o int64, n int) []byte {
	if n < 0 || o < 0 || o+int64(n) > s.size {
		return nil
	}
	if o >= s.bufOff && o+int64(n) <= s.bufOff+int64(s.bufN) {
		i := int(o - s.bufOff)
		return s.buf[i : i+n]
	}
	want := max(n, s.chunk)
	if rem := s.size - o; int64(want) > rem {
		want = int(rem)
	}
	if cap(s.buf) < want {
		s.buf = make([]byte, want)
	}
	s.buf = s.buf[:want]
	got, err := s.r.ReadAt(s.buf, o)
	if got < n {
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		s.err = err
		s.bufN = 0
		return nil
	}
	s.bufOff, s.bufN = o, got
	return s.buf[:n]
}

// Outcome of decoding at one offset.
const (
	recOK      = iota
	recBadHead // no valid header here: resynchronise byte by byte
	recBadData // valid header, damaged data: skip exactly this record
)

// at tries to decode a valid record at offset o. For recBadData it returns
// the record's total size in n.
func (s *scanner) at(o int64) (r rawRecord, status int, n int64) {
	h := s.window(o, recHeaderLen)
	if h == nil {
		return rawRecord{}, recBadHead, 0
	}
	le := binary.LittleEndian
	w := le.Uint32(h[0:4])
	dlen := int(w & lenMask)
	seq := le.Uint64(h[12:20])
	if w>>kindShift != kindData || dlen > MaxRecordSize || seq < s.minSeq || seq > s.maxSeq || seq == 0 ||
		le.Uint32(h[4:8]) != headerCRC(h) {
		return rawRecord{}, recBadHead, 0
	}
	dcrc := le.Uint32(h[8:12])
	nanos := int64(le.Uint64(h[20:28]))
	full := s.window(o, recHeaderLen+dlen)
	if full == nil {
		return rawRecord{}, recBadHead, 0 // runs past the end: torn
	}
	data := full[recHeaderLen:]
	if crc32.Checksum(data, castagnoli) != dcrc {
		return rawRecord{}, recBadData, int64(recHeaderLen + dlen)
	}
	return rawRecord{off: o, seq: seq, nanos: nanos, data: data}, recOK, 0
}

// next returns the next valid record at or after the scanner's offset, and
// the bytes skipped before it. At the end it returns io.EOF, possibly with a
// skip covering trailing bytes that hold no valid record. Resynchronising
// costs one header CRC per byte offset: linear in the damaged length.
func (s *scanner) next() (rawRecord, skip, error) {
	o := s.off
	bad := skip{off: -1}
	for {
		r, st, n := s.at(o)
		if s.err != nil {
			return rawRecord{}, skip{}, s.err
		}
		if st == recOK {
			s.advance(r)
			if bad.off >= 0 {
				bad.n = o - bad.off
			} else {
				bad = skip{}
			}
			return r, bad, nil
		}
		if bad.off < 0 {
			bad.off = o
		}
		if st == recBadData {
			o += n
		} else {
			o++
		}
		if o+recHeaderLen > s.size {
			s.off = s.size
			bad.n = max(s.size-bad.off, 0)
			if bad.n == 0 {
				bad = skip{}
			}
			return rawRecord{}, bad, io.EOF
		}
	}
}

func (s *scanner) advance(r rawRecord) {
	s.off = r.end()
	if r.seq < math.MaxUint64 {
		s.minSeq = r.seq + 1
	}
}

// checkSegHeader validates the 16-byte segment header.
func checkSegHeader(h []byte, base uint64) error {
	if len(h) < segHeaderLen || string(h[:4]) != segMagic {
		return errors.New("bad segment magic")
	}
	if h[4] != segVersion {
		return fmt.Errorf("unsupported segment version %d", h[4])
	}
	if b := binary.LittleEndian.Uint64(h[8:16]); base != 0 && b != base {
		return fmt.Errorf("segment header base %d does not match file name base %d", b, base)
	}
	return nil
}
