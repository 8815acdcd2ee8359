package uplink

import (
	"context"
	"math"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/outpost-edge/outpost/internal/module"
	"github.com/outpost-edge/outpost/internal/queue"
)

// upMetrics are the uplink-wide metrics (per-lane ones live in laneMetrics).
type upMetrics struct {
	connected, window                                          *metrics.Gauge
	reconnects, connectErrors, dlReceived, dlErrors, dlIgnored *metrics.Counter
}

func newUpMetrics(set *metrics.Set) *upMetrics {
	return &upMetrics{
		connected:     set.GetOrCreateGauge("outpost_uplink_connected", nil),
		window:        set.GetOrCreateGauge("outpost_uplink_window_records", nil),
		reconnects:    set.GetOrCreateCounter("outpost_uplink_reconnects_total"),
		connectErrors: set.GetOrCreateCounter("outpost_uplink_connect_errors_total"),
		dlReceived:    set.GetOrCreateCounter("outpost_uplink_downlink_received_total"),
		dlErrors:      set.GetOrCreateCounter("outpost_uplink_downlink_errors_total"),
		dlIgnored:     set.GetOrCreateCounter("outpost_uplink_downlink_ignored_total"),
	}
}

// Status is the uplink's state for `outpost queue status` and diagnostics.
// It is JSON-serialisable.
type Status struct {
	Enabled        bool         `json:"enabled"`
	Broker         string       `json:"broker,omitempty"`
	State          string       `json:"state"` // starting, ready (connected), degraded (disconnected), stopped
	Connected      bool         `json:"connected"`
	ConnectedSince *time.Time   `json:"connected_since,omitempty"`
	LastError      string       `json:"last_error,omitempty"`
	NextRetry      *time.Time   `json:"next_retry,omitempty"`
	Reconnects     uint64       `json:"reconnects"`
	Window         int          `json:"window"` // publishes allowed in flight (config ∩ broker Receive Maximum)
	InFlight       int          `json:"in_flight"`
	Bandwidth      int64        `json:"bandwidth_bytes_per_second,omitempty"` // cap, 0 = none
	Downlink       string       `json:"downlink,omitempty"`                   // subscribed filter
	DownlinkError  string       `json:"downlink_error,omitempty"`
	Lanes          []LaneStatus `json:"lanes"`
}

// LaneStatus is one lane's progress. Backlog values are -1 when the lane's
// queue cannot report them; ETA is absent when unknown.
type LaneStatus struct {
	Name         string   `json:"name"`
	Priority     string   `json:"priority"`
	Share        int      `json:"share,omitempty"`
	Backlog      int64    `json:"backlog_records"`
	BacklogBytes int64    `json:"backlog_bytes"`
	InFlight     int64    `json:"in_flight"`
	Published    uint64   `json:"published"`     // PUBLISH packets written, resends included
	Acked        uint64   `json:"acked"`         // positive PUBACKs
	AckedBytes   uint64   `json:"acked_bytes"`   // PUBLISH bytes acknowledged
	Resent       uint64   `json:"resent"`        // records sent again after a reconnect (possible duplicates)
	Rejected     uint64   `json:"rejected"`      // negative PUBACKs
	DeadLettered uint64   `json:"dead_lettered"` // records given up on
	Rate         float64  `json:"rate_records_per_second"`
	RateBytes    float64  `json:"rate_bytes_per_second"`
	ETASeconds   *float64 `json:"eta_seconds,omitempty"`
	Draining     bool     `json:"draining"`
}

// progressState holds the rate samples; guarded by Uplink.mu.
type progressState struct {
	samples  []sample // last few seconds, oldest first
	lanes    []laneProgress
	lastLog  time.Time
	draining []bool
	drainT0  []time.Time
	drainN0  []uint64
}

type sample struct {
	t            time.Time
	acked, bytes []uint64
}

type laneProgress struct {
	rate, rateBytes float64
	backlog, bytes  int64
}

// drainThreshold is the backlog (records) above which a lane counts as
// draining: progress is logged every progress_interval.
const drainThreshold = 1000

const rateWindow = 5 * time.Second

// backlog asks the lane's queue what it holds.
func (l *lane) backlog() (records, bytes int64) {
	switch q := l.q.(type) {
	case Backlogger:
		return q.Backlog()
	case interface{ Stats() queue.Stats }: // queue.Disk, queue.Mem
		st := q.Stats()
		return int64(st.Depth), st.Bytes
	case interface{ Len() int }:
		return int64(q.Len()), -1
	}
	return -1, -1
}

// progressLoop samples counters every second: rates, ETA, gauges, and the
// drain progress log.
func (u *Uplink) progressLoop(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	u.sampleProgress(time.Now())
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			u.sampleProgress(now)
		}
	}
}

