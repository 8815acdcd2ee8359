package queue

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// ErrLocked is returned by Open when another process holds the queue
// directory.
var ErrLocked = errors.New("queue: directory is locked by another process")

// Options are the runtime (non-YAML) settings of a disk queue. The zero value
// is valid.
type Options struct {
	// Name labels metrics and logs (the uplink lane name); "" = "default".
	Name string
	// Logger receives recovery and corruption reports; nil discards.
	Logger *slog.Logger
	// Metrics is where the queue registers its metrics; nil = a private set.
	Metrics *metrics.Set
	// Now replaces time.Now (tests).
	Now func() time.Time
	// MaxPending bounds the bytes waiting for the committer; Append and
	// AppendAsync block beyond it (backpressure). Default 8MiB.
	MaxPending int
	// MaxInflight bounds the records returned by Next and not yet
	// acknowledged; Next blocks beyond it. Default 65536.
	MaxInflight int

	fs        fsys                 // nil = the real filesystem
	elapsed   func() time.Duration // nil = monotonic time since Open (tests)
	housekeep time.Duration        // housekeeping and cursor-save period, default 200ms (tests)
}

const (
	policyAlways = iota
	policyInterval
	policyNever
)

// segMeta is the in-memory index entry of one segment file: a few words per
// segment, nothing per record.
type segMeta struct {
	base       uint64 // seq of its first record (file name)
	size       int64  // bytes written so far (committer's view)
	visSize    int64  // bytes holding records below Disk.visible (readers' view)
	firstNanos int64  // time of its first record, 0 = unknown
	lastNanos  int64  // time of its last record, 0 = unknown
}

// completion is one record waiting for durability.
type completion struct {
	seq uint64
	w   *waiter
	fn  func(uint64, error)
}

type waiter struct{ ch chan error }

var waiterPool = sync.Pool{New: func() any { return &waiter{ch: make(chan error, 1)} }}

// roll marks where, in a batch, a new segment starts.
type roll struct {
	off        int    // offset in batch.buf
	base       uint64 // first seq of the new segment
	firstNanos int64
	prevNanos  int64 // time of the last record of the segment being sealed
}

// batch is what appenders fill and the committer writes in one go.
type batch struct {
	buf       []byte
	rolls     []roll
	comps     []completion
	first     uint64
	last      uint64
	lastNanos int64
}

func (b *batch) reset() {
	b.buf = b.buf[:0]
	b.rolls = b.rolls[:0]
	clear(b.comps)
	b.comps = b.comps[:0]
	b.first, b.last, b.lastNanos = 0, 0, 0
}

// entry tracks one record between the ack floor and the read high-water.
type entry struct {
	seg   uint64 // segment base
	end   int64  // offset just past the record
	nanos int64
	acked bool
}

// Disk is the durable, segmented queue. Create it with Open.
type Disk struct {
	cfg       Config
	name      string
	dir       string
	fs        fsys
	log       *slog.Logger
	policy    int
	segSize   int64
	maxBytes  int64
	maxAge    int64
	reject    bool
	maxPend   int64
	maxInfl   int
	housekeep time.Duration
	lock      io.Closer
	cf        file // cursor file (committer only after Open)
	met       *queueMetrics

	kick chan struct{}
	done chan struct{}

	mu      sync.Mutex
	space   *sync.Cond    // appenders waiting for MaxPending room
	wake    chan struct{} // closed (and replaced) to wake Next callers
	waiting bool          // a Next caller holds wake

	// producer side (mu)
	cur, spare  *batch
	nextSeq     uint64
	actBytes    int64 // active segment size including pending bytes
	pendBytes   int64
	lastAppNano int64
	closed      bool
	err         error
	clk         *clock

	// committed state (mu; the committer writes)
	segs      []*segMeta
	diskBytes int64
	visible   uint64 // seqs below are readable
	wf        file   // active segment, committer only
	fsyncs    uint64
	lastFsync time.Duration
	unsynced  bool // written but not fsynced (interval, never)
	dirDirty  bool
	lastSync  time.Time

	// consumer side (mu)
	floor      uint64 // every seq below is acknowledged or dropped
	floorSeg   uint64
	floorOff   int64 // 0 = unknown (start of floorSeg)
	ents       []entry
	entHead    int
	entN       int
	entAcked   int    // acked entries in the window (excluding gap fillers)
	readSeq    uint64 // next seq Next considers
	reposition bool
	counted    uint64 // corruption already counted below this seq
	lastRead   int64  // time of the last record read
	cs         cursorState
	csDirty    bool
	csWritten  time.Time
	csSynced   bool
	rate       [12]rateSample
	rateN      int

	nextMu sync.Mutex // serialises Next
	rd     struct {
		base uint64
		f    file
		sc   *scanner
	}
}

