package netpol

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/outpost-edge/outpost/internal/config"
)

// MaxRules is the number of rules one interface's policy may hold (the size
// of one generation of the XDP program's rule map).
const MaxRules = 16384

// Config is the agent's `netpol:` section.
type Config struct {
	// Backend is auto (ebpf where it can attach, else nftables), ebpf or
	// nftables.
	Backend string `yaml:"backend"`
	// Interfaces each carry their own policy.
	Interfaces []Interface `yaml:"interfaces"`
	// LoadBalancers are L4 virtual services (lb.go).
	LoadBalancers []LBService `yaml:"load_balancers"`
}

// Interface is the ingress policy of one network interface.
type Interface struct {
	// Name is the interface name (eth0, enp1s0, ...).
	Name string `yaml:"name"`
	// Default is the action for packets no rule matches: allow or deny.
	Default string `yaml:"default"`
	// OnAgentStop is what is left when the agent stops or dies: "open"
	// removes the filter (traffic flows unfiltered), "closed" leaves the
	// last policy in force (pinned) until the agent is back. Default closed.
	OnAgentStop string `yaml:"on_agent_stop"`
	// Rules are checked in order; the first match decides.
	Rules []Rule `yaml:"rules"`
	// RateLimit caps packets per second from each source address to the
	// listed destination ports (the broker's, typically).
	RateLimit *RateLimit `yaml:"rate_limit"`
}

// Rule is one allow/deny rule. Empty fields match anything.
type Rule struct {
	Name   string `yaml:"name"`
	Action string `yaml:"action"` // allow | deny
	Src    string `yaml:"src"`    // CIDR or address
	Dst    string `yaml:"dst"`
	Proto  string `yaml:"proto"` // tcp | udp | icmp | any
	SPort  string `yaml:"sport"` // "1883" or "1024-65535"
	DPort  string `yaml:"dport"`
}

// RateLimit is a token bucket per source address.
type RateLimit struct {
	Ports []int `yaml:"ports"`
	PPS   int   `yaml:"pps"`
	Burst int   `yaml:"burst"`
}

// SetDefaults fills zero values.
func (c *Config) SetDefaults() {
	if c.Backend == "" {
		c.Backend = "auto"
	}
	for i := range c.Interfaces {
		itf := &c.Interfaces[i]
		if itf.Default == "" {
			itf.Default = "allow"
		}
		if itf.OnAgentStop == "" {
			itf.OnAgentStop = "closed"
		}
		for j := range itf.Rules {
			if itf.Rules[j].Name == "" {
				itf.Rules[j].Name = fmt.Sprintf("rule%d", j)
			}
		}
		if rl := itf.RateLimit; rl != nil && rl.Burst == 0 {
			rl.Burst = rl.PPS
		}
	}
	c.SetLBDefaults()
}

// Validate checks the whole section; every problem is reported with its
// YAML path, so the config loader can give file:line:column.
func (c Config) Validate() error {
	var errs []error
	switch c.Backend {
	case "auto", "ebpf", "nftables":
	default:
		errs = append(errs, config.Field("backend", "%q: want auto, ebpf or nftables", c.Backend))
	}
	seen := map[string]bool{}
	for i, itf := range c.Interfaces {
		p := fmt.Sprintf("interfaces[%d]", i)
		if !validIfName(itf.Name) {
			errs = append(errs, config.Field(p+".name", "%q is not an interface name (1-15 characters, no '/', whitespace or ':')", itf.Name))
		} else if seen[itf.Name] {
			errs = append(errs, config.Field(p+".name", "interface %q has a policy already", itf.Name))
		}
		seen[itf.Name] = true
		if itf.Default != "allow" && itf.Default != "deny" {
			errs = append(errs, config.Field(p+".default", "%q: want allow or deny", itf.Default))
		}
		if itf.OnAgentStop != "open" && itf.OnAgentStop != "closed" {
			errs = append(errs, config.Field(p+".on_agent_stop", "%q: want open or closed", itf.OnAgentStop))
		}
		if len(itf.Rules) > MaxRules {
			errs = append(errs, config.Field(p+".rules", "%d rules; at most %d per interface", len(itf.Rules), MaxRules))
		}
		names := make(map[string]bool, len(itf.Rules))
		for j, r := range itf.Rules {
			// The path is built only for an error: 10,000 rules validate
			// in every update (docs/bench/netpol.md).
			rp := func() string { return p + ".rules[" + strconv.Itoa(j) + "]" }
			if _, err := compileRule(r); err != nil {
				var fe *fieldError
				if errors.As(err, &fe) {
					errs = append(errs, config.Field(rp()+"."+fe.field, "%s", fe.msg))
				} else {
					errs = append(errs, config.Field(rp(), "%v", err))
				}
			}
			if names[r.Name] {
				errs = append(errs, config.Field(rp()+".name", "duplicate rule name %q", r.Name))
			}
			names[r.Name] = true
		}
		if rl := itf.RateLimit; rl != nil {
			if rl.PPS <= 0 || rl.PPS > 10_000_000 {
				errs = append(errs, config.Field(p+".rate_limit.pps", "must be 1..10000000"))
			}
			if rl.Burst < 0 || rl.Burst > 10_000_000 {
				errs = append(errs, config.Field(p+".rate_limit.burst", "must be 0..10000000 (0 = pps)"))
			}
			if len(rl.Ports) == 0 || len(rl.Ports) > 64 {
				errs = append(errs, config.Field(p+".rate_limit.ports", "list 1 to 64 destination ports"))
			}
			for k, port := range rl.Ports {
				if port < 1 || port > 65535 {
					errs = append(errs, config.Field(fmt.Sprintf("%s.rate_limit.ports[%d]", p, k), "%d is not a port (1-65535)", port))
				}
			}
		}
	}
	errs = append(errs, c.ValidateLB()...)
	return errors.Join(errs...)
}

