package kernel

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/outpost-edge/outpost/internal/netpol"
	"net/netip"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nftBackend enforces policies with nftables: one netdev-family table
// "outpost_<iface>" per interface with an ingress chain, the same first-match
// rule order, one counter per rule and the default.
type nftBackend struct {
	conn   *nftables.Conn
	ifaces map[string]*nftIface
}

type nftIface struct {
	table *nftables.Table
	chain *nftables.Chain
	// objs maps rule names to their named counter objects. Counters are
	// objects, not rule expressions, so they survive the chain being
	// replaced: a rule that keeps its name keeps counting.
	objs map[string]string
}

// objName is a counter object's name for a rule name (any characters).
func objName(rule string) string {
	h := sha256.Sum256([]byte(rule))
	return "c_" + hex.EncodeToString(h[:12])
}

const nftTableFlagOwner = 0x2 // NFT_TABLE_F_OWNER: removed with its netlink socket

func newNFTBackend(netnsFd int) (*nftBackend, error) {
	// A policy of thousands of rules is one transaction, one netlink
	// message of megabytes, with an acknowledgement per rule: raise both
	// socket buffers past the sysctl caps (root: SO_*BUFFORCE).
	bufs := nftables.WithSockOptions(func(c *netlink.Conn) error {
		rc, err := c.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		err = rc.Control(func(fd uintptr) {
			serr = errors.Join(
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 64<<20),
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20))
		})
		return errors.Join(err, serr)
	})
	opts := []nftables.ConnOption{nftables.AsLasting(), bufs}
	if netnsFd >= 0 {
		opts = append(opts, nftables.WithNetNSFd(netnsFd))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("netpol: nftables: %w", err)
	}
	if _, err := c.ListTablesOfFamily(nftables.TableFamilyNetdev); err != nil {
		c.CloseLasting()
		return nil, fmt.Errorf("netpol: nftables not usable: %w", err)
	}
	return &nftBackend{conn: c, ifaces: map[string]*nftIface{}}, nil
}

func (b *nftBackend) Name() string { return "nftables" }

func tableName(iface string) string { return "outpost_" + iface }