type rateSample struct {
	t     time.Time
	acked uint64
}

var _ interface {
	Append(context.Context, []byte) (uint64, error)
	Next(context.Context) (Record, error)
	Ack(uint64) error
	Rewind()
	Close() error
} = (*Disk)(nil)

// Open opens (creating if needed) the queue in cfg.Dir and recovers it:
// a torn tail of the newest segment is truncated at the last valid record,
// corrupt records are left in place and skipped when read. cfg gets
// SetDefaults and Validate.
func Open(cfg Config, opts Options) (*Disk, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("queue: config: %w", err)
	}
	q := &Disk{
		cfg:      cfg,
		name:     opts.Name,
		dir:      cfg.Dir,
		fs:       opts.fs,
		log:      opts.Logger,
		segSize:  int64(cfg.SegmentSize),
		maxBytes: int64(cfg.MaxBytes),
		maxAge:   int64(cfg.MaxAge),
		reject:   cfg.OnFull == RejectNew,
		maxPend:  int64(opts.MaxPending),
		maxInfl:  opts.MaxInflight,
		kick:     make(chan struct{}, 1),
		done:     make(chan struct{}),
		wake:     make(chan struct{}),
		cur:      &batch{},
		spare:    &batch{},
	}
	if q.name == "" {
		q.name = "default"
	}
	if q.fs == nil {
		q.fs = osFS{}
	}
	if q.log == nil {
		q.log = slog.New(slog.DiscardHandler)
	}
	q.log = q.log.With("module", "queue", "lane", q.name)
	if q.maxPend <= 0 {
		q.maxPend = 8 << 20
	}
	if q.maxInfl <= 0 {
		q.maxInfl = 65536
	}
	switch cfg.Fsync {
	case FsyncInterval:
		q.policy = policyInterval
	case FsyncNever:
		q.policy = policyNever
	}
	q.housekeep = opts.housekeep
	if q.housekeep <= 0 {
		q.housekeep = 200 * time.Millisecond
	}
	q.space = sync.NewCond(&q.mu)
	if err := q.fs.MkdirAll(q.dir, 0o750); err != nil {
		return nil, fmt.Errorf("queue: open %s: %w", q.dir, err)
	}
	lk, err := q.fs.Lock(q.dir)
	if err != nil {
		return nil, fmt.Errorf("queue: lock %s: %w", q.dir, err)
	}
	q.lock = lk
	if err := q.recover(opts.Now, opts.elapsed); err != nil {
		q.closeFiles()
		return nil, err
	}
	q.met = newQueueMetrics(q, opts.Metrics)
	q.lastSync = time.Now()
	go q.committer()
	return q, nil
}

func (q *Disk) path(base uint64) string { return filepath.Join(q.dir, segName(base)) }

