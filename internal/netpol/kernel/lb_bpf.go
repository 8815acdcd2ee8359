package kernel

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/outpost-edge/outpost/internal/netpol"
)

// lbBPF balances local clients with cgroup/connect4 and getpeername4
// programs attached to one cgroup v2 (every process below it), and remote
// clients with TC programs on named interfaces.
//
// Its maps and links are pinned in bpffs (pinDir): when the agent stops or
// dies, the VIPs keep being balanced over the last healthy set (health
// checks stop with the agent) instead of failing. The next agent re-adopts
// the pinned maps, so flows keep their backends and translations, and
// replaces the programs on the pinned links in place (link update: no
// moment without a program). Where the pinned maps cannot be re-adopted
// (another layout after an upgrade), it attaches fresh programs next to
// the old ones, programs the services, and only then detaches the old
// ones (stale): connects never fail, though flows the old TC programs
// translated lose their state.
type lbBPF struct {
	objs   lbObjects
	links  []link.Link
	keys   map[uint32]lbLbKey // programmed services by id
	inNS   func(func() error) error
	tc     map[string][]link.Link // TC links by interface
	pinDir string                 // "" when bpffs is unusable: nothing pinned
	stale  []link.Link            // a previous agent's links, detached after the first set
	// adopted are the services found in re-adopted maps: removed by the
	// first set unless it programs them again.
	adopted map[lbLbKey]bool
}

// pin pins l as name in pinDir (no-op without a pin directory).
func (p *lbBPF) pin(l link.Link, name string) error {
	if p.pinDir == "" {
		return nil
	}
	return l.Pin(filepath.Join(p.pinDir, name))
}

// socketHooks are the cgroup hooks of the socket plane, by pin name.
var socketHooks = map[string]ebpf.AttachType{
	"connect4":     ebpf.AttachCGroupInet4Connect,
	"getpeername4": ebpf.AttachCgroupInet4GetPeername,
	"sendmsg4":     ebpf.AttachCGroupUDP4Sendmsg,
	"recvmsg4":     ebpf.AttachCGroupUDP4Recvmsg,
}

// pinnedLinks loads the links a previous agent pinned, by name.
func (p *lbBPF) pinnedLinks() map[string]link.Link {
	out := map[string]link.Link{}
	files, _ := os.ReadDir(p.pinDir)
	for _, f := range files {
		if _, sock := socketHooks[f.Name()]; !sock && !strings.HasPrefix(f.Name(), "tc-") {
			continue
		}
		path := filepath.Join(p.pinDir, f.Name())
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			os.Remove(path)
			continue
		}
		out[f.Name()] = l
	}
	return out
}