// Apply replaces an interface's chain in one netlink batch, which nftables
// commits as one transaction.
func (b *nftBackend) Apply(itf netpol.Interface) error {
	rules := make([]netpol.Compiled, 0, len(itf.Rules))
	for _, r := range itf.Rules {
		c, err := netpol.Compile(r)
		if err != nil {
			return fmt.Errorf("netpol: %s: rule %s: %w", itf.Name, r.Name, err)
		}
		rules = append(rules, c)
	}
	x := b.ifaces[itf.Name]
	if x == nil {
		x = &nftIface{objs: map[string]string{}}
		var flags uint32
		if itf.OnAgentStop == "open" {
			flags = nftTableFlagOwner
		}
		// A table left by a previous run (on_agent_stop: closed) is taken
		// over: replaced in the same transaction as the new rules.
		x.table = &nftables.Table{Name: tableName(itf.Name), Family: nftables.TableFamilyNetdev, Flags: flags}
		if old, err := b.conn.ListTableOfFamily(x.table.Name, nftables.TableFamilyNetdev); err == nil && old != nil {
			b.conn.DelTable(old)
		}
		b.conn.AddTable(x.table)
		policy := nftables.ChainPolicyAccept
		x.chain = b.conn.AddChain(&nftables.Chain{
			Name: "ingress", Table: x.table, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookIngress, Priority: nftables.ChainPriorityRef(-500),
			Device: itf.Name, Policy: &policy,
		})
	} else {
		b.conn.FlushChain(x.chain)
	}
	used := map[string]bool{}
	counter := func(name string) expr.Any {
		o, ok := x.objs[name]
		if !ok {
			o = objName(name)
			b.conn.AddObj(&nftables.CounterObj{Table: x.table, Name: o})
			x.objs[name] = o
		}
		used[name] = true
		return &expr.Objref{Type: int(nftables.ObjTypeCounter), Name: o}
	}
	add := func(name string, exprs ...expr.Any) {
		// The counter goes just before the verdict (the last expression).
		n := len(exprs)
		exprs = append(exprs[:n-1:n-1], counter(name), exprs[n-1])
		b.conn.AddRule(&nftables.Rule{Table: x.table, Chain: x.chain, Exprs: exprs, UserData: []byte(name)})
	}
	verdict := func(allow bool) expr.Any {
		if allow {
			return &expr.Verdict{Kind: expr.VerdictAccept}
		}
		return &expr.Verdict{Kind: expr.VerdictDrop}
	}
	def := itf.Default == "allow"
	// Non-IP frames (ARP, ...) always pass. Every IPv6 packet is counted;
	// one with an IPv4-mapped address is malformed (it would dodge the
	// IPv4 rules at a dual-stack socket); neighbour discovery and MLD
	// always pass.
	add("_non_ip", append(etherIsNot(unix.ETH_P_IP, unix.ETH_P_IPV6), verdict(true))...)
	x.addCountOnly(b, counter("_ipv6"), etherIs(unix.ETH_P_IPV6)...)
	for _, off := range []uint32{8, 24} {
		add("_malformed", append(append(etherIs(unix.ETH_P_IPV6), matchPrefix(off, v4Mapped)...), verdict(false))...)
	}
	// ICMPv6 types 130-137 and 143: MLD and neighbour discovery (see
	// bpf/xdp_policy.c).
	for _, types := range [][2]byte{{130, 137}, {143, 143}} {
		add("_ipv6_nd", append(append(etherIs(unix.ETH_P_IPV6), l4proto(58)...),
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
			&expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: types[:1], ToData: types[1:]},
			verdict(true))...)
	}
	if rl := itf.RateLimit; rl != nil {
		// One bucket per IPv4 source, and per IPv6 /64 (a host picks
		// addresses in its /64 at will).
		sets := []struct {
			name    string
			eth     uint16
			off     uint32
			keyType nftables.SetDatatype
			mask    []byte
		}{
			{"rl", unix.ETH_P_IP, 12, nftables.TypeIPAddr, nil},
			{"rl6", unix.ETH_P_IPV6, 8, nftables.TypeIP6Addr, prefixMask(16, 64)},
		}
		for _, st := range sets {
			set := &nftables.Set{Table: x.table, Name: st.name, KeyType: st.keyType, Dynamic: true, HasTimeout: true, Timeout: time.Minute}
			if err := b.conn.AddSet(set, nil); err != nil {
				return fmt.Errorf("netpol: %s: rate-limit set: %w", itf.Name, err)
			}
			for _, port := range rl.Ports {
				for _, proto := range []uint8{netpol.ProtoTCP, netpol.ProtoUDP} {
					e := etherIs(st.eth)
					e = append(e, l4proto(proto)...)
					e = append(e, matchPortRange(2, uint16(port), uint16(port))...)
					e = append(e, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: st.off, Len: st.keyType.Bytes})
					if st.mask != nil {
						e = append(e, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(len(st.mask)), Mask: st.mask, Xor: make([]byte, len(st.mask))})
					}
					e = append(e,
						&expr.Dynset{SrcRegKey: 1, SetName: st.name, Operation: uint32(unix.NFT_DYNSET_OP_UPDATE), Timeout: time.Minute,
							Exprs: []expr.Any{&expr.Limit{Type: expr.LimitTypePkts, Rate: uint64(rl.PPS), Unit: expr.LimitTimeSecond, Burst: uint32(rl.Burst), Over: true}}},
						verdict(false))
					add("_rate_limited", e...)
				}
			}
		}
	}
	for _, c := range rules {
		// Only IPv4 and IPv6 packets get here: a rule of either family
		// names no ethertype.
		var e []expr.Any
		switch c.Family {
		case netpol.FamilyV4:
			e = etherIs(unix.ETH_P_IP)
			if c.Src.Bits() > 0 {
				e = append(e, matchPrefix(12, c.Src)...)
			}
			if c.Dst.Bits() > 0 {
				e = append(e, matchPrefix(16, c.Dst)...)
			}
		case netpol.FamilyV6:
			e = etherIs(unix.ETH_P_IPV6)
			if c.Src.Bits() > 0 {
				e = append(e, matchPrefix(8, c.Src)...)
			}
			if c.Dst.Bits() > 0 {
				e = append(e, matchPrefix(24, c.Dst)...)
			}
		}
		if c.Proto != 0 {
			e = append(e, l4proto(c.Proto)...)
		}
		if c.SPortLo != 0 || c.SPortHi != 65535 {
			e = append(e, matchPortRange(0, c.SPortLo, c.SPortHi)...)
		}
		if c.DPortLo != 0 || c.DPortHi != 65535 {
			e = append(e, matchPortRange(2, c.DPortLo, c.DPortHi)...)
		}
		e = append(e, verdict(c.Allow))
		add(c.Name, e...)
	}
	add("default", verdict(def))
	// Counters of rules that are gone, in the same transaction.
	var gone []string
	for name, o := range x.objs {
		if !used[name] {
			b.conn.DeleteObject(&nftables.CounterObj{Table: x.table, Name: o})
			gone = append(gone, name)
		}
	}
	if err := b.conn.Flush(); err != nil {
		// Nothing of the transaction was applied: forget the objects it
		// would have made, so the next attempt makes them again.
		b.forget(x)
		return fmt.Errorf("netpol: %s: nftables transaction: %w", itf.Name, err)
	}
	for _, name := range gone {
		delete(x.objs, name)
	}
	b.ifaces[itf.Name] = x
	return nil
}