// recover rebuilds the in-memory index from the directory.
func (q *Disk) recover(now func() time.Time, elapsed func() time.Duration) error {
	names, err := q.fs.ReadDir(q.dir)
	if err != nil {
		return fmt.Errorf("queue: open %s: %w", q.dir, err)
	}
	var bases []uint64
	for _, n := range names {
		if b, ok := parseSegName(n); ok {
			bases = append(bases, b)
		}
	}
	sort.Slice(bases, func(i, j int) bool { return bases[i] < bases[j] })

	q.cf, err = q.fs.OpenFile(filepath.Join(q.dir, cursorName), os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return fmt.Errorf("queue: open cursor: %w", err)
	}
	cs, ok := readCursor(q.cf)
	if !ok && len(bases) > 0 {
		q.log.Warn("cursor file unreadable; resuming at the oldest record", "file", filepath.Join(q.dir, cursorName))
	}
	q.cs = cs
	clockFloor := cs.clock

	for i, b := range bases {
		m := &segMeta{base: b}
		last := i == len(bases)-1
		if !last {
			if err := q.indexSealed(m, bases[i+1]); err != nil {
				return err
			}
			q.segs = append(q.segs, m)
			q.diskBytes += m.size
			continue
		}
		next, lastNanos, err := q.recoverActive(m)
		if err != nil {
			return err
		}
		q.segs = append(q.segs, m)
		q.diskBytes += m.size
		q.nextSeq = next
		clockFloor = max(clockFloor, lastNanos)
		q.lastAppNano = lastNanos
	}
	if len(q.segs) == 0 {
		base := max(cs.floor, 1)
		q.nextSeq = base
		if err := q.createSegment(base, 0); err != nil {
			return err
		}
		if err := q.fs.SyncDir(q.dir); err != nil {
			return fmt.Errorf("queue: sync dir %s: %w", q.dir, err)
		}
	}
	q.clk = newClock(now, elapsed, clockFloor)
	q.visible = q.nextSeq
	q.actBytes = q.segs[len(q.segs)-1].size

	q.floor = min(max(cs.floor, q.segs[0].base), q.nextSeq)
	q.readSeq = q.floor
	q.counted = q.floor
	q.floorSeg = q.segFor(q.floor).base
	q.cs.floor = q.floor
	// Segments wholly below the floor were acknowledged before the crash.
	q.deleteAcked()
	q.ents = make([]entry, 1024)
	return nil
}

// indexSealed fills the metadata of a non-newest segment: its size and the
// time of its first valid record (read from the first few KiB).
func (q *Disk) indexSealed(m *segMeta, nextBase uint64) error {
	p := q.path(m.base)
	f, err := q.fs.OpenFile(p, os.O_RDONLY, 0)
	if err != nil {
		return fmt.Errorf("queue: open %s: %w", p, err)
	}
	defer f.Close()
	if m.size, err = f.Size(); err != nil {
		return fmt.Errorf("queue: stat %s: %w", p, err)
	}
	m.visSize = m.size
	hdr := make([]byte, segHeaderLen)
	if _, err := f.ReadAt(hdr, 0); err != nil || checkSegHeader(hdr, m.base) != nil {
		q.log.Warn("segment header damaged; records will be scanned", "file", p, "offset", 0)
	}
	sc := newScanner(f, m.base, m.size, segHeaderLen, m.base, nextBase-1)
	sc.chunk = 4096
	if r, _, err := sc.next(); err == nil {
		m.firstNanos = r.nanos
	}
	return nil
}

// recoverActive scans the newest segment completely, truncates a torn tail
// and returns the next seq and the time of the last valid record.
func (q *Disk) recoverActive(m *segMeta) (uint64, int64, error) {
	p := q.path(m.base)
	f, err := q.fs.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		return 0, 0, fmt.Errorf("queue: open %s: %w", p, err)
	}
	size, err := f.Size()
	if err != nil {
		f.Close()
		return 0, 0, fmt.Errorf("queue: stat %s: %w", p, err)
	}
	hdr := make([]byte, segHeaderLen)
	n, _ := f.ReadAt(hdr, 0)
	if n < segHeaderLen || checkSegHeader(hdr, m.base) != nil {
		if size > segHeaderLen {
			q.log.Warn("segment header damaged; rewriting it", "file", p, "offset", 0)
		}
		if _, err := f.WriteAt(segHeader(m.base), 0); err != nil {
			f.Close()
			return 0, 0, fmt.Errorf("queue: repair %s: %w", p, err)
		}
		size = max(size, segHeaderLen)
	}
	sc := newScanner(f, m.base, size, segHeaderLen, m.base, ^uint64(0))
	next, end, lastNanos := m.base, int64(segHeaderLen), int64(0)
	for {
		r, sk, err := sc.next()
		if err != nil && err != io.EOF {
			f.Close()
			return 0, 0, fmt.Errorf("queue: read %s: %w", p, err)
		}
		if err == io.EOF {
			if sk.n > 0 {
				q.log.Warn("torn tail truncated", "file", p, "offset", sk.off, "bytes", sk.n)
				q.cs.drops[rTornTail]++
				q.csDirty = true
				if err := f.Truncate(end); err != nil {
					f.Close()
					return 0, 0, fmt.Errorf("queue: truncate %s: %w", p, err)
				}
			}
			break
		}
		if sk.n > 0 {
			q.log.Warn("corrupt record skipped", "file", p, "offset", sk.off, "bytes", sk.n)
		}
		if m.firstNanos == 0 {
			m.firstNanos = r.nanos
		}
		next, end, lastNanos = r.seq+1, r.end(), r.nanos
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return 0, 0, fmt.Errorf("queue: sync %s: %w", p, err)
	}
	m.size, m.visSize = end, end
	m.lastNanos = lastNanos
	q.wf = f
	return next, lastNanos, nil
}

