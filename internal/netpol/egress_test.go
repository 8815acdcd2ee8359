package netpol

import (
	"errors"
	"net/netip"
	"testing"
)

func TestCompileEgress(t *testing.T) {
	resolve := func(host string) ([]netip.Addr, error) {
		if host == "api.example.com" {
			return []netip.Addr{netip.MustParseAddr("192.0.2.7"), netip.MustParseAddr("2001:db8::7")}, nil
		}
		return nil, errors.New("no such host")
	}
	cases := []struct {
		e       Egress
		dst     string
		port    uint16
		proto   uint8
		allowed bool
	}{
		{Egress{Host: "10.0.0.1", Port: "443", Proto: "tcp"}, "10.0.0.1", 443, ProtoTCP, true},
		{Egress{Host: "10.0.0.1", Port: "443", Proto: "tcp"}, "10.0.0.1", 443, ProtoUDP, false},
		{Egress{Host: "10.0.0.1", Port: "443", Proto: "tcp"}, "10.0.0.2", 443, ProtoTCP, false},
		{Egress{Host: "10.0.0.1", Port: "443", Proto: "tcp"}, "::ffff:10.0.0.1", 443, ProtoTCP, true},
		{Egress{CIDR: "10.0.0.0/8", Port: "8000-8100"}, "10.9.9.9", 8100, ProtoUDP, true},
		{Egress{CIDR: "10.0.0.0/8", Port: "8000-8100"}, "10.9.9.9", 8101, ProtoUDP, false},
		{Egress{CIDR: "fd00::/8"}, "fd12::1", 1, ProtoTCP, true},
		{Egress{CIDR: "fd00::/8"}, "fe80::1", 1, ProtoTCP, false},
		{Egress{Host: "api.example.com", Port: "443"}, "2001:db8::7", 443, ProtoTCP, true},
		{Egress{Host: "api.example.com", Port: "443"}, "192.0.2.7", 443, ProtoTCP, true},
		{Egress{Host: "api.example.com", Port: "443"}, "192.0.2.8", 443, ProtoTCP, false},
	}
	for _, c := range cases {
		as, err := CompileEgress(c.e, resolve)
		if err != nil {
			t.Fatalf("%+v: %v", c.e, err)
		}
		got := false
		for _, a := range as {
			got = got || a.Contains(netip.MustParseAddr(c.dst), c.port, c.proto)
		}
		if got != c.allowed {
			t.Errorf("%+v to %s:%d/%d: allowed %v, want %v", c.e, c.dst, c.port, c.proto, got, c.allowed)
		}
	}
	for _, bad := range []struct {
		e     Egress
		field string
	}{
		{Egress{}, "host"},
		{Egress{Host: "a", CIDR: "10.0.0.0/8"}, "cidr"},
		{Egress{CIDR: "10.0.0.1/8"}, "cidr"},
		{Egress{CIDR: "::ffff:10.0.0.0/104"}, "cidr"},
		{Egress{Host: "fe80::1%eth0"}, "host"},
		{Egress{Host: "no such.host"}, "host"},
		{Egress{Host: "10.0.0.1", Port: "0"}, "port"},
		{Egress{Host: "10.0.0.1", Port: "9-1"}, "port"},
		{Egress{Host: "10.0.0.1", Proto: "icmp"}, "proto"},
	} {
		err := CheckEgress(bad.e)
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != bad.field {
			t.Errorf("%+v: got %v, want an error on %s", bad.e, err, bad.field)
		}
	}
	if _, err := CompileEgress(Egress{Host: "unknown.example"}, resolve); err == nil {
		t.Error("an unresolvable name compiled")
	}
}
