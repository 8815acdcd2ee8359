package server

import (
	"strings"
	"testing"

	"github.com/outpost-edge/outpost/internal/fleet/proto"
)

// TestNetpolObjectValidation: a netpol object's spec is checked with the
// agent's strict decoder and validation when it is stored; the error names
// the field and its line:column in the spec.
func TestNetpolObjectValidation(t *testing.T) {
	obj := func(spec string) proto.Object {
		return proto.Object{Kind: proto.KindNetpol, ID: "plant", Name: "plant", Spec: []byte(spec)}
	}
	good := `{"interfaces":[{"name":"eth0","default":"deny","rules":[{"name":"mqtt","action":"allow","src":"10.0.0.0/8","proto":"tcp","dport":"1883"}]}]}`
	if err := ValidateObject(obj(good)); err != nil {
		t.Fatal(err)
	}
	good6 := `{"interfaces":[{"name":"eth0","default":"deny","rules":[{"name":"mqtt6","action":"allow","src":"fd00:20::/48","proto":"tcp","dport":"1883"},{"name":"ping6","action":"allow","proto":"icmpv6"}]}]}`
	if err := ValidateObject(obj(good6)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ spec, want string }{
		{`{"interfaces":[{"name":"eth0","rules":[{"action":"allow","src":"10.0.0.300/24"}]}]}`, `spec:1:64: interfaces[0].rules[0].src: "10.0.0.300/24" is not a CIDR (like 10.1.0.0/16 or fd00:1::/64)`},
		{`{"interfacez":[]}`, `spec:1:2: unknown key "interfacez"`},
		{`{"interfaces":[{"name":"eth0","rules":[{"action":"allow","src":"fd00::/8","dst":"10.0.0.1"}]}]}`, `interfaces[0].rules[0].dst: "10.0.0.1" is IPv4 but src "fd00::/8" is IPv6`},
		{`{"interfaces":[{"name":"eth0","rules":[{"action":"allow","dport":"2000-1000"}]}]}`, `interfaces[0].rules[0].dport`},
		{`{"interfaces":[{"name":"a/b"}]}`, `interfaces[0].name`},
		{`{"backend":"bpf"}`, `backend: "bpf"`},
		{`[]`, `spec: must be a JSON object`},
	} {
		err := ValidateObject(obj(tc.spec))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("spec %s: err = %v, want %q", tc.spec, err, tc.want)
		}
	}
}
