package recipe

import (
	"errors"
	"strings"
	"testing"
)

const egressBase = "name: c\nversion: 1.0.0\nlifecycle:\n  run: {exec: [/bin/true]}\n"

func TestEgressParse(t *testing.T) {
	r, err := Parse("r.yaml", []byte(egressBase+"egress:\n  - {host: 10.0.0.1, port: 443, proto: tcp}\n  - {cidr: 'fd00::/8', port: 8000-8100}\n  - {host: api.example.com, port: 443}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Egress) != 3 || r.Egress[0].Port != "443" || r.Egress[1].CIDR != "fd00::/8" || r.Egress[2].Host != "api.example.com" {
		t.Fatalf("egress %+v", r.Egress)
	}
	r, err = Parse("r.yaml", []byte(egressBase))
	if err != nil || r.Egress != nil {
		t.Fatalf("no egress key: %v %v (want nil: unrestricted)", r.Egress, err)
	}
	r, err = Parse("r.yaml", []byte(egressBase+"egress: []\n"))
	if err != nil || r.Egress == nil || len(r.Egress) != 0 {
		t.Fatalf("empty egress: %#v %v (want declared, empty)", r.Egress, err)
	}
}

func TestEgressErrors(t *testing.T) {
	cases := []struct {
		yaml string
		want string // "line:col: field: text"
	}{
		{"egress: {host: a}\n", "5:9: egress: "},
		{"egress:\n  - {port: 443}\n", "6:5: egress[0].host: "},
		{"egress:\n  - {host: 10.0.0.1, cidr: 10.0.0.0/8}\n", "6:28: egress[0].cidr: "},
		{"egress:\n  - {cidr: 10.0.0.1/8}\n", "6:12: egress[0].cidr: "},
		{"egress:\n  - {host: 'bad host'}\n", "6:12: egress[0].host: "},
		{"egress:\n  - host: 10.0.0.1\n    port: 70000\n", "7:11: egress[0].port: "},
		{"egress:\n  - host: 10.0.0.1\n    port: 0\n", "7:11: egress[0].port: "},
		{"egress:\n  - {host: '::1', proto: icmp}\n", "6:26: egress[0].proto: "},
		{"egress:\n  - {host: '::1', prot: tcp}\n", "6:19: egress[0].prot: "},
	}
	for _, c := range cases {
		_, err := Parse("r.yaml", []byte(egressBase+c.yaml))
		var re *Error
		if !errors.As(err, &re) {
			t.Errorf("%q: got %v, want a recipe error", c.yaml, err)
			continue
		}
		want := strings.SplitN(c.want, ": ", 3)
		got := strings.Join([]string{itoa(re.Line) + ":" + itoa(re.Column), re.Field}, ": ")
		if got != want[0]+": "+want[1] {
			t.Errorf("%q: error at %s, want %s (%v)", c.yaml, got, want[0]+": "+want[1], err)
		}
	}
}

func itoa(i int) string {
	if i < 10 {
		return string(rune('0' + i))
	}
	return itoa(i/10) + string(rune('0'+i%10))
}
