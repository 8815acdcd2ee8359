package pipeline

import (
	"sync"

	"github.com/VictoriaMetrics/metrics"
)

type pmetrics struct {
	set      *metrics.Set
	routed   *metrics.Counter
	unrouted *metrics.Counter
	shed     *metrics.Counter
	waits    *metrics.Counter

	sinks  sync.Map // name -> *sinkMetrics
	mu     sync.Mutex
	logged map[string]bool
}

func newMetrics(set *metrics.Set, p *Pipeline) *pmetrics {
	m := &pmetrics{
		set:      set,
		routed:   set.NewCounter(`outpost_pipeline_messages_total{result="routed"}`),
		unrouted: set.NewCounter(`outpost_pipeline_messages_total{result="unrouted"}`),
		shed:     set.NewCounter(`outpost_pipeline_dropped_total{reason="overload"}`),
		waits:    set.NewCounter(`outpost_pipeline_backpressure_waits_total`),
		logged:   map[string]bool{},
	}
	set.NewGauge("outpost_pipeline_queue_depth", func() float64 {
		if !p.running.Load() {
			return 0
		}
		d, _ := p.depth()
		return float64(d)
	})
	return m
}

// sinkMetrics are one sink's series, cached so the hot path does not build
// metric names per message.
type sinkMetrics struct {
	delivered *metrics.Counter
	errors    *metrics.Counter
	latency   *metrics.Histogram
}

func (m *pmetrics) sink(name string) *sinkMetrics {
	if v, ok := m.sinks.Load(name); ok {
		return v.(*sinkMetrics)
	}
	sm := &sinkMetrics{
		delivered: m.set.GetOrCreateCounter(`outpost_sink_delivered_total{sink="` + name + `"}`),
		errors:    m.set.GetOrCreateCounter(`outpost_sink_errors_total{sink="` + name + `"}`),
		latency:   m.set.GetOrCreateHistogram(`outpost_sink_deliver_seconds{sink="` + name + `"}`),
	}
	v, _ := m.sinks.LoadOrStore(name, sm)
	return v.(*sinkMetrics)
}

// logOnce reports true the first time a sink fails (per process), so a
// broken sink logs once instead of once per message; the error counter keeps
// the count.
func (m *pmetrics) logOnce(sink string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.logged[sink] {
		return false
	}
	m.logged[sink] = true
	return true
}
