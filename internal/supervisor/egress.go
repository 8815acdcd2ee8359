package supervisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/outpost-edge/outpost/internal/netpol"
	"github.com/outpost-edge/outpost/internal/supervisor/cgroup"
	"github.com/outpost-edge/outpost/internal/supervisor/recipe"
)

// EgressEnforcer limits where a component's processes may connect
// (netpol egress; kernel.Egress implements it with cgroup BPF programs).
type EgressEnforcer interface {
	// Set installs the component's allow list. dir is the component's
	// cgroup2 group when it has one (the programs attach there and Set
	// returns nil); else Set returns the group to start processes in.
	Set(component, dir string, allow []netpol.EgressAllow) (*os.File, error)
	Remove(component string) error
}

// ErrNoEgress is why a component that declares egress is not started when
// the agent cannot enforce it: declaring egress is a promise that the
// component reaches nothing else, so the supervisor fails closed.
var ErrNoEgress = errors.New("the recipe declares egress but egress enforcement is unavailable (agent built without netpol, or the kernel refused the cgroup BPF programs); the component is not started")

// egressFor installs a component's egress policy before its processes
// start and returns the group descriptor to start them in (nil: none, or
// its own v2 group carries the programs). A recipe without `egress:` is
// unrestricted.
func (c *component) egressFor(ctx context.Context, r *recipe.Recipe, g *cgroup.Group) (*os.File, error) {
	if r.Egress == nil {
		return nil, nil
	}
	enf := c.s.opts.Egress
	if enf == nil {
		return nil, ErrNoEgress
	}
	var allow []netpol.EgressAllow
	if f := c.s.opts.EgressAlways; f != nil {
		allow = append(allow, f()...)
	}
	resolve := func(host string) ([]netip.Addr, error) {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	}
	for i, e := range r.Egress {
		a, err := netpol.CompileEgress(e, resolve)
		if err != nil {
			return nil, r.ErrorAt(fmt.Sprintf("egress[%d]", i), err)
		}
		allow = append(allow, a...)
	}
	if len(allow) > netpol.MaxEgress {
		return nil, r.ErrorAt("egress", fmt.Errorf("%d allow entries after resolving names; at most %d", len(allow), netpol.MaxEgress))
	}
	dir := ""
	if g != nil && g.Mode() == cgroup.V2 {
		dir = g.Path("")
	}
	fd, err := enf.Set(c.name, dir, allow)
	if err != nil {
		return nil, r.ErrorAt("egress", err)
	}
	return fd, nil
}
