package loadgen

import (
	"fmt"
	"io"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Result is what one run measured. Rates are messages per second; latencies
// are microseconds.
type Result struct {
	URL          string      `json:"url"`
	MQTTVersion  string      `json:"mqtt_version"`
	QoS          int         `json:"qos"`
	Publishers   int         `json:"publishers"`
	Subscribers  int         `json:"subscribers"`
	Payload      PayloadKind `json:"payload"`
	PayloadBytes int         `json:"payload_bytes"`
	Topic        string      `json:"topic"`
	SubTopic     string      `json:"sub_topic"`
	TargetRate   float64     `json:"target_rate"` // 0 = as fast as possible
	Inflight     int         `json:"inflight,omitempty"`

	// PublishSeconds is the length of the publish phase; DrainSeconds the
	// time spent after it waiting for the subscribers.
	PublishSeconds float64 `json:"publish_seconds"`
	DrainSeconds   float64 `json:"drain_seconds"`

	Sent     uint64  `json:"sent"`
	SentRate float64 `json:"sent_rate"`
	// Acked and Rejected count QoS 1 PUBACKs (Rejected: reason ≥ 0x80);
	// BadAcks counts PUBACKs for no outstanding PUBLISH or out of order.
	Acked    uint64 `json:"acked"`
	Rejected uint64 `json:"rejected"`
	BadAcks  uint64 `json:"bad_acks"`

	// Expected = Sent × Subscribers. Received counts this run's messages
	// (duplicates included); Unique counts distinct (publisher, seq) per
	// subscriber; Lost = Expected − Unique.
	Expected    uint64  `json:"expected"`
	Received    uint64  `json:"received"`
	Unique      uint64  `json:"unique"`
	RecvRate    float64 `json:"recv_rate"`
	Lost        uint64  `json:"lost"`
	LossPercent float64 `json:"loss_percent"`
	Duplicates  uint64  `json:"duplicates"`
	OutOfOrder  uint64  `json:"out_of_order"`
	Foreign     uint64  `json:"foreign"` // payloads not from this run

	Latency       LatencyStats  `json:"latency"`
	PubackLatency *LatencyStats `json:"puback_latency,omitempty"`

	Loadgen CPUStats     `json:"loadgen_cpu"`
	Broker  *BrokerStats `json:"broker,omitempty"`
	// HostBusyPercent is how busy all of the machine's cores were over the
	// run (/proc/stat; 100 = every core busy), HostCores how many there are:
	// near 100 the result measures the machine, not the broker.
	HostBusyPercent float64 `json:"host_busy_percent"`
	HostCores       int     `json:"host_cores"`

	Intervals   []Interval `json:"intervals"`
	Interrupted bool       `json:"interrupted"`
	Errors      []string   `json:"errors,omitempty"`
}

// LatencyStats summarises a latency histogram, in microseconds.
type LatencyStats struct {
	Count int64   `json:"count"`
	Min   float64 `json:"min_us"`
	Mean  float64 `json:"mean_us"`
	P50   float64 `json:"p50_us"`
	P90   float64 `json:"p90_us"`
	P99   float64 `json:"p99_us"`
	P999  float64 `json:"p99_9_us"`
	Max   float64 `json:"max_us"`
}

func latencyStats(h *hdrhistogram.Histogram) LatencyStats {
	if h.TotalCount() == 0 {
		return LatencyStats{}
	}
	us := func(ns int64) float64 { return math.Round(float64(ns)/10) / 100 }
	return LatencyStats{
		Count: h.TotalCount(),
		Min:   us(h.Min()),
		Mean:  math.Round(h.Mean()/10) / 100,
		P50:   us(h.ValueAtQuantile(50)),
		P90:   us(h.ValueAtQuantile(90)),
		P99:   us(h.ValueAtQuantile(99)),
		P999:  us(h.ValueAtQuantile(99.9)),
		Max:   us(h.Max()),
	}
}

// CPUStats is the load generator's own CPU use (getrusage) over the run.
type CPUStats struct {
	UserSeconds   float64 `json:"user_seconds"`
	SystemSeconds float64 `json:"system_seconds"`
	// Percent of one core over the publish and drain phases.
	Percent float64 `json:"percent"`
}

// BrokerStats is the broker process's CPU and memory, sampled from /proc.
type BrokerStats struct {
	PID        int     `json:"pid"`
	CPUSeconds float64 `json:"cpu_seconds"`
	CPUPercent float64 `json:"cpu_percent"` // of one core
	// RSSBytes is the resident set at the end of the run; MaxRSSBytes the
	// largest sample taken during it; PeakRSSBytes the kernel's high-water
	// mark (VmHWM) over the process's life.
	RSSBytes     int64  `json:"rss_bytes"`
	MaxRSSBytes  int64  `json:"max_rss_bytes"`
	PeakRSSBytes int64  `json:"peak_rss_bytes"`
	Error        string `json:"error,omitempty"`
}

// Interval is one progress tick.
type Interval struct {
	Seconds  float64 `json:"t"`
	SentRate float64 `json:"sent_rate"`
	RecvRate float64 `json:"recv_rate"`
	P50      float64 `json:"p50_us"`
	P99      float64 `json:"p99_us"`
	Max      float64 `json:"max_us"`
}

// progress merges the subscribers' histograms every tick, prints a line and
// keeps the totals.
type progress struct {
	r        *runner
	start    int64
	broker   *brokerSampler
	mu       sync.Mutex
	total    *hdrhistogram.Histogram
	interval *hdrhistogram.Histogram
	ticks    []Interval

	lastT              int64
	lastSent, lastRecv uint64
}

func newProgress(r *runner, start int64, b *brokerSampler) *progress {
	return &progress{r: r, start: start, broker: b, total: newHist(), interval: newHist(), lastT: start}
}

func (p *progress) loop(stop <-chan struct{}) {
	t := time.NewTicker(p.r.cfg.ProgressInterval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			p.collect()
			return
		case <-t.C:
			p.tick()
		}
	}
}

