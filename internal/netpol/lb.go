package netpol

import (
	"fmt"
	"hash/fnv"
	"net/netip"
	"time"

	"github.com/outpost-edge/outpost/internal/config"
)

// L4 load balancing (issue 15 item 4): a virtual IPv4 address and TCP port
// spread over backends. Local clients are balanced at connect() by a
// cgroup/connect4 program (the socket is pointed at a backend before the
// first packet, so an established flow can never move); getpeername()
// shows the virtual address again. Where BPF cannot attach, an nftables
// DNAT rule (numgen for round robin, jhash for maglev) does the same for
// local (output) and remote (prerouting) clients; conntrack keeps flows.

const (
	// MaxLBServices is the number of virtual services (BPF map size).
	MaxLBServices = 64
	// MaxLBBackends is the number of backends one service may list.
	MaxLBBackends = 64
	// MaglevSize is the Maglev lookup table size per service (prime,
	// > 60 × MaxLBBackends so each backend's share is within ~2%).
	MaglevSize = 4093
)

// LBService is one entry of `netpol.load_balancers`.
type LBService struct {
	Name string `yaml:"name"`
	// VIP is the virtual IPv4 address and port clients connect to.
	VIP string `yaml:"vip"`
	// Proto is tcp (default) or udp.
	Proto string `yaml:"proto"`
	// Algorithm is round_robin (default) or maglev.
	Algorithm string `yaml:"algorithm"`
	// Backends are static addresses or supervised components.
	Backends []LBBackend `yaml:"backends"`
	Health   LBHealth    `yaml:"health"`
	// Interface, if set, also balances remote clients arriving on it (eBPF:
	// TC ingress DNAT / egress SNAT; nftables balances them in prerouting
	// on every interface anyway).
	Interface string `yaml:"interface"`
}

// LBBackend is one backend: Address (ip:port) always; Component names a
// supervised component whose health decides, else a TCP connect check (for
// udp: a datagram, down when the port answers "unreachable").
type LBBackend struct {
	Address   string `yaml:"address"`
	Component string `yaml:"component"`
}

// LBHealth tunes the TCP connect check.
type LBHealth struct {
	Interval config.Duration `yaml:"interval"`
	Timeout  config.Duration `yaml:"timeout"`
	// Rise successes make a down backend up; Fall failures take it out.
	Rise int `yaml:"rise"`
	Fall int `yaml:"fall"`
}

// SetLBDefaults fills zero values of every service.
func (c *Config) SetLBDefaults() {
	for i := range c.LoadBalancers {
		s := &c.LoadBalancers[i]
		if s.Proto == "" {
			s.Proto = "tcp"
		}
		if s.Algorithm == "" {
			s.Algorithm = "round_robin"
		}
		if s.Health.Interval == 0 {
			s.Health.Interval = config.Duration(time.Second)
		}
		if s.Health.Timeout == 0 {
			s.Health.Timeout = config.Duration(500 * time.Millisecond)
		}
		if s.Health.Rise == 0 {
			s.Health.Rise = 1
		}
		if s.Health.Fall == 0 {
			s.Health.Fall = 2
		}
	}
}

