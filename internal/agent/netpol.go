//go:build netpol

package agent

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"

	"github.com/VictoriaMetrics/metrics"

	"github.com/outpost-edge/outpost/internal/module"
	"github.com/outpost-edge/outpost/internal/netpol"
	"github.com/outpost-edge/outpost/internal/netpol/kernel"
)

// newNetpol builds the network policy module and its HTTP and metrics
// surface: GET /api/v1/netpol (backend, counters) and
// outpost_netpol_{packets,bytes}_total{iface,rule}.
func (a *Agent) newNetpol() module.Typed[netpol.Config] {
	m := kernel.New(kernel.Options{Log: a.log, Metrics: a.metrics, ComponentHealthy: a.lbComponentHealthy})
	a.metrics.RegisterMetricsWriter(func(w io.Writer) {
		st := m.Status()
		writeNetpolMetrics(w, st)
		writeLBMetrics(w, st)
	})
	a.route(func(mux *http.ServeMux) {
		mux.HandleFunc("GET /api/v1/netpol", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			st := m.Status()
			if a.egress != nil {
				st.Egress = a.egress.Status()
			}
			json.NewEncoder(w).Encode(st)
		})
	})
	a.Netpol = m
	return m
}

func writeNetpolMetrics(w io.Writer, st netpol.Status) {
	ifaces := make([]string, 0, len(st.Interfaces))
	for n := range st.Interfaces {
		ifaces = append(ifaces, n)
	}
	sort.Strings(ifaces)
	for _, itf := range ifaces {
		s := st.Interfaces[itf]
		rules := make([]string, 0, len(s.Rules))
		for r := range s.Rules {
			rules = append(rules, r)
		}
		sort.Strings(rules)
		for _, r := range rules {
			c := s.Rules[r]
			metrics.WriteCounterUint64(w, fmt.Sprintf(`outpost_netpol_packets_total{iface=%q,rule=%q}`, itf, r), c.Packets)
			metrics.WriteCounterUint64(w, fmt.Sprintf(`outpost_netpol_bytes_total{iface=%q,rule=%q}`, itf, r), c.Bytes)
		}
		for _, g := range netpol.GlobalKinds {
			metrics.WriteCounterUint64(w, fmt.Sprintf(`outpost_netpol_global_packets_total{iface=%q,kind=%q}`, itf, g), s.Global[g].Packets)
		}
	}
}
