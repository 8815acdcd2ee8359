package delta

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
)

// Magic opens every patch.
const Magic = "OPBSDZ01"

const headerSize = 32

// streamWindow bounds each zstd stream's window, and so the decoder's
// memory while applying a patch.
const streamWindow = 2 << 20

// ErrCorrupt is returned by Patch for a malformed patch or one that does not
// fit the old file.
var ErrCorrupt = errors.New("delta: corrupt patch")

// Diff writes a patch that turns old into new. It holds old, new and two
// int32 suffix-sort arrays of len(old)+1 in memory (about 10× len(old)):
// a publisher-side cost.
func Diff(old, new []byte, w io.Writer) error {
	if len(old) >= 1<<31-1 {
		return fmt.Errorf("delta: old file too large")
	}
	I := qsufsort(old)
	var ctrl, db, eb []byte
	oldsize, newsize := int32(len(old)), int32(len(new))
	var scan, pos, ln, lastscan, lastpos, lastoffset int32
	for scan < newsize {
		var oldscore int32
		scan += ln
		for scsc := scan; scan < newsize; scan++ {
			ln, pos = search(I, old, new[scan:], 0, oldsize)
			for ; scsc < scan+ln; scsc++ {
				if scsc+lastoffset < oldsize && old[scsc+lastoffset] == new[scsc] {
					oldscore++
				}
			}
			if (ln == oldscore && ln != 0) || ln > oldscore+8 {
				break
			}
			if scan+lastoffset < oldsize && old[scan+lastoffset] == new[scan] {
				oldscore--
			}
		}
		if ln != oldscore || scan == newsize {
			var s, sf, lenf int32
			for i := int32(0); lastscan+i < scan && lastpos+i < oldsize; {
				if old[lastpos+i] == new[lastscan+i] {
					s++
				}
				i++
				if s*2-i > sf*2-lenf {
					sf, lenf = s, i
				}
			}
			var lenb int32
			if scan < newsize {
				var s, sb int32
				for i := int32(1); scan >= lastscan+i && pos >= i; i++ {
					if old[pos-i] == new[scan-i] {
						s++
					}
					if s*2-i > sb*2-lenb {
						sb, lenb = s, i
					}
				}
			}
			if lastscan+lenf > scan-lenb {
				overlap := (lastscan + lenf) - (scan - lenb)
				var s, ss, lens int32
				for i := int32(0); i < overlap; i++ {
					if new[lastscan+lenf-overlap+i] == old[lastpos+lenf-overlap+i] {
						s++
					}
					if new[scan-lenb+i] == old[pos-lenb+i] {
						s--
					}
					if s > ss {
						ss, lens = s, i+1
					}
				}
				lenf += lens - overlap
				lenb -= lens
			}
			for i := int32(0); i < lenf; i++ {
				db = append(db, new[lastscan+i]-old[lastpos+i])
			}
			extra := (scan - lenb) - (lastscan + lenf)
			eb = append(eb, new[lastscan+lenf:lastscan+lenf+extra]...)
			ctrl = binary.AppendVarint(ctrl, int64(lenf))
			ctrl = binary.AppendVarint(ctrl, int64(extra))
			ctrl = binary.AppendVarint(ctrl, int64((pos-lenb)-(lastpos+lenf)))
			lastscan = scan - lenb
			lastpos = pos - lenb
			lastoffset = pos - scan
		}
	}
	zc, err := compress(ctrl)
	if err != nil {
		return err
	}
	zd, err := compress(zeroRuns(db))
	if err != nil {
		return err
	}
	ze, err := compress(eb)
	if err != nil {
		return err
	}
	hdr := make([]byte, headerSize)
	copy(hdr, Magic)
	binary.LittleEndian.PutUint64(hdr[8:], uint64(len(new)))
	binary.LittleEndian.PutUint64(hdr[16:], uint64(len(zc)))
	binary.LittleEndian.PutUint64(hdr[24:], uint64(len(zd)))
	for _, b := range [][]byte{hdr, zc, zd, ze} {
		if _, err := w.Write(b); err != nil {
			return fmt.Errorf("delta: write: %w", err)
		}
	}
	return nil
}

func compress(b []byte) ([]byte, error) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBestCompression),
		zstd.WithWindowSize(streamWindow), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	return enc.EncodeAll(b, nil), nil
}

func matchlen(a, b []byte) int32 {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return int32(i)
		}
	}
	return int32(n)
}

// search finds the longest match of nw in old among suffixes I[st..en].
func search(I []int32, old, nw []byte, st, en int32) (int32, int32) {
	for en-st >= 2 {
		x := st + (en-st)/2
		o := old[I[x]:]
		if bytes.Compare(o[:min(len(o), len(nw))], nw[:min(len(o), len(nw))]) < 0 {
			st = x
		} else {
			en = x
		}
	}
	x := matchlen(old[I[st]:], nw)
	y := matchlen(old[I[en]:], nw)
	if x > y {
		return x, I[st]
	}
	return y, I[en]
}

// NewSize returns the size of the file a patch produces.
func NewSize(patch io.ReaderAt) (int64, error) {
	hdr := make([]byte, headerSize)
	if _, err := patch.ReadAt(hdr, 0); err != nil || string(hdr[:8]) != Magic {
		return 0, fmt.Errorf("%w: bad header", ErrCorrupt)
	}
	return int64(binary.LittleEndian.Uint64(hdr[8:])), nil
}

