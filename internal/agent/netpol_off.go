//go:build !netpol

package agent

import (
	"context"
	"errors"

	"github.com/outpost-edge/outpost/internal/module"
	"github.com/outpost-edge/outpost/internal/netpol"
	"github.com/outpost-edge/outpost/internal/supervisor"
)

// newNetpol in a build without the netpol tag: a netpol section is refused
// at start with a message that says how to get a build that has it.
func (a *Agent) newNetpol() module.Typed[netpol.Config] {
	a.Netpol = netpolOff{}
	return a.Netpol
}

type netpolOff struct{}

var errNoNetpol = errors.New("netpol: this outpost was built without network policy; build it with -tags netpol (TAGS=netpol scripts/build.sh) or remove the netpol section")

func (netpolOff) Name() string                               { return "netpol" }
func (netpolOff) Init(context.Context, *netpol.Config) error { return errNoNetpol }
func (netpolOff) Start(context.Context) error                { return errNoNetpol }
func (netpolOff) Stop(context.Context) error                 { return nil }
func (netpolOff) Health() module.Status {
	return module.Status{State: module.StateFailed, Detail: errNoNetpol.Error()}
}

// newEgress in a build without the netpol tag: no enforcement, so a
// recipe that declares egress is not started (supervisor.ErrNoEgress).
func (a *Agent) newEgress() supervisor.EgressEnforcer {
	a.egress = nil
	return nil
}
