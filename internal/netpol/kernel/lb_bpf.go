package kernel

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/outpost-edge/outpost/internal/netpol"
)

// lbBPF balances local clients with cgroup/connect4 and getpeername4
// programs attached to one cgroup v2 (every process below it).
type lbBPF struct {
	objs  lbObjects
	links []link.Link
	keys  map[uint32]lbLbKey // programmed services by id
	inNS  func(func() error) error
	tc    map[string][]link.Link // TC links by interface
}

// lbCgroup is where the socket programs attach: Options.LBCgroup, else
// the first cgroup2 mount (the root of the unified hierarchy).
func (m *Manager) lbCgroup() string {
	if m.opts.LBCgroup != "" {
		return m.opts.LBCgroup
	}
	return cgroup2Mount()
}

func cgroup2Mount() string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ... mountpoint ... - fstype source options
		l := sc.Text()
		i := strings.Index(l, " - ")
		if i < 0 {
			continue
		}
		rest := strings.Fields(l[i+3:])
		fs := strings.Fields(l[:i])
		if len(rest) > 0 && rest[0] == "cgroup2" && len(fs) > 4 {
			return fs[4]
		}
	}
	return ""
}

func newLBBPF(pinRoot, cgroup string, inNS func(func() error) error) (*lbBPF, error) {
	_ = pinRoot // the socket programs are not pinned: balancing stops with the agent
	if cgroup == "" {
		return nil, fmt.Errorf("%w: no cgroup v2 hierarchy is mounted (socket load balancing attaches to one)", ErrNoBPF)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(cgroup, &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
		return nil, fmt.Errorf("%w: %s is not a cgroup v2 directory", ErrNoBPF, cgroup)
	}
	p := &lbBPF{keys: map[uint32]lbLbKey{}, inNS: inNS, tc: map[string][]link.Link{}}
	if err := loadLbObjects(&p.objs, nil); err != nil {
		return nil, fmt.Errorf("%w: load load-balancer programs: %v", ErrNoBPF, err)
	}
	for _, a := range []struct {
		prog *ebpf.Program
		at   ebpf.AttachType
	}{{p.objs.OutpostLbConnect4, ebpf.AttachCGroupInet4Connect}, {p.objs.OutpostLbGetpeername4, ebpf.AttachCgroupInet4GetPeername}} {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroup, Attach: a.at, Program: a.prog})
		if err != nil {
			p.close()
			return nil, fmt.Errorf("%w: attach to cgroup %s: %v", ErrNoBPF, cgroup, err)
		}
		p.links = append(p.links, l)
	}
	return p, nil
}

func (p *lbBPF) name() string { return "ebpf" }

func (p *lbBPF) set(svcs []lbProgram) error {
	want := map[uint32]bool{}
	var errs []error
	ifs := map[string]bool{}
	for _, s := range svcs {
		if s.svc.Interface != "" {
			ifs[s.svc.Interface] = true
		}
	}
	for name := range ifs {
		if _, ok := p.tc[name]; ok {
			continue
		}
		if err := p.attachTC(name); err != nil {
			errs = append(errs, err)
		}
	}
	for name, ls := range p.tc {
		if !ifs[name] {
			for _, l := range ls {
				l.Close()
			}
			delete(p.tc, name)
		}
	}
	for _, s := range svcs {
		want[s.id] = true
		if err := p.setOne(s); err != nil {
			errs = append(errs, fmt.Errorf("netpol: load balancer %s: %w", s.svc.Name, err))
		}
	}
	for id, k := range p.keys {
		if !want[id] {
			if err := p.objs.Svcs.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, err)
			}
			delete(p.keys, id)
		}
	}
	return errors.Join(errs...)
}