// collect moves the subscribers' samples into interval and total.
func (p *progress) collect() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.interval.Reset()
	for _, s := range p.r.subs {
		s.mu.Lock()
		p.interval.Merge(s.hist)
		s.hist.Reset()
		s.mu.Unlock()
	}
	p.total.Merge(p.interval)
}

func (p *progress) tick() {
	p.collect()
	now := p.r.now()
	var sent uint64
	for _, pb := range p.r.pubs {
		sent += pb.sent.Load()
	}
	recv := p.r.received()
	dt := float64(now-p.lastT) / 1e9
	iv := Interval{Seconds: round3(float64(now-p.start) / 1e9), SentRate: round1(float64(sent-p.lastSent) / dt),
		RecvRate: round1(float64(recv-p.lastRecv) / dt)}
	ls := latencyStats(p.interval)
	iv.P50, iv.P99, iv.Max = ls.P50, ls.P99, ls.Max
	p.ticks = append(p.ticks, iv)
	p.lastT, p.lastSent, p.lastRecv = now, sent, recv
	var brokerNote string
	if p.broker != nil {
		brokerNote = p.broker.sample(now)
	}
	if w := p.r.cfg.Progress; w != nil {
		line := fmt.Sprintf("%6.1fs  sent %9s/s  recv %9s/s  total %s/%s", iv.Seconds, si(iv.SentRate), si(iv.RecvRate),
			si(float64(recv)), si(float64(sent)*float64(len(p.r.subs))))
		if ls.Count > 0 {
			line += fmt.Sprintf("  p50 %s  p99 %s  max %s", fmtUS(ls.P50), fmtUS(ls.P99), fmtUS(ls.Max))
		}
		fmt.Fprintln(w, line+brokerNote)
	}
}

// result assembles the final Result after every reader has exited.
func (r *runner) result(pubStart, pubEnd, end int64, prog *progress) *Result {
	cfg := &r.cfg
	prog.collect() // samples taken after the last tick
	res := &Result{URL: cfg.URL, MQTTVersion: map[int]string{4: "3.1.1", 5: "5"}[cfg.MQTTVersion], QoS: cfg.QoS,
		Publishers: cfg.Publishers, Subscribers: cfg.Subscribers, Payload: cfg.Payload, PayloadBytes: cfg.PayloadSize,
		Topic: cfg.Topic, SubTopic: cfg.SubTopic, TargetRate: cfg.Rate,
		PublishSeconds: round3(float64(pubEnd-pubStart) / 1e9), DrainSeconds: round3(float64(end-pubEnd) / 1e9),
		Intervals: prog.ticks}
	if res.Intervals == nil {
		res.Intervals = []Interval{}
	}
	ackHist := newHist()
	sentBy := make([]uint64, len(r.pubs))
	for i, p := range r.pubs {
		sentBy[i] = p.sent.Load()
		res.Sent += sentBy[i]
		res.Acked += p.acked.Load()
		res.Rejected += p.rejected.Load()
		res.BadAcks += p.badAcks.Load()
		if p.ackHist != nil {
			ackHist.Merge(p.ackHist)
			res.Inflight = max(res.Inflight, cap(p.window))
		}
	}
	if d := float64(pubEnd-pubStart) / 1e9; d > 0 {
		res.SentRate = round1(float64(res.Sent) / d)
	}
	var lastRecv int64
	for _, s := range r.subs {
		res.Received += s.recv.Load()
		res.Foreign += s.foreign.Load()
		lastRecv = max(lastRecv, s.lastRecv.Load())
		for i := range s.trackers {
			t := &s.trackers[i]
			u := min(t.unique, sentBy[i])
			res.Unique += u
			res.Lost += sentBy[i] - u
			res.Duplicates += t.duplicates
			res.OutOfOrder += t.outOfOrder
		}
	}
	res.Expected = res.Sent * uint64(len(r.subs))
	if res.Expected > 0 {
		res.LossPercent = math.Round(float64(res.Lost)/float64(res.Expected)*1e5) / 1e3
	}
	if d := float64(lastRecv-pubStart) / 1e9; d > 0 {
		res.RecvRate = round1(float64(res.Received) / d)
	}
	prog.mu.Lock()
	res.Latency = latencyStats(prog.total)
	prog.mu.Unlock()
	if cfg.QoS == 1 {
		l := latencyStats(ackHist)
		res.PubackLatency = &l
	}
	return res
}

