package queue

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// Offline tooling (outpost queue status / inspect / verify). These functions
// read a queue directory without taking its lock and without writing, so
// they are safe next to a running agent (whose newest records they may not
// see yet).

// IsQueueDir reports whether dir looks like a queue directory (holds a
// segment or a cursor file).
func IsQueueDir(dir string) bool {
	names, err := osFS{}.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, n := range names {
		if _, ok := parseSegName(n); ok || n == cursorName {
			return true
		}
	}
	return false
}

// LaneDirs returns dir itself if it is a queue directory, else its
// subdirectories that are (one per uplink lane), sorted.
func LaneDirs(dir string) ([]string, error) {
	if IsQueueDir(dir) {
		return []string{dir}, nil
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	var out []string
	for _, e := range ents {
		if p := filepath.Join(dir, e.Name()); e.IsDir() && IsQueueDir(p) {
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("queue: %s holds no queue (no *.seg or cursor file, nor lane subdirectories with them)", dir)
	}
	return out, nil
}

type segInfo struct {
	base uint64
	path string
	size int64
}

func listSegments(dir string) ([]segInfo, error) {
	names, err := osFS{}.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	var segs []segInfo
	for _, n := range names {
		b, ok := parseSegName(n)
		if !ok {
			continue
		}
		p := filepath.Join(dir, n)
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("queue: %w", err)
		}
		segs = append(segs, segInfo{base: b, path: p, size: st.Size()})
	}
	sort.Slice(segs, func(i, j int) bool { return segs[i].base < segs[j].base })
	return segs, nil
}

func readCursorFile(dir string) (cursorState, bool) {
	f, err := os.Open(filepath.Join(dir, cursorName))
	if err != nil {
		return cursorState{}, false
	}
	defer f.Close()
	return readCursor(f)
}

// scanSegment calls fn for every valid record of a segment and bad for every
// damaged region. maxSeq bounds plausible seqs (the next segment's base - 1).
func scanSegment(s segInfo, from, maxSeq uint64, fn func(rawRecord) bool, bad func(skip, uint64)) error {
	f, err := os.Open(s.path)
	if err != nil {
		return fmt.Errorf("queue: %w", err)
	}
	defer f.Close()
	sc := newScanner(f, s.base, s.size, segHeaderLen, s.base, maxSeq)
	expect := s.base
	for {
		r, sk, err := sc.next()
		if err == io.EOF {
			if sk.n > 0 && bad != nil {
				bad(sk, 0)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("queue: read %s: %w", s.path, err)
		}
		if (sk.n > 0 || r.seq > expect) && bad != nil {
			bad(sk, r.seq-expect)
		}
		expect = r.seq + 1
		if r.seq >= from && !fn(r) {
			return nil
		}
	}
}

// ReadStatus returns the Stats of the queue in dir, read offline: depth and
// bytes from the cursor and the segment files (the newest segment is
// scanned), drops and totals as persisted at the last cursor write.
// Process-local fields (fsyncs, drain rate) are zero.
func ReadStatus(dir string) (Stats, error) {
	segs, err := listSegments(dir)
	if err != nil {
		return Stats{}, err
	}
	cs, _ := readCursorFile(dir)
	s := Stats{Lane: filepath.Base(dir), Segments: len(segs), Drops: map[string]uint64{},
		Appended: cs.appended, Acked: cs.acked, Rejected: cs.rejected}
	for i, n := range cs.drops {
		s.Drops[reasonNames[i]] = n
	}
	if len(segs) == 0 {
		s.FirstSeq, s.NextSeq = max(cs.floor, 1), max(cs.floor, 1)
		return s, nil
	}
	last := segs[len(segs)-1]
	next := last.base
	if err := scanSegment(last, 0, ^uint64(0), func(r rawRecord) bool { next = r.seq + 1; return true }, nil); err != nil {
		return s, err
	}
	floor := min(max(cs.floor, segs[0].base), next)
	s.FirstSeq, s.NextSeq, s.Depth = floor, next, next-floor
	for _, g := range segs {
		s.DiskBytes += g.size
	}
	if s.Depth == 0 {
		return s, nil
	}
	// The record at the floor: its offset gives Bytes, its time the age.
	i := sort.Search(len(segs), func(i int) bool { return segs[i].base > floor }) - 1
	i = max(i, 0)
	maxSeq := ^uint64(0)
	if i+1 < len(segs) {
		maxSeq = segs[i+1].base - 1
	}
	var off, nanos int64 = segHeaderLen, 0
	err = scanSegment(segs[i], floor, maxSeq, func(r rawRecord) bool { off, nanos = r.off, r.nanos; return false }, nil)
	if err != nil {
		return s, err
	}
	for _, g := range segs[i:] {
		s.Bytes += g.size - segHeaderLen
	}
	s.Bytes -= off - segHeaderLen
	if nanos != 0 {
		now := max(time.Now().UnixNano(), cs.clock)
		s.OldestAge = time.Duration(max(now-nanos, 0))
	}
	return s, nil
}

// Inspect calls fn for up to n records (n <= 0: all) of the queue in dir,
// starting at the first unacknowledged one (all: from the oldest record
// on disk). Record.Data aliases a buffer valid only during the call.
func Inspect(dir string, all bool, n int, fn func(Record) error) error {
	segs, err := listSegments(dir)
	if err != nil {
		return err
	}
	from := uint64(0)
	if cs, ok := readCursorFile(dir); ok && !all {
		from = cs.floor
	}
	count := 0
	var ferr error
	for i, g := range segs {
		if i+1 < len(segs) && segs[i+1].base <= from {
			continue
		}
		maxSeq := ^uint64(0)
		if i+1 < len(segs) {
			maxSeq = segs[i+1].base - 1
		}
		err := scanSegment(g, from, maxSeq, func(r rawRecord) bool {
			ferr = fn(Record{Seq: r.seq, Time: time.Unix(0, r.nanos), Data: r.data})
			count++
			return ferr == nil && (n <= 0 || count < n)
		}, nil)
		if err != nil {
			return err
		}
		if ferr != nil {
			return ferr
		}
		if n > 0 && count >= n {
			return nil
		}
	}
	return nil
}

// Damage is one damaged region found by Verify.
type Damage struct {
	File    string `json:"file"`
	Offset  int64  `json:"offset"`
	Bytes   int64  `json:"bytes"`   // bytes that hold no valid record
	Records uint64 `json:"records"` // seqs missing because of it (0 = unknown, e.g. at the tail)
	Tail    bool   `json:"tail"`    // at the end of the file (a torn tail if in the newest segment)
	Problem string `json:"problem"`
}

// VerifyReport is the result of Verify.
type VerifyReport struct {
	Dir      string   `json:"dir"`
	Segments int      `json:"segments"`
	Records  uint64   `json:"records"`
	Bytes    int64    `json:"bytes"`
	Damage   []Damage `json:"damage"`
}

// OK reports whether no damage was found.
func (r VerifyReport) OK() bool { return len(r.Damage) == 0 }

// Verify scans every record of every segment in dir, checking headers,
// CRCs and seq continuity, and reports each damaged region with its file
// and offset.
func Verify(dir string) (VerifyReport, error) {
	segs, err := listSegments(dir)
	if err != nil {
		return VerifyReport{}, err
	}
	rep := VerifyReport{Dir: dir, Segments: len(segs)}
	for i, g := range segs {
		rep.Bytes += g.size
		hdr := make([]byte, segHeaderLen)
		if f, err := os.Open(g.path); err == nil {
			_, rerr := f.ReadAt(hdr, 0)
			f.Close()
			if err := checkSegHeader(hdr, g.base); rerr != nil || err != nil {
				if err == nil {
					err = rerr
				}
				rep.Damage = append(rep.Damage, Damage{File: g.path, Offset: 0, Bytes: segHeaderLen, Problem: "segment header: " + err.Error()})
			}
		}
		maxSeq := ^uint64(0)
		if i+1 < len(segs) {
			maxSeq = segs[i+1].base - 1
		}
		lastSeq := g.base - 1
		err := scanSegment(g, 0, maxSeq, func(r rawRecord) bool {
			rep.Records++
			lastSeq = r.seq
			return true
		}, func(sk skip, missing uint64) {
			d := Damage{File: g.path, Offset: sk.off, Bytes: sk.n, Records: missing, Problem: "CRC or framing error"}
			if sk.n == 0 {
				d.Problem = "seq gap"
			}
			if missing == 0 {
				d.Tail = true
				d.Problem = "bytes after the last valid record"
			}
			rep.Damage = append(rep.Damage, d)
		})
		if err != nil {
			return rep, err
		}
		if i+1 < len(segs) && lastSeq+1 < segs[i+1].base {
			rep.Damage = append(rep.Damage, Damage{File: g.path, Offset: g.size, Records: segs[i+1].base - 1 - lastSeq,
				Problem: fmt.Sprintf("segment ends at seq %d, next segment starts at %d", lastSeq, segs[i+1].base)})
		}
	}
	return rep, nil
}
