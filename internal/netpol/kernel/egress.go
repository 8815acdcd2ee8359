package kernel

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/outpost-edge/outpost/internal/netpol"
)

// Egress limits where supervised components may connect: the programs of
// bpf/egress.c attached to one cgroup2 group per component. The groups
// live in a cgroup2 hierarchy of their own (no controllers: it only
// carries the BPF programs), so this works also where the supervisor's
// resource limits use cgroup v1 (the hybrid layout): a component's
// process is in its v1 groups for limits and in its egress group here.
//
// The maps and every component's program links are pinned in bpffs
// (pinDir): if the agent dies, the components it started stay under their
// allow lists instead of running unrestricted until the next agent stops
// them (the supervisor re-adopts no process: it stops leftovers, then
// starts components). The next OpenEgress, which runs once the leftovers
// are stopped, detaches and removes what is pinned and starts afresh.
type Egress struct {
	root    string // the directory under the cgroup2 mount holding the groups
	mounted string // the cgroup2 mount OpenEgress made, unmounted by Close
	pinDir  string // bpffs directory of the pinned maps and links
	log     *slog.Logger

	mu     sync.Mutex
	objs   egressObjects
	comps  map[string]*egressComp
	byIdx  map[uint32]string
	free   []uint32
	logged map[egressEgressDeniedKey]bool
}

type egressComp struct {
	idx   uint32
	dir   string
	fd    *os.File
	links []link.Link
	allow []netpol.EgressAllow
	// foreign: dir is the supervisor's group, not removed by Egress
	foreign bool
}

const maxEgressComponents = 256

// DefaultEgressCgroup is where Egress mounts its cgroup2 hierarchy when
// the host has none.
const DefaultEgressCgroup = "/run/outpost/cgroup2"

// OpenEgress loads the egress programs and prepares the group directory
// root/outpost-egress, mounting cgroup2 on root first when root is not a
// cgroup2 mount already (an existing one, /sys/fs/cgroup/unified on a
// hybrid host, is used as it is: a host has one cgroup2 hierarchy). It
// fails with ErrNoBPF when the kernel refuses the programs. What a previous
// agent pinned for root is detached and removed first: call it once that
// agent's leftover processes are stopped.
func OpenEgress(root string, log *slog.Logger) (*Egress, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if root == "" {
		root = DefaultEgressCgroup
	}
	mounted, err := ensureCgroup2(root)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoBPF, err)
	}
	dir := filepath.Join(root, "outpost-egress")
	e := &Egress{root: dir, pinDir: egressPinDir(root), log: log.With("module", "netpol", "part", "egress"),
		comps: map[string]*egressComp{}, byIdx: map[uint32]string{}, logged: map[egressEgressDeniedKey]bool{}}
	if mounted {
		e.mounted = root
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		e.unmount()
		return nil, fmt.Errorf("netpol: egress: %w", err)
	}
	if err := ensureBPFFS(e.pinDir); err != nil {
		e.unmount()
		return nil, fmt.Errorf("%w: %v", ErrNoBPF, err)
	}
	if n := e.clearPins(); n > 0 {
		e.log.Info("detached the egress programs a previous agent left pinned", "links", n)
	}
	spec, err := loadEgress()
	if err != nil {
		e.unmount()
		return nil, fmt.Errorf("%w: load egress programs: %v", ErrNoBPF, err)
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinByName
	}
	if err := spec.LoadAndAssign(&e.objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: e.pinDir}}); err != nil {
		e.unmount()
		return nil, fmt.Errorf("%w: load egress programs: %v", ErrNoBPF, err)
	}
	for i := maxEgressComponents - 1; i >= 0; i-- {
		e.free = append(e.free, uint32(i))
	}
	return e, nil
}