// WriteText writes the human summary.
func (res *Result) WriteText(w io.Writer) {
	rate := "max"
	if res.TargetRate > 0 {
		rate = si(res.TargetRate) + " msg/s"
	}
	fmt.Fprintf(w, "outpost bench  %s  MQTT %s  QoS %d  %d pub → %d sub  %d B %s  rate %s\n",
		res.URL, res.MQTTVersion, res.QoS, res.Publishers, res.Subscribers, res.PayloadBytes, res.Payload, rate)
	if res.Interrupted {
		fmt.Fprintln(w, "  (interrupted)")
	}
	fmt.Fprintf(w, "  publish    %.2f s (+ %.2f s drain)\n", res.PublishSeconds, res.DrainSeconds)
	fmt.Fprintf(w, "  sent       %12s msgs  %10s msg/s\n", group(res.Sent), si(res.SentRate))
	if res.QoS == 1 {
		fmt.Fprintf(w, "  acked      %12s msgs  (rejected %d, bad acks %d, window %d)\n", group(res.Acked), res.Rejected, res.BadAcks, res.Inflight)
	}
	if res.Subscribers > 0 {
		fmt.Fprintf(w, "  received   %12s msgs  %10s msg/s  (expected %s)\n", group(res.Received), si(res.RecvRate), group(res.Expected))
		fmt.Fprintf(w, "  lost       %12s      (%.3f%%)  duplicates %d  out of order %d", group(res.Lost), res.LossPercent, res.Duplicates, res.OutOfOrder)
		if res.Foreign > 0 {
			fmt.Fprintf(w, "  foreign %d", res.Foreign)
		}
		fmt.Fprintln(w)
		writeLatency(w, "latency", res.Latency)
	}
	if res.PubackLatency != nil {
		writeLatency(w, "puback", *res.PubackLatency)
	}
	fmt.Fprintf(w, "  loadgen    cpu %.2f s user + %.2f s sys = %.0f%% of one core\n",
		res.Loadgen.UserSeconds, res.Loadgen.SystemSeconds, res.Loadgen.Percent)
	if res.HostCores > 0 {
		fmt.Fprintf(w, "  host       %.0f%% of %d cores busy\n", res.HostBusyPercent, res.HostCores)
	}
	if b := res.Broker; b != nil {
		if b.Error != "" {
			fmt.Fprintf(w, "  broker     pid %d: %s\n", b.PID, b.Error)
		} else {
			fmt.Fprintf(w, "  broker     pid %d  cpu %.2f s = %.0f%% of one core  rss %s (max %s, peak %s)\n",
				b.PID, b.CPUSeconds, b.CPUPercent, mib(b.RSSBytes), mib(b.MaxRSSBytes), mib(b.PeakRSSBytes))
		}
	}
	for _, e := range res.Errors {
		fmt.Fprintf(w, "  error      %s\n", e)
	}
}

func writeLatency(w io.Writer, name string, l LatencyStats) {
	if l.Count == 0 {
		fmt.Fprintf(w, "  %-10s (no samples)\n", name)
		return
	}
	fmt.Fprintf(w, "  %-10s p50 %s  p90 %s  p99 %s  p99.9 %s  max %s  (min %s, mean %s, n=%s)\n", name,
		fmtUS(l.P50), fmtUS(l.P90), fmtUS(l.P99), fmtUS(l.P999), fmtUS(l.Max), fmtUS(l.Min), fmtUS(l.Mean), group(uint64(l.Count)))
}

// fmtUS formats microseconds with a unit that keeps 3 significant digits.
func fmtUS(us float64) string {
	switch {
	case us < 1000:
		return fmt.Sprintf("%.0fµs", us)
	case us < 10_000:
		return fmt.Sprintf("%.2fms", us/1000)
	case us < 1_000_000:
		return fmt.Sprintf("%.1fms", us/1000)
	default:
		return fmt.Sprintf("%.2fs", us/1e6)
	}
}

// si formats a count or rate as 12.3k / 1.23M.
func si(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e4:
		return fmt.Sprintf("%.1fk", v/1e3)
	default:
		return fmt.Sprintf("%.0f", v)
	}
}

// group formats n with thousands separators.
func group(n uint64) string {
	s := fmt.Sprint(n)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func round1(v float64) float64 { return math.Round(v*10) / 10 }
func round3(v float64) float64 { return math.Round(v*1000) / 1000 }