// createSegment creates the segment file for base and makes it active.
// The caller syncs the directory.
func (q *Disk) createSegment(base uint64, firstNanos int64) error {
	p := q.path(base)
	f, err := q.fs.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return fmt.Errorf("queue: create %s: %w", p, err)
	}
	if _, err := f.WriteAt(segHeader(base), 0); err != nil {
		f.Close()
		return fmt.Errorf("queue: write %s: %w", p, err)
	}
	if q.wf != nil {
		q.wf.Close()
	}
	q.wf = f
	m := &segMeta{base: base, size: segHeaderLen, visSize: segHeaderLen, firstNanos: firstNanos}
	q.mu.Lock()
	q.segs = append(q.segs, m)
	q.diskBytes += segHeaderLen
	q.mu.Unlock()
	q.dirDirty = true
	return nil
}

// segFor returns the segment that holds seq (the last one whose base <= seq).
// Caller holds mu (or is in Open).
func (q *Disk) segFor(seq uint64) *segMeta {
	i := sort.Search(len(q.segs), func(i int) bool { return q.segs[i].base > seq })
	if i == 0 {
		return q.segs[0]
	}
	return q.segs[i-1]
}

// Append adds data to the queue and returns its seq once the record is
// durable per the fsync policy. If ctx ends first, Append returns ctx.Err()
// but the record may still be stored (a retry then makes a duplicate).
func (q *Disk) Append(ctx context.Context, data []byte) (uint64, error) {
	w := waiterPool.Get().(*waiter)
	seq, err := q.enqueue(data, w, nil)
	if err != nil {
		waiterPool.Put(w)
		return 0, err
	}
	select {
	case err := <-w.ch:
		waiterPool.Put(w)
		if err != nil {
			return 0, err
		}
		return seq, nil
	case <-ctx.Done():
		return 0, ctx.Err() // w is abandoned: the committer still sends to it
	}
}

// AppendAsync adds data to the queue without waiting; done is called with the
// record's seq once it is durable per the fsync policy, or with an error.
// Callbacks run on the queue's committer goroutine in append order: they must
// be quick and must not call Append. If the record cannot be queued at all
// (closed, full, too large) done is called before AppendAsync returns. It
// blocks only while more than Options.MaxPending bytes wait for the disk.
func (q *Disk) AppendAsync(data []byte, done func(seq uint64, err error)) {
	if _, err := q.enqueue(data, nil, done); err != nil && done != nil {
		done(0, err)
	}
}

