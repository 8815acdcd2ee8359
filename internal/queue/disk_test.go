package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"
)

func TestReopenResumesAtFirstUnacked(t *testing.T) {
	dir := t.TempDir()
	q := openT(t, Config{Dir: dir}, Options{})
	for i := range 10 {
		mustAppend(t, q, fmt.Sprint(i))
	}
	recs := drain(t, q, 20*time.Millisecond, false)
	for _, i := range []int{0, 1, 2, 3, 5} {
		q.Ack(recs[i].Seq)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	q = openT(t, Config{Dir: dir}, Options{})
	got := drain(t, q, 20*time.Millisecond, false)
	if len(got) == 0 || got[0].Seq != recs[4].Seq || string(got[0].Data) != "4" {
		t.Fatalf("resumed at %+v, want seq %d", got, recs[4].Seq)
	}
	// 5 may come again (out-of-order acks are not persisted), all others must.
	want := map[string]bool{"4": true, "6": true, "7": true, "8": true, "9": true}
	for _, r := range got {
		delete(want, string(r.Data))
	}
	if len(want) > 0 {
		t.Fatalf("missing after reopen: %v", want)
	}
	if seq := mustAppend(t, q, "new"); seq != recs[9].Seq+1 {
		t.Fatalf("seq after reopen %d, want %d", seq, recs[9].Seq+1)
	}
}

func TestSegmentsRollAndAreDeleted(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Dir: dir, SegmentSize: minSegmentSize}
	q := openT(t, cfg, Options{})
	data := bytes.Repeat([]byte("x"), 1000)
	for range 300 { // ~300 KB: several 64 KiB segments
		if _, err := q.Append(context.Background(), data); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(segFiles(t, dir)); n < 4 {
		t.Fatalf("%d segment files, want >= 4", n)
	}
	for _, f := range segFiles(t, dir) {
		if s := fileSize(t, f); s > minSegmentSize {
			t.Fatalf("%s is %d bytes, over segment_size", f, s)
		}
	}
	st := q.Stats()
	if st.Depth != 300 || st.Segments < 4 {
		t.Fatalf("stats %+v", st)
	}
	recs := drain(t, q, 20*time.Millisecond, true)
	if len(recs) != 300 {
		t.Fatalf("drained %d", len(recs))
	}
	checkFor(t, 5*time.Second, func() error {
		if n := len(segFiles(t, dir)); n != 1 {
			return fmt.Errorf("%d segment files after drain", n)
		}
		return nil
	})
	// The drained active segment is replaced at the next append.
	seq := mustAppend(t, q, "next")
	if seq != 301 {
		t.Fatalf("seq %d", seq)
	}
	checkFor(t, 5*time.Second, func() error {
		files := segFiles(t, dir)
		if len(files) != 1 || fileSize(t, files[0]) != segHeaderLen+recHeaderLen+4 {
			return fmt.Errorf("files %v", files)
		}
		return nil
	})
	q.Close()
	q = openT(t, cfg, Options{})
	if got := drain(t, q, 20*time.Millisecond, false); len(got) != 1 || got[0].Seq != 301 {
		t.Fatalf("after reopen %+v", got)
	}
}

func TestTornTail(t *testing.T) {
	dir := t.TempDir()
	q := openT(t, Config{Dir: dir}, Options{})
	for i := range 20 {
		mustAppend(t, q, fmt.Sprint("record-", i))
	}
	q.Close()
	files := segFiles(t, dir)
	last := files[len(files)-1]
	if err := os.Truncate(last, fileSize(t, last)-5); err != nil { // mid last record
		t.Fatal(err)
	}
	q = openT(t, Config{Dir: dir}, Options{})
	got := drain(t, q, 20*time.Millisecond, false)
	if len(got) != 19 {
		t.Fatalf("got %d records, want 19", len(got))
	}
	for i, r := range got {
		if string(r.Data) != fmt.Sprint("record-", i) {
			t.Fatalf("record %d = %q", i, r.Data)
		}
	}
	if st := q.Stats(); st.Drops[ReasonTornTail] != 1 {
		t.Fatalf("drops %v", st.Drops)
	}
	seq := mustAppend(t, q, "after")
	if seq != 20 { // seq 20 was torn away: its number is reused
		t.Fatalf("seq %d", seq)
	}
	if r := mustNext(t, q); string(r.Data) != "after" {
		t.Fatalf("got %q", r.Data)
	}
}

// TestCorruptMidSegment flips one bit in records of a sealed and of the
// active segment (in data, length and seq fields): open succeeds, each bad
// record is skipped and counted once, all others are delivered.
func TestCorruptMidSegment(t *testing.T) {
	for _, tc := range []struct {
		name  string
		field int // byte offset within the record to damage
	}{
		{"data", recHeaderLen + 10},
		{"length", 1},
		{"header crc", 5},
		{"data crc", 9},
		{"seq", 13},
		{"time", 21},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := Config{Dir: dir, SegmentSize: minSegmentSize}
			q := openT(t, cfg, Options{})
			const n = 200
			payload := bytes.Repeat([]byte("p"), 500)
			for i := range n {
				mustAppend(t, q, fmt.Sprintf("%04d%s", i, payload))
			}
			q.Close()
			files := segFiles(t, dir)
			if len(files) < 2 {
				t.Fatalf("want several segments, have %d", len(files))
			}
			rec := int64(recHeaderLen + 504)
			flip := func(file string, idx int64) {
				f, err := os.OpenFile(file, os.O_RDWR, 0)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				off := segHeaderLen + idx*rec + int64(tc.field)
				b := make([]byte, 1)
				f.ReadAt(b, off)
				b[0] ^= 0x10
				f.WriteAt(b, off)
			}
			flip(files[0], 50)            // sealed segment: record 50
			flip(files[len(files)-1], 10) // active segment
			var logs bytes.Buffer
			q = openT(t, cfg, Options{Logger: newTestLogger(&logs)})
			got := drain(t, q, 20*time.Millisecond, true)
			if len(got) != n-2 {
				t.Fatalf("got %d records, want %d", len(got), n-2)
			}
			seen := map[int]bool{}
			for _, r := range got {
				var i int
				fmt.Sscanf(string(r.Data[:4]), "%d", &i)
				if !bytes.Equal(r.Data[4:], payload) || uint64(i+1) != r.Seq {
					t.Fatalf("bad record seq %d %q", r.Seq, r.Data[:4])
				}
				seen[i] = true
			}
			if seen[50] {
				t.Fatal("corrupt record 50 was served")
			}
			st := q.Stats()
			if st.Drops[ReasonCorrupt] != 2 || st.Depth != 0 {
				t.Fatalf("stats %+v", st)
			}
			if !bytes.Contains(logs.Bytes(), []byte("offset=")) || !bytes.Contains(logs.Bytes(), []byte(files[0])) {
				t.Fatalf("corruption not logged with file and offset:\n%s", logs.String())
			}
			// Rewind over the corrupt region does not count it again.
			q.Rewind()
			drain(t, q, 20*time.Millisecond, true)
			if st := q.Stats(); st.Drops[ReasonCorrupt] != 2 {
				t.Fatalf("counted again: %v", st.Drops)
			}
		})
	}
}

