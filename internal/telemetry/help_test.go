package telemetry

import (
	"strings"
	"testing"

	vm "github.com/VictoriaMetrics/metrics"
)

// VictoriaMetrics histograms become Prometheus histograms with the same
// counts; every family gets help text.
func TestWriteMetricsHistogramAndHelp(t *testing.T) {
	s := vm.NewSet()
	h := s.GetOrCreateHistogram(`outpost_test_duration_seconds{rule="a"}`)
	h.Update(0.5)
	h.Update(0.5)
	h.Update(3)
	s.GetOrCreateCounter(`outpost_test_things_total`).Inc()
	var b strings.Builder
	WriteMetrics(&b, s)
	out := b.String()
	for _, want := range []string{
		"# HELP outpost_test_duration_seconds Outpost metric",
		"# TYPE outpost_test_duration_seconds histogram",
		`outpost_test_duration_seconds_bucket{rule="a",le="+Inf"} 3`,
		`outpost_test_duration_seconds_count{rule="a"} 3`,
		"# TYPE outpost_test_things_total counter",
		"# TYPE go_cgo_calls_total counter",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	if strings.Contains(out, "vmrange") || strings.Contains(out, "go_cgo_calls_count") {
		t.Errorf("unconverted output:\n%s", out)
	}
	// The cumulative buckets end at the total.
	var last string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "outpost_test_duration_seconds_bucket") && !strings.Contains(l, "+Inf") {
			last = l
		}
	}
	if !strings.HasSuffix(last, " 3") {
		t.Errorf("last finite bucket %q, want 3", last)
	}
}