func (u *Uplink) sampleProgress(now time.Time) {
	n := len(u.lanes)
	s := sample{t: now, acked: make([]uint64, n), bytes: make([]uint64, n)}
	lp := make([]laneProgress, n)
	for i, l := range u.lanes {
		s.acked[i], s.bytes[i] = l.m.acked.Get(), l.m.ackedBytes.Get()
		lp[i].backlog, lp[i].bytes = l.backlog()
	}
	u.mu.Lock()
	p := &u.progress
	p.samples = append(p.samples, s)
	for len(p.samples) > 2 && now.Sub(p.samples[1].t) >= rateWindow {
		p.samples = p.samples[1:]
	}
	old := p.samples[0]
	if dt := now.Sub(old.t).Seconds(); dt > 0 {
		for i := range lp {
			lp[i].rate = float64(s.acked[i]-old.acked[i]) / dt
			lp[i].rateBytes = float64(s.bytes[i]-old.bytes[i]) / dt
		}
	}
	p.lanes = lp
	if len(p.draining) != n {
		p.draining, p.drainT0, p.drainN0 = make([]bool, n), make([]time.Time, n), make([]uint64, n)
	}
	connected := u.state == module.StateReady
	logNow := now.Sub(p.lastLog) >= u.cfg.ProgressInterval.D() && u.cfg.ProgressInterval > 0
	type line struct {
		l       *lane
		lp      laneProgress
		drained bool
		n       uint64
		took    time.Duration
	}
	var lines []line
	for i, l := range u.lanes {
		switch {
		case !p.draining[i] && lp[i].backlog > drainThreshold:
			p.draining[i], p.drainT0[i], p.drainN0[i] = true, now, s.acked[i]
		case p.draining[i] && lp[i].backlog == 0:
			p.draining[i] = false
			lines = append(lines, line{l: l, lp: lp[i], drained: true, n: s.acked[i] - p.drainN0[i], took: now.Sub(p.drainT0[i])})
		}
		if logNow && connected && p.draining[i] {
			lines = append(lines, line{l: l, lp: lp[i]})
		}
	}
	if logNow {
		p.lastLog = now
	}
	u.mu.Unlock()

	for i, l := range u.lanes {
		l.m.backlog.Set(float64(lp[i].backlog))
		l.m.backlogBytes.Set(float64(lp[i].bytes))
		l.m.rate.Set(lp[i].rate)
		l.m.rateBytes.Set(lp[i].rateBytes)
		l.m.eta.Set(eta(lp[i]))
		l.m.inflight.Set(float64(l.inflight.Load()))
	}
	for _, ln := range lines {
		if ln.drained {
			u.log.Info("uplink: lane drained", "lane", ln.l.cfg.Name, "records", ln.n, "took", ln.took.Round(time.Millisecond))
			continue
		}
		args := []any{"lane", ln.l.cfg.Name, "remaining_records", ln.lp.backlog, "rate_records_per_second", math.Round(ln.lp.rate),
			"rate_bytes_per_second", math.Round(ln.lp.rateBytes)}
		if ln.lp.bytes >= 0 {
			args = append(args, "remaining_bytes", ln.lp.bytes)
		}
		if e := eta(ln.lp); e >= 0 {
			args = append(args, "eta", (time.Duration(e) * time.Second).String())
		}
		u.log.Info("uplink: draining backlog", args...)
	}
}

// eta is the seconds to drain the backlog at the current rate, -1 if unknown.
func eta(p laneProgress) float64 {
	if p.backlog < 0 || p.rate <= 0 {
		if p.backlog == 0 {
			return 0
		}
		return -1
	}
	return math.Ceil(float64(p.backlog) / p.rate)
}

// Status returns a snapshot of the uplink and its lanes (rates are sampled
// every second; counters and backlog are read now).
func (u *Uplink) Status() Status {
	window, inflight, _, _, _, _ := u.sessState()
	u.mu.Lock()
	st := Status{
		Enabled:    u.cfg.Enabled,
		Broker:     u.cfg.Broker,
		State:      u.state.String(),
		Connected:  u.state.String() == "ready",
		Reconnects: u.reconnects,
		Window:     window,
		InFlight:   inflight,
		Bandwidth:  int64(u.cfg.Bandwidth),
	}
	if st.Connected {
		t := u.connectedSince
		st.ConnectedSince = &t
	} else if !u.nextRetry.IsZero() {
		t := u.nextRetry
		st.NextRetry = &t
	}
	if u.lastErr != nil {
		st.LastError = u.lastErr.Error()
	}
	if u.opts.Downlink != nil && !u.cfg.Downlink.Disabled && u.cfg.Enabled {
		st.Downlink = u.dlFilter
	}
	if u.dlErr != nil {
		st.DownlinkError = u.dlErr.Error()
	}
	lp := u.progress.lanes
	draining := u.progress.draining
	u.mu.Unlock()
	for i, l := range u.lanes {
		ls := LaneStatus{
			Name: l.cfg.Name, Priority: l.cfg.Priority.String(), Share: l.cfg.Share,
			InFlight:     l.inflight.Load(),
			Published:    l.m.published.Get(),
			Acked:        l.m.acked.Get(),
			AckedBytes:   l.m.ackedBytes.Get(),
			Resent:       l.m.resent.Get(),
			Rejected:     l.m.rejected.Get(),
			DeadLettered: l.dead.Load(),
		}
		ls.Backlog, ls.BacklogBytes = l.backlog()
		if i < len(lp) {
			ls.Rate, ls.RateBytes = math.Round(lp[i].rate*10)/10, math.Round(lp[i].rateBytes)
			p := lp[i]
			p.backlog = ls.Backlog
			if e := eta(p); e >= 0 {
				ls.ETASeconds = &e
			}
		}
		if i < len(draining) {
			ls.Draining = draining[i]
		}
		st.Lanes = append(st.Lanes, ls)
	}
	return st
}

func (u *Uplink) sessState() (window, inflight int, maxPkt uint32, retainOK bool, maxQoS byte, up bool) {
	if u.sess == nil {
		return 0, 0, 0, false, 0, false
	}
	return u.sess.state()
}