// egressPinDir is where the egress maps and links of the groups under root
// are pinned: one directory per cgroup root, so agents (and tests) with
// different roots never touch each other's pins.
func egressPinDir(root string) string {
	// ':' is not allowed in interface names, whose XDP pins are
	// /sys/fs/bpf/outpost/<iface>.
	if root == DefaultEgressCgroup {
		return "/sys/fs/bpf/outpost/egress:cgroups"
	}
	h := sha256.Sum256([]byte(filepath.Clean(root)))
	return "/sys/fs/bpf/outpost/egress:" + hex.EncodeToString(h[:6])
}

// clearPins detaches the links and removes the map pins a previous run
// left in pinDir; it returns how many links it detached.
func (e *Egress) clearPins() int {
	n := 0
	links, _ := filepath.Glob(filepath.Join(e.pinDir, "links", "*", "*"))
	for _, p := range links {
		if l, err := link.LoadPinnedLink(p, nil); err == nil {
			l.Unpin()
			l.Close()
			n++
		}
		os.Remove(p)
	}
	comps, _ := filepath.Glob(filepath.Join(e.pinDir, "links", "*"))
	for _, c := range comps {
		os.Remove(c)
	}
	ents, _ := os.ReadDir(e.pinDir)
	for _, ent := range ents {
		if ent.Name() != "links" {
			os.Remove(filepath.Join(e.pinDir, ent.Name()))
		}
	}
	return n
}

// ensureCgroup2 mounts cgroup2 on root unless it is a cgroup2 mount
// already; it reports whether it mounted.
func ensureCgroup2(root string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
		return false, nil
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return false, err
	}
	if err := unix.Mount("cgroup2", root, "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return false, fmt.Errorf("mount cgroup2 on %s: %w", root, err)
	}
	return true, nil
}

// unmount removes the group directory and the mount OpenEgress made.
func (e *Egress) unmount() {
	os.Remove(e.root)
	if e.mounted != "" {
		unix.Unmount(e.mounted, unix.MNT_DETACH)
		e.mounted = ""
	}
}