// Patch applies patch (of patchSize bytes) to old (of oldSize bytes),
// writing the new file to w. It streams: memory is a few MiB whatever the
// file sizes (old is read through ReaderAt, the three zstd streams are
// decoded incrementally with bounded windows).
func Patch(old io.ReaderAt, oldSize int64, patch io.ReaderAt, patchSize int64, w io.Writer) error {
	hdr := make([]byte, headerSize)
	if _, err := patch.ReadAt(hdr, 0); err != nil || string(hdr[:8]) != Magic {
		return fmt.Errorf("%w: bad header", ErrCorrupt)
	}
	newSize := int64(binary.LittleEndian.Uint64(hdr[8:]))
	cl := int64(binary.LittleEndian.Uint64(hdr[16:]))
	dl := int64(binary.LittleEndian.Uint64(hdr[24:]))
	if newSize < 0 || cl < 0 || dl < 0 || headerSize+cl+dl > patchSize || cl > patchSize || dl > patchSize {
		return fmt.Errorf("%w: bad lengths", ErrCorrupt)
	}
	open := func(off, n int64) (*zstd.Decoder, error) {
		return zstd.NewReader(io.NewSectionReader(patch, off, n), zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxWindow(64<<20), zstd.WithDecoderLowmem(true))
	}
	cz, err := open(headerSize, cl)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	defer cz.Close()
	dz, err := open(headerSize+cl, dl)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	defer dz.Close()
	ez, err := open(headerSize+cl+dl, patchSize-headerSize-cl-dl)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	defer ez.Close()
	ctrl := bufio.NewReader(cz)
	diff := &runReader{r: bufio.NewReader(dz)}
	const chunk = 64 << 10
	buf := make([]byte, chunk)
	obuf := make([]byte, chunk)
	var oldpos, newpos int64
	for newpos < newSize {
		var c [3]int64
		for i := range c {
			if c[i], err = binary.ReadVarint(ctrl); err != nil {
				return fmt.Errorf("%w: control at new offset %d: %v", ErrCorrupt, newpos, err)
			}
		}
		if c[0] < 0 || c[1] < 0 || newpos+c[0] > newSize || newpos+c[0]+c[1] > newSize {
			return fmt.Errorf("%w: control out of range at new offset %d", ErrCorrupt, newpos)
		}
		for left := c[0]; left > 0; {
			n := min(left, chunk)
			b := buf[:n]
			if _, err := io.ReadFull(diff, b); err != nil {
				return fmt.Errorf("%w: diff stream at new offset %d: %v", ErrCorrupt, newpos, err)
			}
			// Add old[oldpos:oldpos+n] where it exists.
			lo, hi := max(oldpos, 0), min(oldpos+n, oldSize)
			if lo < hi {
				ob := obuf[:hi-lo]
				if _, err := old.ReadAt(ob, lo); err != nil {
					return fmt.Errorf("delta: read old at %d: %w", lo, err)
				}
				for i, v := range ob {
					b[lo-oldpos+int64(i)] += v
				}
			}
			if _, err := w.Write(b); err != nil {
				return fmt.Errorf("delta: write: %w", err)
			}
			left -= n
			oldpos += n
			newpos += n
		}
		if _, err := io.CopyN(w, ez, c[1]); err != nil {
			return fmt.Errorf("%w: extra stream at new offset %d: %v", ErrCorrupt, newpos, err)
		}
		newpos += c[1]
		oldpos += c[2]
	}
	return nil
}

// zeroRuns encodes the diff stream, mostly zeros with sparse small
// differences, as (zero run, literal run) uvarint pairs each followed by
// the literal bytes. zstd then compresses it about 25% better than the raw
// stream (measured on outpost binaries; docs/BENCHMARKS.md).
func zeroRuns(raw []byte) []byte {
	out := make([]byte, 0, len(raw)/16)
	for i := 0; i < len(raw); {
		z := i
		for z < len(raw) && raw[z] == 0 {
			z++
		}
		l := z
		for l < len(raw) && raw[l] != 0 {
			l++
		}
		out = binary.AppendUvarint(out, uint64(z-i))
		out = binary.AppendUvarint(out, uint64(l-z))
		out = append(out, raw[z:l]...)
		i = l
	}
	return out
}

// runReader decodes zeroRuns incrementally.
type runReader struct {
	r           *bufio.Reader
	zeros, lits uint64
}

func (rr *runReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		switch {
		case rr.zeros > 0:
			k := int(min(rr.zeros, uint64(len(p)-n)))
			clear(p[n : n+k])
			n += k
			rr.zeros -= uint64(k)
		case rr.lits > 0:
			k, err := rr.r.Read(p[n : n+int(min(rr.lits, uint64(len(p)-n)))])
			n += k
			rr.lits -= uint64(k)
			if err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return n, err
			}
		default:
			z, err := binary.ReadUvarint(rr.r)
			if err != nil {
				if err == io.EOF && n > 0 {
					return n, nil
				}
				return n, err
			}
			l, err := binary.ReadUvarint(rr.r)
			if err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return n, err
			}
			if z > 1<<40 || l > 1<<40 {
				return n, fmt.Errorf("run too long")
			}
			rr.zeros, rr.lits = z, l
		}
	}
	return n, nil
}