func (q *Disk) enqueue(data []byte, w *waiter, fn func(uint64, error)) (uint64, error) {
	if len(data) > MaxRecordSize {
		return 0, fmt.Errorf("%w: %d bytes (max %d)", ErrTooLarge, len(data), MaxRecordSize)
	}
	fs := frameSize(len(data))
	q.mu.Lock()
	for q.pendBytes > q.maxPend && !q.closed && q.err == nil {
		q.space.Wait()
	}
	if q.closed {
		q.mu.Unlock()
		return 0, ErrClosed
	}
	if q.err != nil {
		err := q.err
		q.mu.Unlock()
		return 0, err
	}
	if q.reject && q.maxBytes > 0 && q.diskBytes+q.pendBytes+fs > q.maxBytes {
		q.cs.rejected++
		q.csDirty = true
		q.mu.Unlock()
		q.met.rejected.Inc()
		return 0, ErrFull
	}
	seq := q.nextSeq
	q.nextSeq++
	nanos := q.clk.nanos()
	b := q.cur
	// Roll when the segment is full, or when everything in it is
	// acknowledged and it is big enough to be worth deleting.
	if (q.actBytes+fs > q.segSize || q.floor == seq && q.actBytes >= q.segSize/4) && q.actBytes > segHeaderLen {
		b.rolls = append(b.rolls, roll{off: len(b.buf), base: seq, firstNanos: nanos, prevNanos: q.lastAppNano})
		q.actBytes = segHeaderLen
		q.pendBytes += segHeaderLen
	}
	b.buf = appendFrame(b.buf, seq, nanos, data)
	q.actBytes += fs
	q.pendBytes += fs
	q.lastAppNano = nanos
	if b.first == 0 {
		b.first = seq
	}
	b.last, b.lastNanos = seq, nanos
	b.comps = append(b.comps, completion{seq: seq, w: w, fn: fn})
	q.cs.appended++
	first := len(b.comps) == 1
	q.mu.Unlock()
	if first {
		q.signal()
	}
	return seq, nil
}

