package queue

import (
	"bytes"
	"context"
	"io"
	"os"
	"testing"
	"time"
)

func validSegment(base uint64, n int) []byte {
	b := segHeader(base)
	for i := range n {
		b = appendFrame(b, base+uint64(i), int64(1e18)+int64(i), bytes.Repeat([]byte{byte(i)}, i*7%90))
	}
	return b
}

// FuzzSegmentReader feeds arbitrary bytes to the segment scanner: it must not
// panic, must return only records whose CRC matched with strictly increasing
// seqs inside the file, and must never buffer more than the file holds.
func FuzzSegmentReader(f *testing.F) {
	seg := validSegment(1, 30)
	f.Add(seg)
	f.Add(seg[:len(seg)-7])   // torn tail
	f.Add(seg[:segHeaderLen]) // header only
	f.Add([]byte{})
	f.Add(bytes.Repeat([]byte{0}, 200))
	flipped := append([]byte(nil), seg...)
	flipped[segHeaderLen+recHeaderLen+3] ^= 1
	f.Add(flipped)
	huge := append([]byte(nil), seg...)
	huge[segHeaderLen+2] = 0xff // length field far beyond the file
	f.Add(huge)
	f.Fuzz(func(t *testing.T, b []byte) {
		sc := newScanner(bytes.NewReader(b), 1, int64(len(b)), segHeaderLen, 1, ^uint64(0))
		prev := uint64(0)
		for i := 0; ; i++ {
			r, sk, err := sc.next()
			if cap(sc.buf) > max(sc.chunk, len(b)) {
				t.Fatalf("buffer %d for a %d-byte file", cap(sc.buf), len(b))
			}
			if err == io.EOF {
				if sk.n < 0 || sk.off+sk.n > int64(len(b)) {
					t.Fatalf("bad skip %+v", sk)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.seq <= prev || r.end() > int64(len(b)) || r.off < segHeaderLen {
				t.Fatalf("record seq %d after %d, off %d end %d of %d", r.seq, prev, r.off, r.end(), len(b))
			}
			prev = r.seq
			if i > len(b) {
				t.Fatal("scanner does not advance")
			}
		}
	})
}

// FuzzRecover opens a queue whose newest segment holds arbitrary bytes
// (through the in-memory filesystem), reads everything and appends: no panic,
// no error from Open. The committer goroutine makes coverage vary from run to
// run, so minimising inputs never converges; fuzz it with
//
//	go test -run '^$' -fuzz '^FuzzRecover$' -fuzztime 60s -fuzzminimizetime 1x ./internal/queue/
func FuzzRecover(f *testing.F) {
	seg := validSegment(1, 20)
	f.Add(seg)
	f.Add(seg[:len(seg)-3])
	f.Add(seg[:5])
	mid := append([]byte(nil), seg...)
	mid[len(seg)/2] ^= 0x40
	f.Add(mid)
	f.Fuzz(func(t *testing.T, b []byte) {
		cfs := newCrashFS()
		cfs.MkdirAll("/q", 0)
		fh, _ := cfs.OpenFile("/q/"+segName(1), os.O_CREATE, 0)
		fh.WriteAt(b, 0)
		q, err := Open(Config{Dir: "/q"}, Options{fs: cfs})
		if err != nil {
			t.Fatal(err)
		}
		defer q.Close()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
			r, err := q.Next(ctx)
			cancel()
			if err != nil {
				break
			}
			q.Ack(r.Seq)
		}
		if _, err := q.Append(context.Background(), []byte("x")); err != nil {
			t.Fatal(err)
		}
	})
}
