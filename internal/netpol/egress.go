package netpol

import (
	"fmt"
	"net/netip"
	"strings"
)

// MaxEgress is the number of allow entries one component's egress policy
// may hold (the per-component slice of the egress programs' allow map).
const MaxEgress = 64

// Egress is one entry of a recipe's `egress:` list: where a component may
// connect (TCP) or send (UDP). Exactly one of Host and CIDR is set; Host is
// an IP address or a DNS name, resolved when the component starts.
type Egress struct {
	Host  string `yaml:"host"`
	CIDR  string `yaml:"cidr"`
	Port  string `yaml:"port"`  // "443" or "8000-8100"; empty = any
	Proto string `yaml:"proto"` // tcp | udp | any (default any)
}

// EgressAllow is an egress entry in the form the kernel programs use: one
// prefix (IPv4 or IPv6), a port range and a protocol (0 = tcp and udp).
type EgressAllow struct {
	Prefix         netip.Prefix
	PortLo, PortHi uint16
	Proto          uint8
}

// Contains reports whether the entry allows a connection to dst:port over
// proto. IPv4-mapped IPv6 destinations match as IPv4.
func (a EgressAllow) Contains(dst netip.Addr, port uint16, proto uint8) bool {
	dst = dst.Unmap()
	if a.Proto != protoAny && a.Proto != proto {
		return false
	}
	return port >= a.PortLo && port <= a.PortHi && a.Prefix.Contains(dst)
}

// FieldError is an egress entry's problem, naming its field (host, cidr,
// port or proto) so the recipe loader can point at it.
type FieldError struct{ Field, Msg string }

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// CheckEgress validates one entry without resolving names.
func CheckEgress(e Egress) error {
	_, _, err := compileEgress(e)
	return err
}

// CompileEgress turns an entry into allow entries; resolve maps a DNS name
// to its addresses (called only for a Host that is not an address literal).
func CompileEgress(e Egress, resolve func(host string) ([]netip.Addr, error)) ([]EgressAllow, error) {
	base, host, err := compileEgress(e)
	if err != nil {
		return nil, err
	}
	if host == "" {
		return []EgressAllow{base}, nil
	}
	addrs, err := resolve(host)
	if err != nil {
		return nil, &FieldError{"host", fmt.Sprintf("%q: %v", host, err)}
	}
	if len(addrs) == 0 {
		return nil, &FieldError{"host", fmt.Sprintf("%q resolves to no address", host)}
	}
	out := make([]EgressAllow, 0, len(addrs))
	for _, a := range addrs {
		a = a.Unmap()
		x := base
		x.Prefix = netip.PrefixFrom(a, a.BitLen())
		out = append(out, x)
	}
	return out, nil
}

// compileEgress checks e; for a DNS name it returns the name to resolve and
// an entry with everything but the prefix.
func compileEgress(e Egress) (EgressAllow, string, error) {
	a := EgressAllow{PortHi: 65535}
	var host string
	switch {
	case e.Host == "" && e.CIDR == "":
		return a, "", &FieldError{"host", "an egress entry needs host (address or DNS name) or cidr"}
	case e.Host != "" && e.CIDR != "":
		return a, "", &FieldError{"cidr", "give host or cidr, not both"}
	case e.CIDR != "":
		p, err := netip.ParsePrefix(e.CIDR)
		if err != nil {
			return a, "", &FieldError{"cidr", fmt.Sprintf("%q is not a CIDR (like 10.1.0.0/16 or fd00::/8)", e.CIDR)}
		}
		if p.Addr().Zone() != "" {
			return a, "", &FieldError{"cidr", fmt.Sprintf("%q: zones are not supported", e.CIDR)}
		}
		if p.Masked() != p {
			return a, "", &FieldError{"cidr", fmt.Sprintf("%q has host bits set; did you mean %s?", e.CIDR, p.Masked())}
		}
		if p.Addr().Is4In6() {
			return a, "", &FieldError{"cidr", fmt.Sprintf("%q: write IPv4-mapped prefixes as IPv4", e.CIDR)}
		}
		a.Prefix = p
	default:
		if ad, err := netip.ParseAddr(e.Host); err == nil {
			if ad.Zone() != "" {
				return a, "", &FieldError{"host", fmt.Sprintf("%q: zones are not supported", e.Host)}
			}
			ad = ad.Unmap()
			a.Prefix = netip.PrefixFrom(ad, ad.BitLen())
		} else if !validHostname(e.Host) {
			return a, "", &FieldError{"host", fmt.Sprintf("%q is neither an IP address nor a DNS name", e.Host)}
		} else {
			host = e.Host
		}
	}
	switch strings.ToLower(e.Proto) {
	case "", "any":
	case "tcp":
		a.Proto = protoTCP
	case "udp":
		a.Proto = protoUDP
	default:
		return a, "", &FieldError{"proto", fmt.Sprintf("%q: want tcp, udp or any", e.Proto)}
	}
	var err error
	if a.PortLo, a.PortHi, err = parsePorts(e.Port); err != nil {
		return a, "", &FieldError{"port", err.Error()}
	}
	if e.Port != "" && e.Port != "any" && a.PortLo == 0 {
		return a, "", &FieldError{"port", fmt.Sprintf("%q: ports start at 1", e.Port)}
	}
	return a, host, nil
}

func validHostname(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(strings.TrimSuffix(s, "."), ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// EgressStatus is one component's egress counters, as `outpost netpol
// status` shows them.
type EgressStatus struct {
	Allowed uint64 `json:"allowed"`
	Denied  uint64 `json:"denied"`
	// Destinations are the refused destinations ("10.0.0.1:443/tcp") and
	// how often each was refused.
	Destinations map[string]uint64 `json:"denied_destinations,omitempty"`
}
