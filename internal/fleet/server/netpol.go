package server

import (
	"encoding/json"

	"github.com/outpost-edge/outpost/internal/config"
	"github.com/outpost-edge/outpost/internal/netpol"
)

// validateNetpol checks a netpol object's spec (the agent's netpol:
// section as JSON) with the agent's own strict decoder, defaults and
// validation, so a policy the gateways would refuse is refused when it is
// stored. Errors name the field under spec and its line:column in the
// spec as sent: "spec:1:52: interfaces[0].rules[0].src: ...".
func validateNetpol(spec json.RawMessage) error {
	var c netpol.Config
	return config.Parse("spec", spec, &c, config.Options{NoEnv: true})
}
