//go:build netpol

package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/outpost-edge/outpost/internal/netpol"
	"github.com/outpost-edge/outpost/internal/netpol/kernel"
	"github.com/outpost-edge/outpost/internal/supervisor"
)

// lazyEgress opens the egress programs when the first component with an
// egress list starts (an agent whose recipes declare none loads nothing),
// then polls their counters every 5 s so that refusals are logged promptly.
type lazyEgress struct {
	log *slog.Logger

	mu  sync.Mutex
	eg  *kernel.Egress
	err error
}

func (a *Agent) newEgress() supervisor.EgressEnforcer {
	l := &lazyEgress{log: a.log}
	a.metrics.RegisterMetricsWriter(func(w io.Writer) { writeEgressMetrics(w, l.Status()) })
	a.egress = l
	return l
}

func (l *lazyEgress) open() (*kernel.Egress, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.eg != nil || l.err != nil {
		return l.eg, l.err
	}
	l.eg, l.err = kernel.OpenEgress("", l.log)
	if l.err != nil {
		return nil, fmt.Errorf("%w: %v", supervisor.ErrNoEgress, l.err)
	}
	eg := l.eg
	go func() {
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for range t.C {
			if _, err := eg.Status(); err != nil {
				return // closed
			}
		}
	}()
	return l.eg, nil
}

func (l *lazyEgress) Set(component, dir string, allow []netpol.EgressAllow) (*os.File, error) {
	eg, err := l.open()
	if err != nil {
		return nil, err
	}
	return eg.Set(component, dir, allow)
}

func (l *lazyEgress) Remove(component string) error {
	l.mu.Lock()
	eg := l.eg
	l.mu.Unlock()
	if eg == nil {
		return nil
	}
	return eg.Remove(component)
}

// Status is every component's egress counters (nil before the first
// component with an egress list started).
func (l *lazyEgress) Status() map[string]netpol.EgressStatus {
	l.mu.Lock()
	eg := l.eg
	l.mu.Unlock()
	if eg == nil {
		return nil
	}
	st, _ := eg.Status()
	return st
}

func (l *lazyEgress) Stop(context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.eg == nil {
		return nil
	}
	return l.eg.Close()
}

func writeEgressMetrics(w io.Writer, st map[string]netpol.EgressStatus) {
	names := make([]string, 0, len(st))
	for n := range st {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		metrics.WriteCounterUint64(w, fmt.Sprintf(`outpost_netpol_egress_allowed_total{component=%q}`, n), st[n].Allowed)
		metrics.WriteCounterUint64(w, fmt.Sprintf(`outpost_netpol_egress_refused_total{component=%q}`, n), st[n].Denied)
	}
}
