package netpol

// Counter is a packet and byte count.
type Counter struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// Add adds o to c.
func (c *Counter) Add(o Counter) { c.Packets += o.Packets; c.Bytes += o.Bytes }

// GlobalKinds are an interface's global counters, in display order:
// packets dropped by the per-source rate limit, non-IP frames passed,
// IPv6 packets seen (the rules then decide), malformed packets dropped,
// IPv6 neighbour discovery passed.
var GlobalKinds = []string{"rate_limited", "non_ip", "ipv6", "malformed", "ipv6_nd"}

// Stats are an interface's counters: per rule name ("default" for the
// default action) and the global ones (GlobalKinds).
type Stats struct {
	Rules  map[string]Counter `json:"rules"`
	Global map[string]Counter `json:"global"`
}

// Status is what `outpost netpol status` and /api/v1/netpol show.
type Status struct {
	Backend    string           `json:"backend"`
	Fallback   string           `json:"fallback_reason,omitempty"`
	Interfaces map[string]Stats `json:"interfaces"`
	// Egress is each supervised component's egress counters (components
	// whose recipe declares egress).
	Egress map[string]EgressStatus `json:"egress,omitempty"`
	// LoadBalancers by service name (lb.go).
	LoadBalancers map[string]LBStatus `json:"load_balancers,omitempty"`
	Error         string              `json:"error,omitempty"`
}
