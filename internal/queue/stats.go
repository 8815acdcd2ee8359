package queue

import (
	"fmt"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// Stats is a snapshot of a queue, JSON-serialisable (for `outpost queue
// status` and the agent's HTTP status).
type Stats struct {
	Lane string `json:"lane"`
	// Depth is the number of records appended and not yet acknowledged,
	// dropped or expired (records lost to corruption not yet reached by the
	// reader are included).
	Depth uint64 `json:"depth"`
	// Bytes is the on-disk size of those records (framing included).
	Bytes int64 `json:"bytes"`
	// DiskBytes is the size of all segment files (what max_bytes bounds).
	DiskBytes int64 `json:"disk_bytes"`
	Segments  int   `json:"segments"`
	// OldestAge is the age of the oldest unacknowledged record by the
	// queue's clock (approximate to the segment when it has not been read).
	OldestAge time.Duration `json:"oldest_age_ns"`
	FirstSeq  uint64        `json:"first_seq"` // oldest unacknowledged seq
	NextSeq   uint64        `json:"next_seq"`  // seq the next append gets
	Inflight  int           `json:"inflight"`  // returned by Next, not yet acknowledged
	// Lifetime totals, persisted in the cursor file (approximate after a
	// crash: increments since the last cursor write are lost).
	Appended uint64            `json:"appended_total"`
	Acked    uint64            `json:"acked_total"`
	Rejected uint64            `json:"rejected_total"` // ErrFull under reject_new
	Drops    map[string]uint64 `json:"drops_total"`    // by reason: max_bytes, max_age, corrupt, torn_tail
	// Fsyncs counts fsyncs of segment data in this process; appended
	// records divided by fsyncs shows the group commit at work.
	Fsyncs    uint64        `json:"fsyncs"`
	LastFsync time.Duration `json:"last_fsync_ns"`
	// DrainRate is records acknowledged per second over the last ~10 s; ETA
	// is Depth / DrainRate (0 when the rate is 0).
	DrainRate float64       `json:"drain_rate"`
	ETA       time.Duration `json:"eta_ns"`
}

// Stats returns a snapshot of the queue.
func (q *Disk) Stats() Stats {
	q.mu.Lock()
	defer q.mu.Unlock()
	s := Stats{
		Lane:      q.name,
		DiskBytes: q.diskBytes + q.pendBytes,
		Segments:  len(q.segs),
		FirstSeq:  q.floor,
		NextSeq:   q.nextSeq,
		Appended:  q.cs.appended,
		Acked:     q.cs.acked,
		Rejected:  q.cs.rejected,
		Drops:     make(map[string]uint64, numReasons),
		Fsyncs:    q.fsyncs,
		LastFsync: q.lastFsync,
		Inflight:  q.entN - q.entAcked,
	}
	if q.readSeq < q.floor+uint64(q.entN) {
		s.Inflight = int(q.readSeq-q.floor) - q.entAcked
	}
	s.Inflight = max(s.Inflight, 0)
	for i, n := range q.cs.drops {
		s.Drops[reasonNames[i]] = n
	}
	s.Depth = q.nextSeq - q.floor - uint64(q.entAcked)
	// Bytes: everything from the floor's position to the end.
	for _, m := range q.segs {
		if m.base >= q.floorSeg {
			s.Bytes += m.size - segHeaderLen
		}
	}
	if q.floorOff > segHeaderLen {
		s.Bytes -= q.floorOff - segHeaderLen
	}
	s.Bytes = max(s.Bytes+q.pendBytes, 0)
	if s.Depth == 0 {
		s.Bytes = 0
	}
	if s.Depth > 0 {
		oldest := int64(0)
		switch {
		case q.entN > 0 && !q.ent(0).acked && q.ent(0).nanos != 0:
			oldest = q.ent(0).nanos
		case q.lastRead != 0 && q.floorSeg == q.segFor(q.floor).base:
			oldest = q.lastRead
		default:
			oldest = q.segFor(q.floor).firstNanos
		}
		if oldest != 0 {
			s.OldestAge = time.Duration(max(q.clk.nanos()-oldest, 0))
		}
	}
	if q.rateN >= 2 {
		newest := q.rate[(q.rateN-1)%len(q.rate)]
		oldest := q.rate[max(q.rateN-len(q.rate), 0)%len(q.rate)]
		if dt := newest.t.Sub(oldest.t).Seconds(); dt > 0 {
			s.DrainRate = float64(newest.acked-oldest.acked) / dt
		}
	}
	if s.DrainRate > 0 {
		s.ETA = time.Duration(float64(s.Depth) / s.DrainRate * float64(time.Second))
	}
	return s
}

// queueMetrics are the VictoriaMetrics series of one queue:
//
//	outpost_queue_appended_total{lane}      records made durable
//	outpost_queue_acked_total{lane}         records acknowledged
//	outpost_queue_rejected_total{lane}      appends refused (reject_new)
//	outpost_queue_dropped_total{lane,reason} max_bytes, max_age, corrupt, torn_tail
//	outpost_queue_depth_records{lane}       unacknowledged records
//	outpost_queue_bytes{lane}               their bytes
//	outpost_queue_disk_bytes{lane}          segment files' size
//	outpost_queue_segments{lane}
//	outpost_queue_oldest_age_seconds{lane}
//	outpost_queue_drain_rate_records_per_second{lane}
//	outpost_queue_fsync_duration_seconds{lane}  histogram
type queueMetrics struct {
	set      *metrics.Set
	names    []string
	appended *metrics.Counter
	acked    *metrics.Counter
	rejected *metrics.Counter
	drops    [numReasons]*metrics.Counter
	fsync    *metrics.Histogram
}

func newQueueMetrics(q *Disk, set *metrics.Set) *queueMetrics {
	if set == nil {
		set = metrics.NewSet()
	}
	m := &queueMetrics{set: set}
	name := func(n string, extra string) string {
		s := fmt.Sprintf(`outpost_queue_%s{lane=%q%s}`, n, q.name, extra)
		m.names = append(m.names, s)
		return s
	}
	m.appended = set.GetOrCreateCounter(name("appended_total", ""))
	m.acked = set.GetOrCreateCounter(name("acked_total", ""))
	m.rejected = set.GetOrCreateCounter(name("rejected_total", ""))
	for i, r := range reasonNames {
		m.drops[i] = set.GetOrCreateCounter(name("dropped_total", fmt.Sprintf(",reason=%q", r)))
	}
	m.fsync = set.GetOrCreateHistogram(name("fsync_duration_seconds", ""))
	gauge := func(n string, f func(Stats) float64) {
		set.GetOrCreateGauge(name(n, ""), func() float64 { return f(q.Stats()) })
	}
	gauge("depth_records", func(s Stats) float64 { return float64(s.Depth) })
	gauge("bytes", func(s Stats) float64 { return float64(s.Bytes) })
	gauge("disk_bytes", func(s Stats) float64 { return float64(s.DiskBytes) })
	gauge("segments", func(s Stats) float64 { return float64(s.Segments) })
	gauge("oldest_age_seconds", func(s Stats) float64 { return s.OldestAge.Seconds() })
	gauge("drain_rate_records_per_second", func(s Stats) float64 { return s.DrainRate })
	return m
}

func (m *queueMetrics) unregister() {
	for _, n := range m.names {
		m.set.UnregisterMetric(n)
	}
}