// ValidateLB checks the load_balancers list; errors carry YAML paths.
func (c Config) ValidateLB() []error {
	var errs []error
	if len(c.LoadBalancers) > MaxLBServices {
		errs = append(errs, config.Field("load_balancers", "%d services; at most %d", len(c.LoadBalancers), MaxLBServices))
	}
	names := map[string]bool{}
	type vipKey struct {
		proto string
		ap    netip.AddrPort
	}
	vips := map[vipKey]string{}
	for i, s := range c.LoadBalancers {
		p := fmt.Sprintf("load_balancers[%d]", i)
		if s.Name == "" || len(s.Name) > 64 {
			errs = append(errs, config.Field(p+".name", "%q: want 1 to 64 characters", s.Name))
		} else if names[s.Name] {
			errs = append(errs, config.Field(p+".name", "duplicate load balancer name %q", s.Name))
		}
		names[s.Name] = true
		if ap, err := parseV4Port(s.VIP); err != nil {
			errs = append(errs, config.Field(p+".vip", "%v", err))
		} else if other, dup := vips[vipKey{s.Proto, ap}]; dup {
			errs = append(errs, config.Field(p+".vip", "%s/%s is the VIP of %q already", ap, s.Proto, other))
		} else {
			vips[vipKey{s.Proto, ap}] = s.Name
		}
		if s.Interface != "" && !validIfName(s.Interface) {
			errs = append(errs, config.Field(p+".interface", "%q is not an interface name", s.Interface))
		}
		switch s.Proto {
		case "tcp":
		case "udp":
			if s.Interface != "" {
				errs = append(errs, config.Field(p+".interface", "remote clients (interface) are balanced for tcp only; udp is balanced for local clients"))
			}
		default:
			errs = append(errs, config.Field(p+".proto", "%q: want tcp or udp", s.Proto))
		}
		if s.Algorithm != "round_robin" && s.Algorithm != "maglev" {
			errs = append(errs, config.Field(p+".algorithm", "%q: want round_robin or maglev", s.Algorithm))
		}
		if len(s.Backends) == 0 || len(s.Backends) > MaxLBBackends {
			errs = append(errs, config.Field(p+".backends", "list 1 to %d backends", MaxLBBackends))
		}
		seen := map[netip.AddrPort]bool{}
		for j, b := range s.Backends {
			bp := fmt.Sprintf("%s.backends[%d]", p, j)
			ap, err := parseV4Port(b.Address)
			if err != nil {
				errs = append(errs, config.Field(bp+".address", "%v", err))
				continue
			}
			if seen[ap] {
				errs = append(errs, config.Field(bp+".address", "%s is listed twice", ap))
			}
			seen[ap] = true
		}
		h := s.Health
		if h.Interval.D() < 10*time.Millisecond || h.Interval.D() > time.Hour {
			errs = append(errs, config.Field(p+".health.interval", "%s: want 10ms to 1h", h.Interval))
		}
		if h.Timeout.D() <= 0 || h.Timeout.D() > h.Interval.D()*10 {
			errs = append(errs, config.Field(p+".health.timeout", "%s: want > 0 and at most 10 intervals", h.Timeout))
		}
		if h.Rise < 1 || h.Rise > 100 {
			errs = append(errs, config.Field(p+".health.rise", "%d: want 1 to 100", h.Rise))
		}
		if h.Fall < 1 || h.Fall > 100 {
			errs = append(errs, config.Field(p+".health.fall", "%d: want 1 to 100", h.Fall))
		}
	}
	return errs
}

func parseV4Port(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return ap, fmt.Errorf("%q is not an IPv4 address:port", s)
	}
	if !ap.Addr().Is4() {
		return ap, fmt.Errorf("%q: only IPv4 is balanced (IPv6 is not supported yet)", s)
	}
	if ap.Port() == 0 {
		return ap, fmt.Errorf("%q: port 0", s)
	}
	return ap, nil
}

// ProtoNumber is the service's IP protocol number (6 or 17).
func (s LBService) ProtoNumber() uint8 {
	if s.Proto == "udp" {
		return protoUDP
	}
	return protoTCP
}

// AddrPort is the parsed VIP (valid after Validate).
func (s LBService) AddrPort() netip.AddrPort { ap, _ := parseV4Port(s.VIP); return ap }

// AddrPort is the parsed backend address (valid after Validate).
func (b LBBackend) AddrPort() netip.AddrPort { ap, _ := parseV4Port(b.Address); return ap }

// Maglev builds the Maglev lookup table (Eisenbud et al., NSDI 2016) of
// size m (prime) over the given backend names: entry i is the index of the
// backend that owns slot i. Each backend owns m/len(names) slots ±1, and
// removing one backend moves only the slots it owned (plus a small share),
// so most flows keep their backend when the set changes. nil for no names.
func Maglev(names []string, m int) []int {
	n := len(names)
	if n == 0 {
		return nil
	}
	offset := make([]uint64, n)
	skip := make([]uint64, n)
	for i, name := range names {
		h := fnv.New64a()
		h.Write([]byte(name))
		h1 := h.Sum64()
		h.Write([]byte{0x9e, 0x37})
		h2 := h.Sum64()
		offset[i] = h1 % uint64(m)
		skip[i] = h2%uint64(m-1) + 1
	}
	next := make([]uint64, n)
	table := make([]int, m)
	for i := range table {
		table[i] = -1
	}
	filled := 0
	for {
		for i := 0; i < n; i++ {
			c := (offset[i] + next[i]*skip[i]) % uint64(m)
			for table[c] >= 0 {
				next[i]++
				c = (offset[i] + next[i]*skip[i]) % uint64(m)
			}
			table[c] = i
			next[i]++
			filled++
			if filled == m {
				return table
			}
		}
	}
}

// LBBackendStatus is one backend's state in `outpost netpol status`.
type LBBackendStatus struct {
	Address     string `json:"address"`
	Component   string `json:"component,omitempty"`
	Healthy     bool   `json:"healthy"`
	Connections uint64 `json:"connections"`
	LastError   string `json:"last_error,omitempty"`
}

// LBStatus is one service's state.
type LBStatus struct {
	VIP       string            `json:"vip"`
	Algorithm string            `json:"algorithm"`
	Backend   string            `json:"backend"` // ebpf (cgroup/connect4) or nftables
	Backends  []LBBackendStatus `json:"backends"`
	// NoBackend counts connects refused because no backend was healthy.
	NoBackend uint64 `json:"no_backend"`
}
