package netpol

import (
	"net/netip"
	"strings"
	"testing"
)

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

func TestValidateNamesTheField(t *testing.T) {
	tests := []struct {
		name string
		itf  Interface
		want string
	}{
		{"cidr", Interface{Name: "eth0", Rules: []Rule{{Action: "allow", Src: "10.1.2.300/24"}}}, "interfaces[0].rules[0].src"},
		{"host bits", Interface{Name: "eth0", Rules: []Rule{{Action: "allow", Src: "10.1.2.3/16"}}}, "did you mean 10.1.0.0/16"},
		{"port range", Interface{Name: "eth0", Rules: []Rule{{Action: "allow", Proto: "tcp", DPort: "2000-1000"}}}, "interfaces[0].rules[0].dport"},
		{"port word", Interface{Name: "eth0", Rules: []Rule{{Action: "allow", Proto: "tcp", DPort: "mqtt"}}}, "rules[0].dport"},
		{"port without proto", Interface{Name: "eth0", Rules: []Rule{{Action: "allow", DPort: "1883"}}}, "rules[0].proto"},
		{"interface", Interface{Name: "eth0/x", Rules: nil}, "interfaces[0].name"},
		{"action", Interface{Name: "eth0", Rules: []Rule{{Action: "permit"}}}, "rules[0].action"},
		{"default", Interface{Name: "eth0", Default: "maybe"}, "interfaces[0].default"},
		{"rate", Interface{Name: "eth0", RateLimit: &RateLimit{PPS: 10, Ports: []int{70000}}}, "rate_limit.ports[0]"},
		{"v6 cidr", Interface{Name: "eth0", Rules: []Rule{{Action: "allow", Src: "fd00::/129"}}}, "interfaces[0].rules[0].src"},
		{"v6 host bits", Interface{Name: "eth0", Rules: []Rule{{Action: "allow", Dst: "fd00::1/64"}}}, "did you mean fd00::/64"},
		{"mixed families", Interface{Name: "eth0", Rules: []Rule{{Action: "allow", Src: "10.0.0.0/8", Dst: "fd00::1"}}}, `rules[0].dst: "fd00::1" is IPv6 but src "10.0.0.0/8" is IPv4`},
		{"icmp to v6", Interface{Name: "eth0", Rules: []Rule{{Action: "allow", Src: "fd00::/8", Proto: "icmp"}}}, `rules[0].proto: "icmp" is IPv4 but src "fd00::/8" is IPv6`},
		{"icmpv6 from v4", Interface{Name: "eth0", Rules: []Rule{{Action: "allow", Dst: "10.0.0.1", Proto: "icmpv6"}}}, `rules[0].proto: "icmpv6" is IPv6 but dst`},
		{"v4-mapped", Interface{Name: "eth0", Rules: []Rule{{Action: "allow", Src: "::ffff:10.0.0.1"}}}, "write 10.0.0.1"},
		{"zone", Interface{Name: "eth0", Rules: []Rule{{Action: "allow", Src: "fe80::1%eth0"}}}, "rules[0].src"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Config{Interfaces: []Interface{tt.itf}}
			c.SetDefaults()
			if tt.itf.Default == "maybe" {
				c.Interfaces[0].Default = "maybe"
			}
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

func TestDecideFirstMatch(t *testing.T) {
	itf := Interface{Name: "eth0", Default: "deny", Rules: []Rule{
		{Name: "a", Action: "deny", Src: "10.0.0.5", Proto: "tcp", DPort: "1883"},
		{Name: "b", Action: "allow", Src: "10.0.0.0/8", Proto: "tcp", DPort: "1883"},
		{Name: "c", Action: "allow", Proto: "udp", SPort: "1024-65535", DPort: "53"},
	}}
	cases := []struct {
		p    Packet
		rule string
		ok   bool
	}{
		{Packet{Src: mustAddr("10.0.0.5"), Dst: mustAddr("10.9.9.9"), Proto: protoTCP, SPort: 4000, DPort: 1883}, "a", false},
		{Packet{Src: mustAddr("10.0.0.6"), Dst: mustAddr("10.9.9.9"), Proto: protoTCP, SPort: 4000, DPort: 1883}, "b", true},
		{Packet{Src: mustAddr("192.168.1.1"), Dst: mustAddr("10.9.9.9"), Proto: protoTCP, DPort: 1883}, "default", false},
		{Packet{Src: mustAddr("192.168.1.1"), Dst: mustAddr("10.9.9.9"), Proto: protoUDP, SPort: 5353, DPort: 53}, "c", true},
		{Packet{Src: mustAddr("192.168.1.1"), Dst: mustAddr("10.9.9.9"), Proto: protoUDP, SPort: 53, DPort: 53}, "default", false},
	}
	for _, c := range cases {
		d, err := Decide(itf, c.p)
		if err != nil || d.Rule != c.rule || d.Allow != c.ok {
			t.Errorf("%+v: got %+v %v, want %s allow=%v", c.p, d, err, c.rule, c.ok)
		}
	}
}

// IPv4 and IPv6 rules sit in one ordered list; a packet only meets the
// rules of its family and those that name none.
func TestDecideBothFamilies(t *testing.T) {
	itf := Interface{Name: "eth0", Default: "deny", Rules: []Rule{
		{Name: "v4-all", Action: "deny", Src: "0.0.0.0/0", Proto: "udp", DPort: "9000"},
		{Name: "v6-dev", Action: "allow", Src: "fd00:20::/64", Proto: "tcp", DPort: "1883"},
		{Name: "v6-host-deny", Action: "deny", Src: "fd00:20::66", Proto: "tcp"},
		{Name: "any-family", Action: "allow", Proto: "tcp", DPort: "1883-1884"},
		{Name: "v6-all", Action: "deny", Src: "::/0"},
		{Name: "icmp4", Action: "allow", Proto: "icmp"},
	}}
	c := Config{Interfaces: []Interface{itf}}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		src, dst string
		proto    uint8
		dport    uint16
		rule     string
		ok       bool
	}{
		{"10.0.0.1", "10.0.0.2", protoUDP, 9000, "v4-all", false},
		{"fd00:20::5", "fd00:20::1", protoUDP, 9000, "v6-all", false}, // 0.0.0.0/0 is IPv4 only
		{"fd00:20::66", "fd00:20::1", protoTCP, 1883, "v6-dev", true},
		{"fd00:20::66", "fd00:20::1", protoTCP, 1884, "v6-host-deny", false},
		{"fd00:99::1", "fd00:20::1", protoTCP, 1884, "any-family", true},
		{"10.9.9.9", "10.0.0.2", protoTCP, 1884, "any-family", true},
		{"10.9.9.9", "10.0.0.2", protoTCP, 22, "default", false}, // ::/0 is IPv6 only
		{"10.9.9.9", "10.0.0.2", protoICMP, 0, "icmp4", true},
		{"fd00:1::1", "fd00:20::1", protoICMPv6, 0, "v6-all", false},
		{"::ffff:10.0.0.1", "fd00:20::1", protoTCP, 1883, "malformed", false},
	}
	for _, c := range cases {
		d, err := Decide(itf, Packet{Src: mustAddr(c.src), Dst: mustAddr(c.dst), Proto: c.proto, SPort: 40000, DPort: c.dport})
		if err != nil || d.Rule != c.rule || d.Allow != c.ok {
			t.Errorf("%s -> %s proto %d port %d: got %+v %v, want %s allow=%v", c.src, c.dst, c.proto, c.dport, d, err, c.rule, c.ok)
		}
	}
	if _, err := Decide(itf, Packet{Src: mustAddr("10.0.0.1"), Dst: mustAddr("fd00::1")}); err == nil {
		t.Error("a packet with an IPv4 source and an IPv6 destination was evaluated")
	}
}

func FuzzCompileRule(f *testing.F) {
	f.Add("allow", "10.0.0.0/8", "1.2.3.4", "tcp", "1-2", "1883")
	f.Add("deny", "::1", "", "udp", "", "65535-0")
	f.Add("allow", "fd00::/64", "fd00::1", "tcp", "", "1883")
	f.Add("allow", "", "fd00::1", "icmp", "", "")
	f.Fuzz(func(t *testing.T, action, src, dst, proto, sport, dport string) {
		c, err := compileRule(Rule{Name: "r", Action: action, Src: src, Dst: dst, Proto: proto, SPort: sport, DPort: dport})
		if err != nil {
			return
		}
		if c.SPortLo > c.SPortHi || c.DPortLo > c.DPortHi {
			t.Fatalf("accepted an inconsistent port range: %+v", c)
		}
		for _, p := range []netip.Prefix{c.Src, c.Dst} {
			if !p.IsValid() {
				continue
			}
			if p.Masked() != p || p.Addr().Is4In6() || p.Addr().Zone() != "" {
				t.Fatalf("accepted prefix %v: %+v", p, c)
			}
			if fam := family(p); fam != c.Family {
				t.Fatalf("prefix %v is family %d, the rule says %d: %+v", p, fam, c.Family, c)
			}
		}
	})
}