// load loads the programs, re-adopting a previous agent's pinned maps
// where they fit; it returns the previous agent's links (nil for none).
func (p *lbBPF) load(pinRoot string) (map[string]link.Link, bool, error) {
	if dir := filepath.Join(pinRoot, "lb:socket"); pinRoot != "" && ensureBPFFS(dir) == nil {
		// "lb:socket": ':' is not allowed in interface names, whose XDP
		// pins are pinRoot/<iface>.
		p.pinDir = dir
	}
	if p.pinDir == "" {
		return nil, false, loadLbObjects(&p.objs, nil)
	}
	old := p.pinnedLinks()
	spec, err := loadLb()
	if err != nil {
		return old, false, err
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinByName
	}
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: p.pinDir}}
	if len(old) > 0 && pinnedMapsPresent(spec, p.pinDir) {
		if err := spec.LoadAndAssign(&p.objs, opts); err == nil {
			var k lbLbKey
			var v lbLbSvc
			for it := p.objs.Svcs.Iterate(); it.Next(&k, &v); {
				p.adopted[k] = true
			}
			return old, true, nil
		} else if !errors.Is(err, ebpf.ErrMapIncompatible) {
			return old, false, err
		}
	}
	// Fresh maps: the old ones' pins go (the old programs keep them).
	ents, _ := os.ReadDir(p.pinDir)
	for _, e := range ents {
		if _, isLink := old[e.Name()]; !isLink {
			os.Remove(filepath.Join(p.pinDir, e.Name()))
		}
	}
	return old, false, spec.LoadAndAssign(&p.objs, opts)
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
	if cgroup == "" {
		return nil, fmt.Errorf("%w: no cgroup v2 hierarchy is mounted (socket load balancing attaches to one)", ErrNoBPF)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(cgroup, &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
		return nil, fmt.Errorf("%w: %s is not a cgroup v2 directory", ErrNoBPF, cgroup)
	}
	p := &lbBPF{keys: map[uint32]lbLbKey{}, inNS: inNS, tc: map[string][]link.Link{}, adopted: map[lbLbKey]bool{}}
	old, adopted, err := p.load(pinRoot)
	if err != nil {
		for _, l := range old {
			l.Close()
		}
		return nil, fmt.Errorf("%w: load load-balancer programs: %v", ErrNoBPF, err)
	}
	progs := map[string]*ebpf.Program{"connect4": p.objs.OutpostLbConnect4, "getpeername4": p.objs.OutpostLbGetpeername4,
		"sendmsg4": p.objs.OutpostLbSendmsg4, "recvmsg4": p.objs.OutpostLbRecvmsg4,
		"tc-ingress": p.objs.OutpostLbTcIngress, "tc-egress": p.objs.OutpostLbTcEgress}
	if adopted {
		// Same maps: this agent's programs replace the old ones in place.
		for name, l := range old {
			// Pin names: a socket hook's, or tc-<ingress|egress>-<iface>.
			kind := name
			dir, iface, isTC := strings.Cut(strings.TrimPrefix(name, "tc-"), "-")
			isTC = isTC && strings.HasPrefix(name, "tc-")
			if isTC {
				kind = "tc-" + dir
			}
			if err := l.Update(progs[kind]); err != nil {
				// Cannot replace it: attach fresh below, detach it after.
				l.Unpin()
				p.stale = append(p.stale, l)
				continue
			}
			if isTC {
				p.tc[iface] = append(p.tc[iface], l)
			} else {
				p.links = append(p.links, l)
			}
		}
	} else {
		for _, l := range old {
			l.Unpin()
			p.stale = append(p.stale, l)
		}
	}
	if len(p.links) == len(socketHooks) {
		return p, nil
	}
	for _, l := range p.links { // partly adopted: start over for the socket links
		l.Unpin()
		p.stale = append(p.stale, l)
	}
	p.links = nil
	for _, name := range []string{"connect4", "getpeername4", "sendmsg4", "recvmsg4"} {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroup, Attach: socketHooks[name], Program: progs[name]})
		if err == nil {
			if err = p.pin(l, name); err != nil {
				l.Close()
			}
		}
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
				l.Unpin()
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
	// Services of re-adopted maps this agent does not run any more.
	for k := range p.adopted {
		programmed := false
		for _, pk := range p.keys {
			programmed = programmed || pk == k
		}
		if !programmed {
			if err := p.objs.Svcs.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, err)
			}
		}
	}
	p.adopted = map[lbLbKey]bool{}
	// The services are programmed: the previous agent's links can go.
	for _, l := range p.stale {
		l.Close()
	}
	p.stale = nil
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
			name string
		}{{p.objs.OutpostLbTcIngress, ebpf.AttachTCXIngress, "ingress"}, {p.objs.OutpostLbTcEgress, ebpf.AttachTCXEgress, "egress"}} {
			l, err := link.AttachTCX(link.TCXOptions{Interface: idx, Program: a.prog, Attach: a.at})
			if err != nil {
				return err
			}
			ls = append(ls, l)
			if err := p.pin(l, "tc-"+a.name+"-"+iface); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		for _, l := range ls {
			l.Unpin()
			l.Close()
		}
		return fmt.Errorf("netpol: load balancer: attach TC on %s: %w", iface, err)
	}
	p.tc[iface] = ls
	return nil
}

func (p *lbBPF) setOne(s lbProgram) error {
	vip := s.svc.AddrPort()
	key := lbLbKey{Vip: be32(vip.Addr()), Vport: be16port(vip.Port()), Proto: uint16(s.svc.ProtoNumber())}
	if old, ok := p.keys[s.id]; ok && old != key {
		p.objs.Svcs.Delete(old)
	}
	base := s.id * netpol.MaxLBBackends
	up := make(map[int]bool, len(s.healthy))
	for _, idx := range s.healthy {
		up[idx] = true
	}
	for i, be := range s.svc.Backends {
		ap := be.AddrPort()
		v := lbLbBackend{Ip: be32(ap.Addr()), Port: be16port(ap.Port())}
		if up[i] {
			v.Up = 1 // a socket that had it may keep it
		}
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

// close detaches everything: no service is balanced any more.
func (p *lbBPF) close() error { return p.shut(true) }

// release is the agent stopping: the pinned links keep balancing the
// services over their last healthy backends; this process lets go of them.
func (p *lbBPF) release() error { return p.shut(p.pinDir == "") }

// shut closes this process's handles; detach also unpins the links and
// removes the map pins, so the programs go with the handles.
func (p *lbBPF) shut(detach bool) error {
	var errs []error
	all := append([]link.Link(nil), p.links...)
	for _, ls := range p.tc {
		all = append(all, ls...)
	}
	for _, l := range all {
		if detach && p.pinDir != "" {
			l.Unpin()
		}
		errs = append(errs, l.Close())
	}
	for _, l := range p.stale {
		l.Close()
	}
	p.tc, p.links, p.stale = nil, nil, nil
	errs = append(errs, p.objs.Close())
	if detach && p.pinDir != "" {
		os.RemoveAll(p.pinDir) // the map pins
	}
	return errors.Join(errs...)
}
