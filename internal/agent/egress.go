package agent

import (
	"net/netip"

	"github.com/outpost-edge/outpost/internal/netpol"
)

// brokerEgress is what every component with an egress list may reach: the
// embedded broker's TCP listeners (tcp, tls, ws, wss; unix sockets are not
// subject to the egress programs). A listener on an unspecified address
// (":1883", "0.0.0.0:1883", "[::]:1883") is allowed on loopback.
func (a *Agent) brokerEgress() []netpol.EgressAllow {
	a.mu.Lock()
	cfg := a.cfg
	a.mu.Unlock()
	if cfg == nil || a.Broker == nil {
		return nil
	}
	var out []netpol.EgressAllow
	for _, l := range cfg.Broker.Listeners {
		if l.Type == "unix" {
			continue
		}
		addr := a.Broker.Addr(l.Name)
		if addr == "" {
			addr = l.Address
		}
		ap, err := netip.ParseAddrPort(addr)
		if err != nil {
			// ":1883" has no host.
			if p, err2 := netip.ParseAddrPort("0.0.0.0" + addr); err2 == nil {
				ap = p
			} else {
				continue
			}
		}
		allowTCP := func(p netip.Prefix) {
			out = append(out, netpol.EgressAllow{Prefix: p, PortLo: ap.Port(), PortHi: ap.Port(), Proto: netpol.ProtoTCP})
		}
		if ap.Addr().IsUnspecified() {
			allowTCP(netip.MustParsePrefix("127.0.0.0/8"))
			allowTCP(netip.MustParsePrefix("::1/128"))
			continue
		}
		a1 := ap.Addr().Unmap()
		allowTCP(netip.PrefixFrom(a1, a1.BitLen()))
	}
	return out
}

// egressStatus is the egress enforcer's counters for /api/v1/netpol.
type egressStatus interface {
	Status() map[string]netpol.EgressStatus
}