func validIfName(s string) bool {
	return s != "" && len(s) <= 15 && s != "." && s != ".." && !strings.ContainsAny(s, "/: \t\n")
}

type fieldError struct{ field, msg string }

func (e *fieldError) Error() string { return e.field + ": " + e.msg }

// Protocol numbers.
const (
	protoAny    = 0
	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58

	ProtoTCP = protoTCP
	ProtoUDP = protoUDP
)

// Address families a rule applies to (Compiled.Family).
const (
	FamilyAny = 0
	FamilyV4  = 4
	FamilyV6  = 6
)

// Compiled is a rule in the form the enforcement backends use.
type Compiled struct {
	Name  string
	Allow bool
	// Family is the address family of the packets the rule can match: set
	// by its addresses (an IPv4 CIDR makes it an IPv4 rule, an IPv6 one an
	// IPv6 rule; 0.0.0.0/0 and ::/0 mean "all of that family") or by an
	// icmpv6 proto; FamilyAny when neither says.
	Family           uint8
	Src, Dst         netip.Prefix // the zero Prefix (not valid) = any
	Proto            uint8        // 0 = any
	SPortLo, SPortHi uint16
	DPortLo, DPortHi uint16
}

// Compile checks one rule and returns it in the backends' form.
func Compile(r Rule) (Compiled, error) { return compileRule(r) }

func compileRule(r Rule) (Compiled, error) {
	c := Compiled{Name: r.Name, SPortHi: 65535, DPortHi: 65535}
	switch r.Action {
	case "allow":
		c.Allow = true
	case "deny":
	default:
		return c, &fieldError{"action", fmt.Sprintf("%q: want allow or deny", r.Action)}
	}
	var err error
	if c.Src, err = parseCIDR(r.Src); err != nil {
		return c, &fieldError{"src", err.Error()}
	}
	if c.Dst, err = parseCIDR(r.Dst); err != nil {
		return c, &fieldError{"dst", err.Error()}
	}
	switch strings.ToLower(r.Proto) {
	case "", "any":
	case "tcp":
		c.Proto = protoTCP
	case "udp":
		c.Proto = protoUDP
	case "icmp":
		c.Proto = protoICMP
	case "icmpv6":
		c.Proto = protoICMPv6
	default:
		return c, &fieldError{"proto", fmt.Sprintf("%q: want tcp, udp, icmp, icmpv6 or any", r.Proto)}
	}
	// The family: a packet is IPv4 or IPv6, so a rule whose fields name
	// both could never match.
	// (An array, not a slice: no allocation, and every update validates
	// every rule.)
	var first said
	for _, f := range [...]said{
		{"src", r.Src, family(c.Src)},
		{"dst", r.Dst, family(c.Dst)},
		{"proto", r.Proto, protoFamily(c.Proto)},
	} {
		if f.fam == FamilyAny {
			continue
		}
		if c.Family != FamilyAny && c.Family != f.fam {
			return c, &fieldError{f.field, fmt.Sprintf("%q is IPv%d but %s %q is IPv%d: no packet is both; split it into two rules", f.value, f.fam, first.field, first.value, first.fam)}
		}
		c.Family, first = f.fam, f
	}
	if c.SPortLo, c.SPortHi, err = parsePorts(r.SPort); err != nil {
		return c, &fieldError{"sport", err.Error()}
	}
	if c.DPortLo, c.DPortHi, err = parsePorts(r.DPort); err != nil {
		return c, &fieldError{"dport", err.Error()}
	}
	if (r.SPort != "" || r.DPort != "") && c.Proto != protoTCP && c.Proto != protoUDP {
		return c, &fieldError{"proto", "ports need proto tcp or udp"}
	}
	return c, nil
}

