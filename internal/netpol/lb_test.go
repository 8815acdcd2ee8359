package netpol

import (
	"strings"
	"testing"
)

func TestMaglevBalancedAndMinimalDisruption(t *testing.T) {
	names := []string{"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80", "10.0.0.5:80"}
	tab := Maglev(names, MaglevSize)
	count := make([]int, len(names))
	for _, b := range tab {
		count[b]++
	}
	want := MaglevSize / len(names)
	for i, c := range count {
		if c < want-1 || c > want+1 {
			t.Errorf("backend %d owns %d slots, want %d±1", i, c, want)
		}
	}
	// Remove backend 2: the slots other backends owned mostly stay.
	rest := append(append([]string{}, names[:2]...), names[3:]...)
	tab2 := Maglev(rest, MaglevSize)
	moved := 0
	for i := range tab {
		if names[tab[i]] == names[2] {
			continue
		}
		if rest[tab2[i]] != names[tab[i]] {
			moved++
		}
	}
	if moved > MaglevSize/20 {
		t.Errorf("%d of %d slots of surviving backends moved, want < 5%%", moved, MaglevSize)
	}
	if Maglev(nil, MaglevSize) != nil {
		t.Error("empty set must give no table")
	}
}

func TestLBValidate(t *testing.T) {
	c := Config{LoadBalancers: []LBService{
		{Name: "a", VIP: "10.96.0.1:80", Backends: []LBBackend{{Address: "127.0.0.1:8080"}}},
		{Name: "a", VIP: "[::1]:80", Proto: "sctp", Algorithm: "random", Backends: []LBBackend{{Address: "x"}, {Address: "127.0.0.1:1"}, {Address: "127.0.0.1:1"}}},
	}}
	c.SetDefaults()
	err := c.Validate()
	if err == nil {
		t.Fatal("want errors")
	}
	for _, want := range []string{
		"load_balancers[1].name", "load_balancers[1].vip", "IPv6", "load_balancers[1].proto",
		"load_balancers[1].algorithm", "load_balancers[1].backends[0].address", "load_balancers[1].backends[2].address",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "load_balancers[0]") {
		t.Errorf("valid service reported: %v", err)
	}
	// udp: the same VIP:port as a tcp service is another service; the
	// TC path (interface) is tcp only; two udp services on one VIP clash.
	u := Config{LoadBalancers: []LBService{
		{Name: "t", VIP: "10.96.0.1:53", Backends: []LBBackend{{Address: "127.0.0.1:5353"}}},
		{Name: "u", VIP: "10.96.0.1:53", Proto: "udp", Backends: []LBBackend{{Address: "127.0.0.1:5353"}}},
		{Name: "u2", VIP: "10.96.0.1:53", Proto: "udp", Interface: "eth0", Backends: []LBBackend{{Address: "127.0.0.1:5354"}}},
	}}
	u.SetDefaults()
	err = u.Validate()
	for _, want := range []string{`load_balancers[2].vip: 10.96.0.1:53/udp is the VIP of "u" already`, "load_balancers[2].interface: remote clients (interface) are balanced for tcp only"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("udp: error lacks %q:\n%v", want, err)
		}
	}
	if err != nil && (strings.Contains(err.Error(), "load_balancers[0]") || strings.Contains(err.Error(), "load_balancers[1]")) {
		t.Errorf("valid tcp and udp services on one VIP refused: %v", err)
	}
	ok := Config{LoadBalancers: c.LoadBalancers[:1]}
	ok.SetDefaults()
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	if ok.LoadBalancers[0].Algorithm != "round_robin" || ok.LoadBalancers[0].Health.Fall != 2 {
		t.Errorf("defaults: %+v", ok.LoadBalancers[0])
	}
}