func TestMaxBytesRejectNew(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Dir: dir, SegmentSize: minSegmentSize, MaxBytes: 4 * minSegmentSize, OnFull: RejectNew}
	q := openT(t, cfg, Options{})
	data := bytes.Repeat([]byte("r"), 1000)
	accepted := 0
	for {
		_, err := q.Append(context.Background(), data)
		if errors.Is(err, ErrFull) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		accepted++
		if accepted > 1000 {
			t.Fatal("never full")
		}
	}
	st := q.Stats()
	if st.Rejected != 1 || st.DiskBytes > int64(cfg.MaxBytes) {
		t.Fatalf("stats %+v", st)
	}
	if _, err := q.Append(context.Background(), data); !errors.Is(err, ErrFull) {
		t.Fatalf("still full: %v", err)
	}
	if got := drain(t, q, 20*time.Millisecond, true); len(got) != accepted {
		t.Fatalf("drained %d of %d", len(got), accepted)
	}
	checkFor(t, 5*time.Second, func() error {
		_, err := q.Append(context.Background(), data)
		return err
	})
	if st := q.Stats(); st.Rejected < 2 {
		t.Fatalf("rejected %d", st.Rejected)
	}
}

func TestMaxBytesDropOldest(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Dir: dir, SegmentSize: minSegmentSize, MaxBytes: 4 * minSegmentSize, OnFull: DropOldest}
	q := openT(t, cfg, Options{})
	data := bytes.Repeat([]byte("d"), 1000)
	const n = 1000 // ~1 MB into a 256 KiB queue
	for range n {
		if _, err := q.Append(context.Background(), data); err != nil {
			t.Fatal(err)
		}
	}
	var st Stats
	checkFor(t, 5*time.Second, func() error {
		st = q.Stats()
		if st.DiskBytes > int64(cfg.MaxBytes)+minSegmentSize {
			return fmt.Errorf("disk bytes %d", st.DiskBytes)
		}
		return nil
	})
	got := drain(t, q, 20*time.Millisecond, true)
	st = q.Stats()
	dropped := st.Drops[ReasonMaxBytes]
	if dropped == 0 || uint64(len(got))+dropped != n {
		t.Fatalf("delivered %d + dropped %d != %d", len(got), dropped, n)
	}
	if got[0].Seq != dropped+1 || got[len(got)-1].Seq != n {
		t.Fatalf("delivered %d..%d", got[0].Seq, got[len(got)-1].Seq)
	}
	mustAppend(t, q, "after")
}