// Set installs (or replaces) a component's allow list and returns its
// group's directory descriptor: start the component's processes in it
// (syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(fd.Fd())}). The
// descriptor stays owned by Egress. dir is the component's own cgroup2
// group when the supervisor has one (cgroup v2 hosts): the programs are
// attached there and Set returns nil; "" makes a group in Egress's
// hierarchy. A replaced list takes effect for the next connect; open
// connections are not touched.
func (e *Egress) Set(component, dir string, allow []netpol.EgressAllow) (*os.File, error) {
	if len(allow) > netpol.MaxEgress {
		return nil, fmt.Errorf("netpol: egress %s: %d entries; at most %d", component, len(allow), netpol.MaxEgress)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	c := e.comps[component]
	if c == nil {
		if len(e.free) == 0 {
			return nil, fmt.Errorf("netpol: egress %s: more than %d components", component, maxEgressComponents)
		}
		var err error
		if c, err = e.attach(component, dir); err != nil {
			return nil, err
		}
	}
	// Write the entries first, then the count: a shorter list never reads
	// stale entries, a longer one only once they are written.
	for i, a := range allow {
		v := toAllow(a)
		if err := e.objs.Allow.Put(c.idx*netpol.MaxEgress+uint32(i), v); err != nil {
			return nil, fmt.Errorf("netpol: egress %s: entry %d: %w", component, i, err)
		}
	}
	if err := e.objs.ComponentSettings.Put(c.idx, egressEgressComponent{Count: uint32(len(allow))}); err != nil {
		return nil, fmt.Errorf("netpol: egress %s: %w", component, err)
	}
	c.allow = append([]netpol.EgressAllow(nil), allow...)
	if c.foreign {
		return nil, nil
	}
	return c.fd, nil
}

func (e *Egress) attach(component, dir string) (*egressComp, error) {
	foreign := dir != ""
	if !foreign {
		dir = filepath.Join(e.root, component)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("netpol: egress %s: %w", component, err)
		}
	}
	fd, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("netpol: egress %s: %w", component, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(fd.Fd()), &st); err != nil {
		fd.Close()
		return nil, fmt.Errorf("netpol: egress %s: %w", component, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		fd.Close()
		return nil, fmt.Errorf("netpol: egress %s: %s is not a cgroup directory", component, dir)
	}
	c := &egressComp{idx: e.free[len(e.free)-1], dir: dir, fd: fd, foreign: foreign}
	// Count 0 (refuse everything) until Set writes the list: a process
	// started in the group before that is never unrestricted.
	if err := e.objs.ComponentSettings.Put(c.idx, egressEgressComponent{}); err != nil {
		fd.Close()
		return nil, fmt.Errorf("netpol: egress %s: %w", component, err)
	}
	// The cgroup id of a cgroup2 directory is its inode number.
	if err := e.objs.Components.Put(uint64(st.Ino), c.idx); err != nil {
		fd.Close()
		return nil, fmt.Errorf("netpol: egress %s: %w", component, err)
	}
	zero := make([]uint64, ebpf.MustPossibleCPU())
	e.objs.Verdicts.Put(2*c.idx, zero)
	e.objs.Verdicts.Put(2*c.idx+1, zero)
	for _, p := range []struct {
		prog *ebpf.Program
		typ  ebpf.AttachType
	}{
		{e.objs.OutpostConnect4, ebpf.AttachCGroupInet4Connect},
		{e.objs.OutpostConnect6, ebpf.AttachCGroupInet6Connect},
		{e.objs.OutpostSendmsg4, ebpf.AttachCGroupUDP4Sendmsg},
		{e.objs.OutpostSendmsg6, ebpf.AttachCGroupUDP6Sendmsg},
	} {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: dir, Attach: p.typ, Program: p.prog})
		if err == nil {
			// Pinned: the programs stay attached if the agent dies.
			pin := filepath.Join(e.pinDir, "links", component, strconv.Itoa(len(c.links)))
			if err = os.MkdirAll(filepath.Dir(pin), 0o700); err == nil {
				if err = l.Pin(pin); err != nil {
					l.Close()
				}
			} else {
				l.Close()
			}
		}
		if err != nil {
			for _, l := range c.links {
				l.Unpin()
				l.Close()
			}
			os.RemoveAll(filepath.Join(e.pinDir, "links", component))
			e.objs.Components.Delete(uint64(st.Ino))
			fd.Close()
			return nil, fmt.Errorf("%w: egress %s: attach %v: %v", ErrNoBPF, component, p.typ, err)
		}
		c.links = append(c.links, l)
	}
	e.free = e.free[:len(e.free)-1]
	e.comps[component] = c
	e.byIdx[c.idx] = component
	return c, nil
}

func toAllow(a netpol.EgressAllow) egressEgressAllow {
	var v egressEgressAllow
	addr := a.Prefix.Addr()
	bits := a.Prefix.Bits()
	var ab, mb [16]byte
	n := 4
	if addr.Is4() {
		b := addr.As4()
		copy(ab[:], b[:])
		v.Family = 4
	} else {
		ab = addr.As16()
		n = 16
		v.Family = 6
	}
	copy(mb[:], prefixMask(n, min(bits, n*8)))
	for i := range 4 {
		v.Addr[i] = binary.NativeEndian.Uint32(ab[4*i:])
		v.Mask[i] = binary.NativeEndian.Uint32(mb[4*i:])
	}
	v.PortLo, v.PortHi, v.Proto = a.PortLo, a.PortHi, a.Proto
	return v
}

// Remove detaches a component's programs and deletes its group (which
// must have no processes left; a group still in use is kept and reported).
func (e *Egress) Remove(component string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	c := e.comps[component]
	if c == nil {
		return nil
	}
	return e.remove(component, c)
}