// said is which field of a rule set its family, for the error message.
type said struct {
	field, value string
	fam          uint8
}

// protoFamily is the family a protocol implies: ICMP is IPv4's, ICMPv6
// IPv6's; the others go with either.
func protoFamily(proto uint8) uint8 {
	switch proto {
	case protoICMP:
		return FamilyV4
	case protoICMPv6:
		return FamilyV6
	}
	return FamilyAny
}

func family(p netip.Prefix) uint8 {
	switch {
	case !p.IsValid():
		return FamilyAny
	case p.Addr().Is4():
		return FamilyV4
	}
	return FamilyV6
}

// parseCIDR reads an address or CIDR of either family; "" and "any" give
// the zero Prefix (any address of any family).
func parseCIDR(s string) (netip.Prefix, error) {
	if s == "" || s == "any" {
		return netip.Prefix{}, nil
	}
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR (10.1.2.3, 10.1.0.0/16, fd00:1::/64)", s)
		}
		if a.Is4In6() {
			return netip.Prefix{}, fmt.Errorf("%q is an IPv4-mapped IPv6 address, which never appears on the wire (such packets are dropped as malformed); write %s", s, a.Unmap())
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR (like 10.1.0.0/16 or fd00:1::/64)", s)
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("%q is an IPv4-mapped IPv6 prefix, which never appears on the wire; write the IPv4 CIDR", s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%q has host bits set; did you mean %s?", s, p.Masked())
	}
	return p, nil
}

func parsePorts(s string) (lo, hi uint16, err error) {
	if s == "" || s == "any" {
		return 0, 65535, nil
	}
	a, b, isRange := strings.Cut(s, "-")
	l, err1 := strconv.ParseUint(strings.TrimSpace(a), 10, 16)
	h := l
	var err2 error
	if isRange {
		h, err2 = strconv.ParseUint(strings.TrimSpace(b), 10, 16)
	}
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("%q: want a port (1883) or a range (1024-65535)", s)
	}
	if l > h {
		return 0, 0, fmt.Errorf("%q: range starts after it ends", s)
	}
	return uint16(l), uint16(h), nil
}

// Packet is what Decide looks at.
type Packet struct {
	Src, Dst     netip.Addr
	Proto        uint8
	SPort, DPort uint16
}

// Decision says what a policy does with a packet.
type Decision struct {
	Allow bool
	// Rule is the matching rule's name, or "default".
	Rule  string
	Index int // -1 for the default action
}

// Decide evaluates p against an interface policy with the first-match
// semantics both backends implement. The interface must have validated.
// An IPv6 packet with an IPv4-mapped address is dropped as malformed, as
// the backends do (it would otherwise dodge the IPv4 rules).
func Decide(itf Interface, p Packet) (Decision, error) {
	if !p.Src.IsValid() || !p.Dst.IsValid() || p.Src.Is4() != p.Dst.Is4() {
		return Decision{}, fmt.Errorf("netpol: a packet's source and destination must both be IPv4 or both IPv6 (got %v and %v)", p.Src, p.Dst)
	}
	if p.Src.Is4In6() || p.Dst.Is4In6() {
		return Decision{Allow: false, Rule: "malformed", Index: -1}, nil
	}
	for i, r := range itf.Rules {
		c, err := compileRule(r)
		if err != nil {
			return Decision{}, fmt.Errorf("netpol: rule %s: %w", r.Name, err)
		}
		if c.matches(p) {
			return Decision{Allow: c.Allow, Rule: c.Name, Index: i}, nil
		}
	}
	return Decision{Allow: itf.Default == "allow", Rule: "default", Index: -1}, nil
}

func (c Compiled) matches(p Packet) bool {
	switch c.Family {
	case FamilyV4:
		if !p.Src.Is4() {
			return false
		}
	case FamilyV6:
		if !p.Src.Is6() {
			return false
		}
	}
	if c.Src.IsValid() && !c.Src.Contains(p.Src) || c.Dst.IsValid() && !c.Dst.Contains(p.Dst) {
		return false
	}
	if c.Proto != protoAny && c.Proto != p.Proto {
		return false
	}
	return p.SPort >= c.SPortLo && p.SPort <= c.SPortHi && p.DPort >= c.DPortLo && p.DPort <= c.DPortHi
}

// ParseProto maps a name to a protocol number for `outpost netpol test`.
func ParseProto(s string) (uint8, error) {
	switch strings.ToLower(s) {
	case "tcp":
		return protoTCP, nil
	case "udp":
		return protoUDP, nil
	case "icmp":
		return protoICMP, nil
	case "icmpv6":
		return protoICMPv6, nil
	}
	return 0, fmt.Errorf("netpol: protocol %q: want tcp, udp, icmp or icmpv6", s)
}