func (q *Disk) signal() {
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

// broadcast wakes Next callers, if any wait; caller holds mu.
func (q *Disk) broadcast() {
	if q.waiting {
		close(q.wake)
		q.wake = make(chan struct{})
		q.waiting = false
	}
}

// committer is the single goroutine that writes, fsyncs, rolls and deletes
// segments and writes the cursor file.
func (q *Disk) committer() {
	defer close(q.done)
	housekeep := q.housekeep
	timer := time.NewTimer(housekeep)
	defer timer.Stop()
	nextHK := time.Now().Add(housekeep)
	for {
		select {
		case <-q.kick:
		case <-timer.C:
		}
		q.mu.Lock()
		b := q.cur
		q.cur, q.spare = q.spare, b
		closing := q.closed
		q.mu.Unlock()

		if len(b.comps) > 0 {
			q.commit(b)
			b.reset()
		}
		now := time.Now()
		if q.unsynced && q.policy == policyInterval && now.Sub(q.lastSync) >= q.cfg.FsyncInterval.D() {
			q.syncActive()
		}
		if !now.Before(nextHK) || closing {
			q.housekeeping(now)
			nextHK = now.Add(housekeep)
		} else {
			q.mu.Lock()
			del := q.deletable()
			q.mu.Unlock()
			if del {
				q.housekeeping(now)
			}
		}
		q.mu.Lock()
		pending := len(q.cur.comps) > 0
		q.mu.Unlock()
		if closing && !pending {
			q.finalSync()
			return
		}
		wait := time.Until(nextHK)
		if q.unsynced && q.policy == policyInterval {
			wait = min(wait, time.Until(q.lastSync.Add(q.cfg.FsyncInterval.D())))
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(max(wait, 0))
	}
}

// commit writes one batch, fsyncs per policy, publishes it to readers and
// completes its appenders.
func (q *Disk) commit(b *batch) {
	q.mu.Lock()
	err := q.err
	q.mu.Unlock()
	if err == nil {
		err = q.writeBatch(b)
	}
	if err == nil && q.policy == policyAlways {
		err = q.syncActive()
	}
	q.mu.Lock()
	if err != nil && q.err == nil {
		q.err = fmt.Errorf("queue: %s: %w", q.dir, err)
		q.log.Error("queue write failed; the queue refuses further appends", "err", err)
	}
	err = q.err
	q.pendBytes -= int64(len(b.buf)) + int64(len(b.rolls))*segHeaderLen
	if err == nil {
		q.visible = b.last + 1
		for i := len(q.segs) - 1; i >= 0 && q.segs[i].visSize != q.segs[i].size; i-- {
			q.segs[i].visSize = q.segs[i].size
		}
		q.broadcast()
	}
	q.space.Broadcast()
	q.mu.Unlock()
	if err == nil {
		q.met.appended.Add(len(b.comps))
	}
	for _, c := range b.comps {
		if c.w != nil {
			c.w.ch <- err
		} else if c.fn != nil {
			if err != nil {
				c.fn(0, err)
			} else {
				c.fn(c.seq, nil)
			}
		}
	}
}

// writeBatch writes b into the active segment, rolling where the appenders
// decided.
func (q *Disk) writeBatch(b *batch) error {
	start := 0
	for i := 0; i <= len(b.rolls); i++ {
		end := len(b.buf)
		if i < len(b.rolls) {
			end = b.rolls[i].off
		}
		if end > start {
			act := q.segs[len(q.segs)-1] // only the committer changes segs' tail
			if _, err := q.wf.WriteAt(b.buf[start:end], act.size); err != nil {
				return err
			}
			q.mu.Lock()
			act.size += int64(end - start)
			q.diskBytes += int64(end - start)
			if i < len(b.rolls) {
				act.lastNanos = b.rolls[i].prevNanos
			} else {
				act.lastNanos = b.lastNanos
			}
			if act.firstNanos == 0 {
				act.firstNanos = firstNanosOf(b, start)
			}
			q.mu.Unlock()
			q.unsynced = true
		}
		if i < len(b.rolls) {
			// Seal the active segment (its data must be durable before a
			// newer segment can be) and start the next one.
			if q.policy != policyNever && q.unsynced {
				if err := q.syncActive(); err != nil {
					return err
				}
			}
			if err := q.createSegment(b.rolls[i].base, b.rolls[i].firstNanos); err != nil {
				return err
			}
			q.unsynced = true
			start = end
		}
	}
	return nil
}

func firstNanosOf(b *batch, off int) int64 {
	if off+recHeaderLen > len(b.buf) {
		return 0
	}
	return int64(binary.LittleEndian.Uint64(b.buf[off+20:]))
}

// syncActive fsyncs the active segment and, if entries changed, the
// directory.
func (q *Disk) syncActive() error {
	t := time.Now()
	err := q.wf.Sync()
	if err == nil && q.dirDirty {
		err = q.fs.SyncDir(q.dir)
		if err == nil {
			q.dirDirty = false
		}
	}
	d := time.Since(t)
	q.met.fsync.Update(d.Seconds())
	q.mu.Lock()
	q.fsyncs++
	q.lastFsync = d
	q.mu.Unlock()
	q.unsynced = false
	q.lastSync = time.Now()
	return err
}

// finalSync runs on Close: everything written is fsynced, the cursor saved.
func (q *Disk) finalSync() {
	q.mu.Lock()
	failed := q.err != nil
	q.mu.Unlock()
	if !failed {
		if err := q.syncActive(); err != nil {
			q.log.Error("final fsync failed", "err", err)
		}
	}
	q.saveCursor(true)
}

// deletable reports whether some segment can be deleted (caller holds mu).
func (q *Disk) deletable() bool {
	return len(q.segs) > 1 && q.segs[1].base <= q.floor ||
		q.maxBytes > 0 && !q.reject && q.diskBytes > q.maxBytes && len(q.segs) > 1
}

// housekeeping applies limits, deletes consumed segments, saves the cursor
// and samples the drain rate.
func (q *Disk) housekeeping(now time.Time) {
	q.mu.Lock()
	var dead []uint64
	// on_full: drop_oldest
	for !q.reject && q.maxBytes > 0 && q.diskBytes > q.maxBytes && len(q.segs) > 1 {
		dead = append(dead, q.dropFirst(rMaxBytes))
	}
	// max_age: a sealed segment is expired when its newest record is; the
	// next segment's first record bounds that time from above.
	if q.maxAge > 0 {
		qnow := q.clk.nanos()
		for len(q.segs) > 1 {
			last := q.segs[0].lastNanos
			if last == 0 {
				last = q.segs[1].firstNanos
			}
			if last == 0 || qnow-last <= q.maxAge {
				break
			}
			dead = append(dead, q.dropFirst(rMaxAge))
		}
	}
	dead = append(dead, q.deleteAckedLocked()...)
	if q.rateN == 0 || now.Sub(q.rate[(q.rateN-1)%len(q.rate)].t) >= 900*time.Millisecond {
		q.rate[q.rateN%len(q.rate)] = rateSample{t: now, acked: q.cs.acked}
		q.rateN++
	}
	q.mu.Unlock()
	for _, b := range dead {
		p := q.path(b)
		if err := q.fs.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			q.log.Warn("cannot delete segment", "file", p, "err", err)
		}
		q.dirDirty = true
	}
	if len(dead) > 0 && q.policy != policyNever {
		if err := q.fs.SyncDir(q.dir); err == nil {
			q.dirDirty = false
		}
	}
	q.saveCursor(now.Sub(q.csWritten) >= q.housekeep)
}

// dropFirst takes the oldest segment out of the index, counting its
// unacknowledged records under reason r, and returns its base for the caller
// to unlink (caller holds mu; len(segs) > 1).
func (q *Disk) dropFirst(r int) uint64 {
	s, next := q.segs[0], q.segs[1].base
	if q.floor < next {
		n := next - max(q.floor, s.base)
		for i := 0; i < q.entN; i++ {
			e := q.ent(i)
			if q.floor+uint64(i) >= next {
				break
			}
			if e.acked {
				n--
			}
		}
		q.cs.drops[r] += n
		q.met.drops[r].Add(int(n))
		q.log.Warn("records dropped", "reason", reasonNames[r], "file", q.path(s.base), "records", n)
		q.setFloor(next, next, 0)
	}
	q.csDirty = true
	q.diskBytes -= s.size
	q.segs[0] = nil
	q.segs = q.segs[1:]
	return s.base
}

// deleteAcked removes (in Open) segments wholly below the floor.
func (q *Disk) deleteAcked() {
	for _, b := range q.deleteAckedLocked() {
		q.fs.Remove(q.path(b))
		q.dirDirty = true
	}
}

// deleteAckedLocked takes segments wholly below the floor out of the index
// and returns their bases for the caller to unlink (caller holds mu).
func (q *Disk) deleteAckedLocked() []uint64 {
	var dead []uint64
	for len(q.segs) > 1 && q.segs[1].base <= q.floor {
		dead = append(dead, q.segs[0].base)
		q.diskBytes -= q.segs[0].size
		q.segs[0] = nil
		q.segs = q.segs[1:]
	}
	if len(dead) > 0 && cap(q.segs) > 2*len(q.segs)+16 {
		q.segs = append([]*segMeta(nil), q.segs...)
	}
	return dead
}

// saveCursor writes the cursor file if it changed (and fsyncs it if sync).
func (q *Disk) saveCursor(sync bool) {
	q.mu.Lock()
	if !q.csDirty && (q.csSynced || !sync) {
		q.mu.Unlock()
		return
	}
	q.cs.gen++
	q.cs.floor = q.floor
	q.cs.clock = q.clk.last
	c := q.cs
	q.csDirty = false
	q.mu.Unlock()
	var buf [cursorSlotLen]byte
	if err := writeCursor(q.cf, &c, buf[:]); err != nil {
		q.log.Warn("cannot write cursor", "err", err)
		return
	}
	q.csWritten = time.Now()
	q.csSynced = false
	if sync {
		if err := q.cf.Sync(); err == nil {
			q.csSynced = true
		}
	}
}

// Err returns the error that stopped the queue, if any. A failed write or
// fsync is fail-stop: after an fsync error the page cache state is unknown,
// so every later Append returns the error until the queue is reopened (and
// recovery re-validates the files). Use it in the module's Health.
func (q *Disk) Err() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.err
}

// Close flushes and fsyncs everything appended, saves the cursor and
// releases the directory. Blocked Next calls return ErrClosed. Idempotent.
func (q *Disk) Close() error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	q.closed = true
	q.space.Broadcast()
	q.waiting = true
	q.broadcast()
	q.mu.Unlock()
	q.signal()
	<-q.done
	q.nextMu.Lock()
	if q.rd.f != nil {
		q.rd.f.Close()
		q.rd.f = nil
	}
	q.nextMu.Unlock()
	q.met.unregister()
	q.mu.Lock()
	err := q.err
	q.mu.Unlock()
	if cerr := q.closeFiles(); err == nil {
		err = cerr
	}
	return err
}

func (q *Disk) closeFiles() error {
	var err error
	if q.wf != nil {
		err = q.wf.Close()
		q.wf = nil
	}
	if q.cf != nil {
		q.cf.Close()
		q.cf = nil
	}
	if q.lock != nil {
		q.lock.Close()
		q.lock = nil
	}
	return err
}
