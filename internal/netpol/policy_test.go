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

func FuzzCompileRule(f *testing.F) {
	f.Add("allow", "10.0.0.0/8", "1.2.3.4", "tcp", "1-2", "1883")
	f.Add("deny", "::1", "", "udp", "", "65535-0")
	f.Fuzz(func(t *testing.T, action, src, dst, proto, sport, dport string) {
		c, err := compileRule(Rule{Name: "r", Action: action, Src: src, Dst: dst, Proto: proto, SPort: sport, DPort: dport})
		if err != nil {
			return
		}
		if c.SPortLo > c.SPortHi || c.DPortLo > c.DPortHi || !c.Src.Addr().Is4() || !c.Dst.Addr().Is4() {
			t.Fatalf("accepted an inconsistent rule: %+v", c)
		}
	})
}