// attachTC attaches the remote-client DNAT/SNAT programs to iface (TCX).
func (p *lbBPF) attachTC(iface string) error {
	var ls []link.Link
	err := p.inNS(func() error {
		idx, err := ifaceIndex(iface)
		if err != nil {
			return err
		}
		for _, a := range []struct {
			prog *ebpf.Program
			at   ebpf.AttachType
		}{{p.objs.OutpostLbTcIngress, ebpf.AttachTCXIngress}, {p.objs.OutpostLbTcEgress, ebpf.AttachTCXEgress}} {
			l, err := link.AttachTCX(link.TCXOptions{Interface: idx, Program: a.prog, Attach: a.at})
			if err != nil {
				return err
			}
			ls = append(ls, l)
		}
		return nil
	})
	if err != nil {
		for _, l := range ls {
			l.Close()
		}
		return fmt.Errorf("netpol: load balancer: attach TC on %s: %w", iface, err)
	}
	p.tc[iface] = ls
	return nil
}

func (p *lbBPF) setOne(s lbProgram) error {
	vip := s.svc.AddrPort()
	key := lbLbKey{Vip: be32(vip.Addr()), Vport: be16port(vip.Port()), Proto: unix.IPPROTO_TCP}
	if old, ok := p.keys[s.id]; ok && old != key {
		p.objs.Svcs.Delete(old)
	}
	base := s.id * netpol.MaxLBBackends
	for i, be := range s.svc.Backends {
		ap := be.AddrPort()
		v := lbLbBackend{Ip: be32(ap.Addr()), Port: be16port(ap.Port())}
		if err := p.objs.Backends.Put(base+uint32(i), v); err != nil {
			return err
		}
	}
	n := uint32(len(s.healthy))
	var cur lbLbSvc
	shrinking := p.objs.Svcs.Lookup(key, &cur) == nil && n < cur.Count
	algo := uint32(0)
	if s.svc.Algorithm == "maglev" {
		algo = 1
	}
	svc := lbLbSvc{Id: s.id, Count: n, Algo: algo}
	// When the set shrinks, the count goes first so no connect picks a
	// slot past the end; when it grows, the slots are filled first.
	if shrinking {
		if err := p.objs.Svcs.Put(key, svc); err != nil {
			return err
		}
	}
	for k, idx := range s.healthy {
		if err := p.objs.Active.Put(base+uint32(k), uint32(idx)); err != nil {
			return err
		}
	}
	if algo == 1 && n > 0 {
		names := make([]string, n)
		for k, idx := range s.healthy {
			names[k] = s.svc.Backends[idx].Address
		}
		tab := netpol.Maglev(names, netpol.MaglevSize)
		keys := make([]uint32, len(tab))
		vals := make([]uint32, len(tab))
		for j, k := range tab {
			keys[j] = s.id*netpol.MaglevSize + uint32(j)
			vals[j] = uint32(s.healthy[k])
		}
		if _, err := p.objs.Maglev.BatchUpdate(keys, vals, nil); err != nil {
			for j := range keys {
				if err := p.objs.Maglev.Put(keys[j], vals[j]); err != nil {
					return err
				}
			}
		}
	}
	if err := p.objs.Svcs.Put(key, svc); err != nil {
		return err
	}
	p.keys[s.id] = key
	return nil
}

func (p *lbBPF) conns(id uint32, n int) ([]uint64, uint64, error) {
	out := make([]uint64, n)
	for i := range out {
		c, err := sumU64(p.objs.Conns, id*netpol.MaxLBBackends+uint32(i))
		if err != nil {
			return nil, 0, err
		}
		out[i] = c
	}
	nb, err := sumU64(p.objs.Nobackend, id)
	return out, nb, err
}

func (p *lbBPF) close() error {
	var errs []error
	for _, l := range p.links {
		errs = append(errs, l.Close())
	}
	for _, ls := range p.tc {
		for _, l := range ls {
			errs = append(errs, l.Close())
		}
	}
	p.tc = nil
	p.links = nil
	errs = append(errs, p.objs.Close())
	return errors.Join(errs...)
}
