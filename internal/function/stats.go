package function

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// fnStats are the per-function metrics (shared by its versions):
//
//	outpost_function_invocations_total{function,entry}
//	outpost_function_errors_total{function,entry,reason}   reason: timeout, trap, bad_pointer, error, bad_result, canceled
//	outpost_function_timeouts_total{function}
//	outpost_function_duration_seconds{function,quantile="0.5"|"0.99"}   (summary over 5 minutes)
//	outpost_function_memory_high_water_bytes{function}
//	outpost_function_instances{function}
//	outpost_function_outputs_total{function}, outpost_function_output_errors_total{function}
//	outpost_function_denied_total{function}, outpost_function_state_denied_total{function}
//	outpost_function_log_lines_total{function}, outpost_function_log_suppressed_total{function}
type fnStats struct {
	name     string
	set      *metrics.Set
	duration *metrics.Summary
	timeouts *metrics.Counter
	hw       atomic.Uint64
	inst     atomic.Int64

	instances    *atomic.Int64
	outputs      *metrics.Counter
	outputErrors *metrics.Counter
	denied       *metrics.Counter
	stateDenied  *metrics.Counter
	logs         *logRing

	mu   sync.Mutex
	inv  map[string]*metrics.Counter
	errs map[[2]string]*metrics.Counter
}

func (rt *Runtime) statsFor(name string) *fnStats {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if s := rt.stats[name]; s != nil {
		return s
	}
	l := fmt.Sprintf("function=%q", name)
	s := &fnStats{name: name, set: rt.metrics, inv: map[string]*metrics.Counter{}, errs: map[[2]string]*metrics.Counter{}}
	s.instances = &s.inst
	s.duration = rt.metrics.GetOrCreateSummaryExt("outpost_function_duration_seconds{"+l+"}", 5*time.Minute, []float64{0.5, 0.99})
	s.timeouts = rt.metrics.GetOrCreateCounter("outpost_function_timeouts_total{" + l + "}")
	s.outputs = rt.metrics.GetOrCreateCounter("outpost_function_outputs_total{" + l + "}")
	s.outputErrors = rt.metrics.GetOrCreateCounter("outpost_function_output_errors_total{" + l + "}")
	s.denied = rt.metrics.GetOrCreateCounter("outpost_function_denied_total{" + l + "}")
	s.stateDenied = rt.metrics.GetOrCreateCounter("outpost_function_state_denied_total{" + l + "}")
	rt.metrics.GetOrCreateGauge("outpost_function_memory_high_water_bytes{"+l+"}", func() float64 { return float64(s.hw.Load()) })
	rt.metrics.GetOrCreateGauge("outpost_function_instances{"+l+"}", func() float64 { return float64(s.inst.Load()) })
	s.logs = newLogRing(rt.metrics, name)
	rt.stats[name] = s
	return s
}

func (s *fnStats) invocations(entry string) *metrics.Counter {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.inv[entry]
	if c == nil {
		c = s.set.GetOrCreateCounter(fmt.Sprintf("outpost_function_invocations_total{function=%q,entry=%q}", s.name, entry))
		s.inv[entry] = c
	}
	return c
}

func (s *fnStats) fail(entry, reason string) {
	if reason == "timeout" {
		s.timeouts.Inc()
	}
	k := [2]string{entry, reason}
	s.mu.Lock()
	c := s.errs[k]
	if c == nil {
		c = s.set.GetOrCreateCounter(fmt.Sprintf("outpost_function_errors_total{function=%q,entry=%q,reason=%q}", s.name, entry, reason))
		s.errs[k] = c
	}
	s.mu.Unlock()
	c.Inc()
}

func (s *fnStats) memory(bytes uint32) {
	for {
		old := s.hw.Load()
		if uint64(bytes) <= old || s.hw.CompareAndSwap(old, uint64(bytes)) {
			return
		}
	}
}

// Stats is a snapshot of a function's counters (CLI, tests).
type Stats struct {
	Invocations     map[string]uint64            `json:"invocations"`
	Errors          map[string]map[string]uint64 `json:"errors"`
	Timeouts        uint64                       `json:"timeouts"`
	MemoryHighWater uint64                       `json:"memory_high_water_bytes"`
	Instances       int64                        `json:"instances"`
	Outputs         uint64                       `json:"outputs"`
}

// Stats returns the function's counters.
func (rt *Runtime) Stats(name string) Stats {
	s := rt.statsFor(name)
	st := Stats{Invocations: map[string]uint64{}, Errors: map[string]map[string]uint64{},
		Timeouts: s.timeouts.Get(), MemoryHighWater: s.hw.Load(), Instances: s.inst.Load(), Outputs: s.outputs.Get()}
	s.mu.Lock()
	defer s.mu.Unlock()
	for e, c := range s.inv {
		st.Invocations[e] = c.Get()
	}
	for k, c := range s.errs {
		if st.Errors[k[0]] == nil {
			st.Errors[k[0]] = map[string]uint64{}
		}
		st.Errors[k[0]][k[1]] = c.Get()
	}
	return st
}
