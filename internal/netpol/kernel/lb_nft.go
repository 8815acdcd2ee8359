package kernel

import (
	"fmt"
	"os"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// lbNFT balances with an nftables nat table in the configured namespace:
// a DNAT rule per service in the output (local clients) and prerouting
// (remote clients) hooks; round robin picks with numgen inc, maglev with a
// jhash of source address and port (not Maglev's table: a set change
// remaps about (n-1)/n of new flows). Established flows keep their
// backend through conntrack. The table is owned by the agent's netlink
// socket, so it goes when the agent does.
type lbNFT struct {
	conn *nftables.Conn
}

const lbTable = "outpost_lb"

func (m *Manager) newLBNFT() (*lbNFT, error) {
	fd := -1
	if m.opts.Netns != "" {
		f, err := os.Open(m.opts.Netns)
		if err != nil {
			return nil, fmt.Errorf("netpol: netns: %w", err)
		}
		defer f.Close()
		fd = int(f.Fd())
	}
	opts := []nftables.ConnOption{nftables.AsLasting()}
	if fd >= 0 {
		opts = append(opts, nftables.WithNetNSFd(fd))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("netpol: nftables: %w", err)
	}
	if _, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4); err != nil {
		c.CloseLasting()
		return nil, fmt.Errorf("netpol: nftables not usable: %w", err)
	}
	return &lbNFT{conn: c}, nil
}

func (p *lbNFT) name() string { return "nftables" }

// set replaces the table in one transaction.
func (p *lbNFT) set(svcs []lbProgram) error {
	c := p.conn
	if old, err := c.ListTableOfFamily(lbTable, nftables.TableFamilyIPv4); err == nil && old != nil {
		c.DelTable(old)
	}
	t := c.AddTable(&nftables.Table{Name: lbTable, Family: nftables.TableFamilyIPv4, Flags: nftTableFlagOwner})
	chains := []*nftables.Chain{
		c.AddChain(&nftables.Chain{Name: "output", Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest}),
		c.AddChain(&nftables.Chain{Name: "prerouting", Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest}),
	}
	for _, s := range svcs {
		n := len(s.healthy)
		if n == 0 {
			continue // nothing healthy: the VIP answers nothing
		}
		addrs := &nftables.Set{Table: t, Name: fmt.Sprintf("a%d", s.id), IsMap: true, Constant: true,
			KeyType: nftables.TypeInteger, DataType: nftables.TypeIPAddr}
		ports := &nftables.Set{Table: t, Name: fmt.Sprintf("p%d", s.id), IsMap: true, Constant: true,
			KeyType: nftables.TypeInteger, DataType: nftables.TypeInetService}
		var ae, pe []nftables.SetElement
		for k, idx := range s.healthy {
			ap := s.svc.Backends[idx].AddrPort()
			a := ap.Addr().As4()
			key := binaryutil.NativeEndian.PutUint32(uint32(k))
			ae = append(ae, nftables.SetElement{Key: key, Val: a[:]})
			pe = append(pe, nftables.SetElement{Key: key, Val: binaryutil.BigEndian.PutUint16(ap.Port())})
		}
		if err := c.AddSet(addrs, ae); err != nil {
			return err
		}
		if err := c.AddSet(ports, pe); err != nil {
			return err
		}
		vip := s.svc.AddrPort()
		va := vip.Addr().As4()
		match := []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: va[:]},
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{s.svc.ProtoNumber()}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(vip.Port())},
		}
		var pick []expr.Any
		if s.svc.Algorithm == "maglev" {
			// jhash(ip saddr . tcp sport) mod n, in 32-bit registers 8, 9.
			pick = []expr.Any{
				&expr.Payload{DestRegister: 8, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
				&expr.Payload{DestRegister: 9, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
				&expr.Hash{SourceRegister: 8, DestRegister: 1, Length: 8, Modulus: uint32(n), Seed: 0x4f757470, Type: expr.HashTypeJenkins},
			}
		} else {
			pick = []expr.Any{&expr.Numgen{Register: 1, Modulus: uint32(n), Type: unix.NFT_NG_INCREMENTAL}}
		}
		nat := []expr.Any{
			&expr.Lookup{SourceRegister: 1, DestRegister: 2, IsDestRegSet: true, SetName: ports.Name, SetID: ports.ID},
			&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: addrs.Name, SetID: addrs.ID},
			&expr.Counter{},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
		}
		for _, ch := range chains {
			ex := append(append(append([]expr.Any{}, match...), pick...), nat...)
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: ex, UserData: []byte(s.svc.Name)})
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("netpol: load balancer nftables: %w", err)
	}
	return nil
}

// conns is not counted per backend by the nftables plane.
func (p *lbNFT) conns(_ uint32, n int) ([]uint64, uint64, error) {
	return make([]uint64, n), 0, nil
}

func (p *lbNFT) close() error {
	if old, err := p.conn.ListTableOfFamily(lbTable, nftables.TableFamilyIPv4); err == nil && old != nil {
		p.conn.DelTable(old)
		p.conn.Flush()
	}
	return p.conn.CloseLasting()
}