// fakeClock has a wall clock (Set jumps it) and a monotonic clock (Add
// advances both).
type fakeClock struct {
	mu   sync.Mutex
	t    time.Time
	mono time.Duration
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Elapsed() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mono
}
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mono += d
	c.mu.Unlock()
}
func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

func TestMaxAge(t *testing.T) {
	dir := t.TempDir()
	clk := &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	cfg := Config{Dir: dir, SegmentSize: minSegmentSize, MaxAge: ConfigDuration(time.Hour)}
	q := openT(t, cfg, Options{Now: clk.Now, elapsed: clk.Elapsed})
	data := bytes.Repeat([]byte("a"), 1000)
	for range 200 { // several sealed segments of old records
		mustAppend(t, q, string(data))
	}
	clk.Add(2 * time.Hour)
	for i := range 5 {
		mustAppend(t, q, fmt.Sprint("fresh", i))
	}
	// Sealed, wholly expired segments are deleted by housekeeping.
	checkFor(t, 5*time.Second, func() error {
		if st := q.Stats(); st.Drops[ReasonMaxAge] == 0 {
			return fmt.Errorf("nothing expired yet: %+v", st)
		}
		return nil
	})
	got := drain(t, q, 20*time.Millisecond, true)
	if len(got) != 5 || string(got[0].Data) != "fresh0" {
		t.Fatalf("got %d records, first %.10q", len(got), got[0].Data)
	}
	if st := q.Stats(); st.Drops[ReasonMaxAge] != 200 || st.Depth != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestClockSurvivesRTCLessBoot: a gateway that boots at 1970 keeps queue
// time from going backwards, so ages stay sane.
func TestClockSurvivesRTCLessBoot(t *testing.T) {
	dir := t.TempDir()
	real := &fakeClock{t: time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)}
	q := openT(t, Config{Dir: dir}, Options{Now: real.Now})
	mustAppend(t, q, "before reboot")
	q.Close()

	boot := &fakeClock{t: time.Unix(0, 0)}
	q = openT(t, Config{Dir: dir, MaxAge: ConfigDuration(time.Hour)}, Options{Now: boot.Now, elapsed: boot.Elapsed})
	boot.Add(10 * time.Minute)
	mustAppend(t, q, "after reboot")
	st := q.Stats()
	if st.OldestAge < 10*time.Minute || st.OldestAge > 11*time.Minute {
		t.Fatalf("oldest age %v, want about 10m", st.OldestAge)
	}
	got := drain(t, q, 20*time.Millisecond, true)
	if len(got) != 2 || got[1].Time.Before(got[0].Time) {
		t.Fatalf("records %+v", got)
	}
	if got[1].Time.Sub(got[0].Time) != 10*time.Minute {
		t.Fatalf("queue time advanced by %v", got[1].Time.Sub(got[0].Time))
	}
	// NTP fixes the wall clock: wall time is used again.
	boot.Set(time.Date(2030, 6, 2, 0, 0, 0, 0, time.UTC))
	mustAppend(t, q, "synced")
	if r := mustNext(t, q); !r.Time.Equal(boot.Now()) {
		t.Fatalf("time %v", r.Time)
	}
}

func TestLockedDir(t *testing.T) {
	dir := t.TempDir()
	openT(t, Config{Dir: dir}, Options{})
	if _, err := Open(Config{Dir: dir}, Options{}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: %v", err)
	}
}

func TestTooLarge(t *testing.T) {
	q := openT(t, Config{Dir: t.TempDir()}, Options{})
	if _, err := q.Append(context.Background(), make([]byte, MaxRecordSize+1)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("got %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	var c Config
	c.SetDefaults()
	err := c.Validate()
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("dir: required")) {
		t.Fatalf("got %v", err)
	}
	c = Config{Dir: "x", Fsync: "sometimes", OnFull: "explode", MaxBytes: 100 << 10}
	c.SetDefaults()
	err = c.Validate()
	for _, want := range []string{"fsync:", "on_full:", "max_bytes:"} {
		if err == nil || !bytes.Contains([]byte(err.Error()), []byte(want)) {
			t.Fatalf("want %q in %v", want, err)
		}
	}
	c = Config{Dir: "x", MaxBytes: 64 << 20}
	c.SetDefaults()
	if err := c.Validate(); err != nil || c.SegmentSize != 8<<20 {
		t.Fatalf("defaults %+v: %v", c, err)
	}
}