func (e *Egress) remove(component string, c *egressComp) error {
	var errs []error
	for _, l := range c.links {
		errs = append(errs, l.Unpin(), l.Close())
	}
	os.RemoveAll(filepath.Join(e.pinDir, "links", component))
	var st unix.Stat_t
	if unix.Fstat(int(c.fd.Fd()), &st) == nil {
		e.objs.Components.Delete(uint64(st.Ino))
	}
	c.fd.Close()
	if !c.foreign { // the supervisor removes its own groups
		if err := os.Remove(c.dir); err != nil {
			errs = append(errs, fmt.Errorf("netpol: egress %s: remove group: %w", component, err))
		}
	}
	var k egressEgressDeniedKey
	var stale []egressEgressDeniedKey
	var v uint64
	for it := e.objs.Denied.Iterate(); it.Next(&k, &v); {
		if k.Component == c.idx {
			stale = append(stale, k)
		}
	}
	for _, k := range stale {
		e.objs.Denied.Delete(k)
		delete(e.logged, k)
	}
	delete(e.comps, component)
	delete(e.byIdx, c.idx)
	e.free = append(e.free, c.idx)
	return errors.Join(errs...)
}

// Status returns every component's counters and logs each refused
// destination the first time it is seen (once per component and
// destination, however often it is refused). Call it periodically (the
// agent does, every few seconds) so that refusals are logged promptly.
func (e *Egress) Status() (map[string]netpol.EgressStatus, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make(map[string]netpol.EgressStatus, len(e.comps))
	for name, c := range e.comps {
		d, err := sumU64(e.objs.Verdicts, 2*c.idx)
		if err != nil {
			return nil, err
		}
		a, err := sumU64(e.objs.Verdicts, 2*c.idx+1)
		if err != nil {
			return nil, err
		}
		out[name] = netpol.EgressStatus{Allowed: a, Denied: d}
	}
	var k egressEgressDeniedKey
	var v uint64
	type hit struct {
		k egressEgressDeniedKey
		n uint64
	}
	var fresh []hit
	for it := e.objs.Denied.Iterate(); it.Next(&k, &v); {
		name, ok := e.byIdx[k.Component]
		if !ok {
			continue
		}
		st := out[name]
		if st.Destinations == nil {
			st.Destinations = map[string]uint64{}
		}
		st.Destinations[deniedDest(k)] = v
		out[name] = st
		if !e.logged[k] {
			fresh = append(fresh, hit{k, v})
		}
	}
	sort.Slice(fresh, func(i, j int) bool { return deniedDest(fresh[i].k) < deniedDest(fresh[j].k) })
	for _, h := range fresh {
		e.logged[h.k] = true
		e.log.Warn("egress refused: destination not in the component's recipe egress list",
			"component", e.byIdx[h.k.Component], "destination", deniedDest(h.k))
	}
	return out, nil
}

func deniedDest(k egressEgressDeniedKey) string {
	var a netip.Addr
	if k.Family == 4 {
		var b [4]byte
		binary.NativeEndian.PutUint32(b[:], k.Addr[0])
		a = netip.AddrFrom4(b)
	} else {
		var b [16]byte
		for i := range 4 {
			binary.NativeEndian.PutUint32(b[4*i:], k.Addr[i])
		}
		a = netip.AddrFrom16(b)
	}
	proto := "ip" + strconv.Itoa(int(k.Proto))
	switch k.Proto {
	case 6:
		proto = "tcp"
	case 17:
		proto = "udp"
	case 0:
		proto = "other"
	}
	return netip.AddrPortFrom(a, k.Port).String() + "/" + proto
}

func sumU64(m *ebpf.Map, key uint32) (uint64, error) {
	var per []uint64
	if err := m.Lookup(key, &per); err != nil {
		return 0, err
	}
	var s uint64
	for _, v := range per {
		s += v
	}
	return s, nil
}

// Close detaches every program, removes the groups and the pins. The
// supervisor stops the components first; a process still in a group when
// the agent stops cleanly loses its egress limits (when the agent dies
// instead, the pins keep them).
func (e *Egress) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	var errs []error
	for name, c := range e.comps {
		errs = append(errs, e.remove(name, c))
	}
	os.RemoveAll(e.pinDir) // the map pins (remove unpinned the links)
	e.objs.Close()
	e.unmount()
	return errors.Join(errs...)
}