// forget re-reads which counter objects exist after a failed transaction.
func (b *nftBackend) forget(x *nftIface) {
	have := map[string]bool{}
	if objs, err := b.conn.GetObjects(x.table); err == nil {
		for _, o := range objs {
			if c, ok := o.(*nftables.CounterObj); ok {
				have[c.Name] = true
			}
		}
	}
	for name, o := range x.objs {
		if !have[o] {
			delete(x.objs, name)
		}
	}
}

func etherIs(t uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: be16(t)},
	}
}

func etherIsNot(a, b uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: be16(a)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: be16(b)},
	}
}

// addCountOnly adds a rule that counts what its expressions match and
// goes on to the next rule (no verdict).
func (x *nftIface) addCountOnly(b *nftBackend, counter expr.Any, match ...expr.Any) {
	b.conn.AddRule(&nftables.Rule{Table: x.table, Chain: x.chain, Exprs: append(match, counter)})
}

// l4proto matches the transport protocol the kernel found (after IPv6
// extension headers; for IPv4 the header's protocol field).
func l4proto(v uint8) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{v}},
	}
}

var v4Mapped = netip.MustParsePrefix("::ffff:0.0.0.0/96")

// prefixMask is the n-byte network mask of a prefix of the given length
// (network byte order), for nftables and the BPF maps alike.
func prefixMask(n, bits int) []byte {
	m := make([]byte, n)
	for i := 0; i < bits; i++ {
		m[i/8] |= 0x80 >> (i % 8)
	}
	return m
}

// matchPrefix matches the address at off in the network header against p
// (4 bytes for IPv4, 16 for IPv6).
func matchPrefix(off uint32, p netip.Prefix) []expr.Any {
	addr := p.Addr().AsSlice()
	if p.Addr().Is4In6() {
		a := p.Addr().As16()
		addr = a[:]
	}
	n := len(addr)
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(n)},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(n), Mask: prefixMask(n, p.Bits()), Xor: make([]byte, n)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr},
	}
}

func matchPortRange(off uint32, lo, hi uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: 2},
		&expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: be16(lo), ToData: be16(hi)},
	}
}

func be16(v uint16) []byte { b := make([]byte, 2); binary.BigEndian.PutUint16(b, v); return b }

func (b *nftBackend) read(x *nftIface) (map[string]netpol.Counter, error) {
	objs, err := b.conn.GetObjects(x.table)
	if err != nil {
		return nil, err
	}
	byObj := map[string]netpol.Counter{}
	for _, o := range objs {
		if c, ok := o.(*nftables.CounterObj); ok {
			byObj[c.Name] = netpol.Counter{Packets: c.Packets, Bytes: c.Bytes}
		}
	}
	out := map[string]netpol.Counter{}
	for name, o := range x.objs {
		out[name] = byObj[o]
	}
	return out, nil
}

func (b *nftBackend) Stats(name string) (netpol.Stats, error) {
	x := b.ifaces[name]
	if x == nil {
		return netpol.Stats{}, fmt.Errorf("netpol: no policy on %q", name)
	}
	cur, err := b.read(x)
	if err != nil {
		return netpol.Stats{}, fmt.Errorf("netpol: %s: read counters: %w", name, err)
	}
	st := netpol.Stats{Rules: map[string]netpol.Counter{}, Global: map[string]netpol.Counter{}}
	for n, c := range cur {
		switch n {
		case "_non_ip":
			st.Global["non_ip"] = c
		case "_ipv6":
			st.Global["ipv6"] = c
		case "_rate_limited":
			st.Global["rate_limited"] = c
		case "_malformed":
			// IPv6 with IPv4-mapped addresses; the kernel's own parser
			// drops broken headers before nftables sees them.
			st.Global["malformed"] = c
		case "_ipv6_nd":
			st.Global["ipv6_nd"] = c
		default:
			st.Rules[n] = c
		}
	}
	return st, nil
}

func (b *nftBackend) Remove(name string) error {
	x := b.ifaces[name]
	if x == nil {
		return nil
	}
	delete(b.ifaces, name)
	b.conn.DelTable(x.table)
	return b.conn.Flush()
}

// Close removes the tables of interfaces with on_agent_stop: open (their
// owner flag would also remove them if the agent died); the others stay in
// force.
func (b *nftBackend) Close() error {
	var errs []error
	for name, x := range b.ifaces {
		if x.table.Flags&nftTableFlagOwner != 0 {
			errs = append(errs, b.Remove(name))
		}
	}
	errs = append(errs, b.conn.CloseLasting())
	return errors.Join(errs...)
}
