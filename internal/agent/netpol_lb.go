//go:build netpol

package agent

import (
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/VictoriaMetrics/metrics"

	"github.com/outpost-edge/outpost/internal/netpol"
	"github.com/outpost-edge/outpost/internal/supervisor"
)

// lbComponentHealthy answers a load-balancer backend's health from the
// supervisor: running (no check) or healthy is up; a component the
// supervisor does not know falls back to the TCP check.
func (a *Agent) lbComponentHealthy(name string) (healthy, known bool) {
	if a.Supervisor == nil {
		return false, false
	}
	st, err := a.Supervisor.Component(name)
	if errors.Is(err, supervisor.ErrNotFound) || err != nil {
		return false, false
	}
	return st.State == supervisor.StateRunning || st.State == supervisor.StateHealthy, true
}

// writeLBMetrics: outpost_netpol_lb_connections_total{service,backend},
// outpost_netpol_lb_backend_up{service,backend} and
// outpost_netpol_lb_no_backend_total{service}.
func writeLBMetrics(w io.Writer, st netpol.Status) {
	names := make([]string, 0, len(st.LoadBalancers))
	for n := range st.LoadBalancers {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		s := st.LoadBalancers[n]
		for _, b := range s.Backends {
			metrics.WriteCounterUint64(w, fmt.Sprintf(`outpost_netpol_lb_connections_total{service=%q,backend=%q}`, n, b.Address), b.Connections)
			up := 0
			if b.Healthy {
				up = 1
			}
			metrics.WriteGaugeUint64(w, fmt.Sprintf(`outpost_netpol_lb_backend_up{service=%q,backend=%q}`, n, b.Address), uint64(up))
		}
		metrics.WriteCounterUint64(w, fmt.Sprintf(`outpost_netpol_lb_no_backend_total{service=%q}`, n), s.NoBackend)
	}
}
