package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/outpost-edge/outpost/internal/netpol"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// xdpBackend enforces policies with the XDP program, one program instance
// (and set of maps) per interface.
type xdpBackend struct {
	pinRoot string // bpffs directory for pinned links and maps
	inNS    func(func() error) error
	ifaces  map[string]*xdpIface
}

type xdpIface struct {
	name   string
	objs   policyObjects
	link   link.Link
	pin    bool // pin when attaching (on_agent_stop: closed)
	pinned bool
	gen    uint32
	slots  map[string]uint32 // rule name -> counter slot
	free   []uint32          // unused counter slots
	// reserved slots are counted into by an adopted generation; they are
	// freed after the first switch.
	reserved []uint32
	// held[g] is what generation g of the rules map holds (nil: unknown,
	// after a re-adoption or a failed write): an update writes only the
	// entries of the inactive generation that differ (docs/netpol.md,
	// "Update latency"). keys and vals are the batch's reused buffers.
	held  [2][]policyRule
	held6 [2][]policyRule6
	// trie4 and trie6 hold what generation g of the trie maps holds (nil:
	// unknown, read from the map before the next write).
	trie4 [2]map[policyTrie4Key]policyTrieVal
	trie6 [2]map[policyTrie6Key]policyTrieVal
	// adopted: the link was re-adopted from a pin and still runs the
	// previous agent's program, to be replaced once the policy is written.
	// replaced: the pinned maps could not be re-adopted (another layout: an
	// upgrade, or a pin missing), so fresh maps were loaded; the link moves
	// to them in one program replacement after they hold the policy.
	adopted, replaced bool
	// Buffers reused by every update (10,000 rules: no garbage per update).
	v4     []policyRule
	v6     []policyRule6
	idx4   []int
	idx6   []int
	batch4 batch[policyRule]
	batch6 batch[policyRule6]
	// last, lastC and lastSlot are the last applied rules, compiled, and
	// their counter slots.
	last     []netpol.Rule
	lastC    []netpol.Compiled
	lastSlot []uint32
}

const defaultSlot = 2 * netpol.MaxRules

func newSlots() (map[string]uint32, []uint32) {
	free := make([]uint32, 0, 2*netpol.MaxRules)
	for i := 2*netpol.MaxRules - 1; i >= 0; i-- {
		free = append(free, uint32(i))
	}
	return map[string]uint32{}, free
}

// statNames are the program's STAT_ indexes, in order.
var statNames = []string{"rate_limited", "non_ip", "ipv6", "malformed", "ipv6_nd"}

// ErrNoBPF is returned when the kernel or the process's privileges refuse
// BPF programs; the auto backend then falls back to nftables.
var ErrNoBPF = errors.New("netpol: BPF programs cannot be loaded here")

func newXDPBackend(pinRoot string, inNS func(func() error) error) (*xdpBackend, error) {
	if err := ensureBPFFS(pinRoot); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoBPF, err)
	}
	// Probe: load the collection once (verifier included) and drop it.
	var objs policyObjects
	if err := loadPolicyObjects(&objs, nil); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoBPF, err)
	}
	objs.Close()
	return &xdpBackend{pinRoot: pinRoot, inNS: inNS, ifaces: map[string]*xdpIface{}}, nil
}

// ensureBPFFS mounts bpffs on /sys/fs/bpf if needed and creates dir on it.
func ensureBPFFS(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err == nil && uint32(st.Type) != unix.BPF_FS_MAGIC {
		if err := unix.Mount("bpf", "/sys/fs/bpf", "bpf", 0, ""); err != nil {
			return fmt.Errorf("mount bpffs on /sys/fs/bpf: %w", err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := unix.Statfs(dir, &st); err != nil {
		return err
	}
	if uint32(st.Type) != unix.BPF_FS_MAGIC {
		return fmt.Errorf("%s is not on a bpf filesystem", dir)
	}
	return nil
}

func (b *xdpBackend) Name() string { return "ebpf" }

// Apply installs or updates the policy of one interface atomically. On the
// first Apply after an agent restart it re-adopts a pinned program and maps
// left by the previous run (no window without filtering), else it loads
// and attaches a fresh one.
func (b *xdpBackend) Apply(itf netpol.Interface) error {
	x := b.ifaces[itf.Name]
	first := x == nil
	if first {
		var err error
		if x, err = b.attach(itf); err != nil {
			return err
		}
	}
	err := x.apply(itf)
	if err == nil && first {
		// Write the policy into the other generation too (and switch to
		// it: the same policy). Updates then diff against a generation
		// that holds it, instead of the first one rewriting everything
		// (docs/bench/netpol.md).
		err = x.apply(itf)
	}
	if err != nil {
		switch {
		case x.link == nil:
			x.objs.Close()
			os.RemoveAll(b.pinDir(itf.Name))
		case x.adopted:
			// The pinned program and maps stay in force; the next Apply
			// re-adopts them again.
			x.link.Close()
			x.objs.Close()
		}
		return err
	}
	if x.link == nil {
		if err := b.attachLink(x); err != nil {
			x.objs.Close()
			os.RemoveAll(b.pinDir(itf.Name))
			return err
		}
	}
	if x.adopted {
		// Only now, with the maps holding the policy, does the link run
		// this agent's program: one atomic replacement, no window.
		if err := x.link.Update(x.objs.OutpostPolicy); err != nil {
			x.link.Close()
			x.objs.Close()
			return fmt.Errorf("netpol: %s: replace the pinned program: %w", itf.Name, err)
		}
		x.adopted = false
		if x.replaced {
			// The old maps' pins go (the old program is gone with them);
			// the fresh maps are pinned below if the policy wants it.
			b.unpinMaps(x.name)
			x.replaced, x.pinned = false, false
			if err := x.link.Unpin(); err != nil {
				return fmt.Errorf("netpol: %s: unpin link: %w", x.name, err)
			}
		}
	}
	b.ifaces[itf.Name] = x
	return b.setPinned(x, itf.OnAgentStop == "closed")
}

// unpinMaps removes the map pins of an interface's directory, not its link.
func (b *xdpBackend) unpinMaps(name string) {
	ents, _ := os.ReadDir(b.pinDir(name))
	for _, e := range ents {
		if e.Name() != "link" {
			os.Remove(filepath.Join(b.pinDir(name), e.Name()))
		}
	}
}

// pinnedMapsPresent reports whether every map of spec is pinned in dir:
// re-adopting with PinByName would otherwise create the missing ones empty.
func pinnedMapsPresent(spec *ebpf.CollectionSpec, dir string) bool {
	for name := range spec.Maps {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			return false
		}
	}
	return true
}

// setPinned pins or unpins the link and maps of an attached interface so
// that what happens when the agent stops follows on_agent_stop.
func (b *xdpBackend) setPinned(x *xdpIface, want bool) error {
	x.pin = want
	if x.pinned == want {
		return nil
	}
	dir := b.pinDir(x.name)
	maps := []*ebpf.Map{x.objs.Active, x.objs.Buckets, x.objs.Counters, x.objs.RlPorts, x.objs.Rules, x.objs.Rules6, x.objs.Settings, x.objs.Stats, x.objs.Trie4, x.objs.Trie6}
	if !want {
		if err := x.link.Unpin(); err != nil {
			return fmt.Errorf("netpol: %s: unpin link: %w", x.name, err)
		}
		for _, m := range maps {
			m.Unpin()
		}
		os.RemoveAll(dir)
		x.pinned = false
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, m := range maps {
		info, err := m.Info()
		if err != nil {
			return err
		}
		if err := m.Pin(filepath.Join(dir, info.Name)); err != nil {
			return fmt.Errorf("netpol: %s: pin map %s: %w", x.name, info.Name, err)
		}
	}
	if err := x.link.Pin(filepath.Join(dir, "link")); err != nil {
		return fmt.Errorf("netpol: %s: pin link: %w", x.name, err)
	}
	x.pinned = true
	return nil
}

func (b *xdpBackend) pinDir(name string) string { return filepath.Join(b.pinRoot, name) }

func (b *xdpBackend) attach(itf netpol.Interface) (*xdpIface, error) {
	dir := b.pinDir(itf.Name)
	x := &xdpIface{name: itf.Name}
	x.slots, x.free = newSlots()
	// Re-adopt what a previous run pinned: its program and maps keep the
	// policy in force until the new one is written into the inactive
	// generation; only then is the program replaced (Apply).
	if l, err := link.LoadPinnedLink(filepath.Join(dir, "link"), nil); err == nil {
		spec, err := loadPolicy()
		if err != nil {
			l.Close()
			return nil, err
		}
		if pinnedMapsPresent(spec, dir) {
			for _, m := range spec.Maps {
				m.Pinning = ebpf.PinByName
			}
			opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dir}}
			err = spec.LoadAndAssign(&x.objs, opts)
			if err == nil {
				x.link, x.pinned, x.adopted = l, true, true
				x.reserveAdopted()
				return x, nil
			}
			if !errors.Is(err, ebpf.ErrMapIncompatible) {
				l.Close()
				return nil, fmt.Errorf("netpol: %s: re-adopt pinned maps: %w", itf.Name, err)
			}
		}
		// The pinned maps have another layout (an agent upgrade changed
		// them) or some are missing: load fresh maps, fill them, then move
		// the link to the new program in one replacement. The old program
		// keeps filtering with the old policy until then. Counters restart.
		spec, err = loadPolicy()
		if err != nil {
			l.Close()
			return nil, err
		}
		if err := spec.LoadAndAssign(&x.objs, nil); err != nil {
			l.Close()
			return nil, fmt.Errorf("netpol: %s: load XDP program: %w", itf.Name, err)
		}
		x.link, x.pinned, x.adopted, x.replaced = l, true, true, true
		x.gen = 1
		return x, nil
	}
	// A fresh attach. Maps are pinned (by name, in dir) only when the policy
	// must outlive the agent.
	pin := itf.OnAgentStop == "closed"
	if pin {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
	}
	spec, err := loadPolicy()
	if err != nil {
		return nil, err
	}
	opts := &ebpf.CollectionOptions{}
	if pin {
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinByName
		}
		opts.Maps.PinPath = dir
	}
	if err := spec.LoadAndAssign(&x.objs, opts); err != nil {
		return nil, fmt.Errorf("netpol: %s: load XDP program: %w", itf.Name, err)
	}
	x.gen = 1 // the first apply writes generation 0 and flips to it
	x.pin = pin
	return x, nil
}

// reserveAdopted reads which generation adopted maps have active and keeps
// the counter slots its rules count into out of the free list until the
// first switch.
func (x *xdpIface) reserveAdopted() {
	var g uint32
	if err := x.objs.Active.Lookup(uint32(0), &g); err == nil {
		x.gen = g & 1
	}
	var st policyGenSettings
	if err := x.objs.Settings.Lookup(x.gen, &st); err != nil {
		return
	}
	inUse := map[uint32]bool{}
	var r policyRule
	for i := uint32(0); i < st.Count && i < netpol.MaxRules; i++ {
		if x.objs.Rules.Lookup(x.gen*netpol.MaxRules+i, &r) == nil && r.Kind != kindTrie {
			inUse[r.Counter] = true
		}
	}
	var r6 policyRule6
	for i := uint32(0); i < st.Count6 && i < netpol.MaxRules; i++ {
		if x.objs.Rules6.Lookup(x.gen*netpol.MaxRules+i, &r6) == nil && r6.Kind != kindTrie {
			inUse[r6.Counter] = true
		}
	}
	var k4 policyTrie4Key
	var k6 policyTrie6Key
	var tv policyTrieVal
	for it := x.objs.Trie4.Iterate(); it.Next(&k4, &tv); {
		if k4.Seg>>16 == x.gen {
			inUse[tv.Counter] = true
		}
	}
	for it := x.objs.Trie6.Iterate(); it.Next(&k6, &tv); {
		if k6.Seg>>16 == x.gen {
			inUse[tv.Counter] = true
		}
	}
	free := x.free[:0]
	for _, slot := range x.free {
		if inUse[slot] {
			x.reserved = append(x.reserved, slot)
		} else {
			free = append(free, slot)
		}
	}
	x.free = free
}

// attachLink attaches a freshly loaded program once its maps hold the
// policy: there is no moment with the program attached and empty maps.
func (b *xdpBackend) attachLink(x *xdpIface) error {
	dir := b.pinDir(x.name)
	err := b.inNS(func() error {
		idx, err := ifaceIndex(x.name)
		if err != nil {
			return err
		}
		x.link, err = link.AttachXDP(link.XDPOptions{Program: x.objs.OutpostPolicy, Interface: idx})
		return err
	})
	if err != nil {
		return fmt.Errorf("netpol: %s: attach XDP: %w", x.name, err)
	}
	if x.pin {
		if err := x.link.Pin(filepath.Join(dir, "link")); err != nil {
			x.link.Close()
			x.link = nil
			return fmt.Errorf("netpol: %s: pin link: %w", x.name, err)
		}
		x.pinned = true
	}
	return nil
}

// ipv4Prefix is an IPv4 prefix as the program compares it: address and
// mask in network byte order (the zero Prefix, any, is 0/0).
func ipv4Prefix(p netip.Prefix) (addr, mask uint32) {
	if !p.IsValid() {
		return 0, 0
	}
	b := p.Addr().As4()
	return binary.NativeEndian.Uint32(b[:]), binary.NativeEndian.Uint32(prefixMask(4, p.Bits()))
}

// ipv6Prefix is ipv4Prefix for IPv6: four words in network byte order.
func ipv6Prefix(p netip.Prefix) (addr, mask [4]uint32) {
	if !p.IsValid() {
		return
	}
	b := p.Addr().As16()
	m := prefixMask(16, p.Bits())
	for w := 0; w < 4; w++ {
		addr[w] = binary.NativeEndian.Uint32(b[4*w:])
		mask[w] = binary.NativeEndian.Uint32(m[4*w:])
	}
	return
}

// batch holds the reused key and value buffers of writeDiff.
type batch[T comparable] struct {
	keys []uint32
	vals []T
}

// writeDiff writes want into generation base.. of an array map, skipping
// the entries *known says the map already holds, in one batch update (one
// by one where the kernel has no batch ops on arrays). *known is nil while
// the writes run (unknown if they fail); the caller stores the returned
// slice once the generation is switched to.
func (b *batch[T]) writeDiff(m *ebpf.Map, known *[]T, base uint32, want []T) ([]T, error) {
	held := *known
	*known = nil
	if cap(held) < len(want) {
		held = append(make([]T, 0, len(want)), held...)
	}
	n := len(held)
	held = held[:len(want)]
	keys, vals := b.keys[:0], b.vals[:0]
	defer func() { b.keys, b.vals = keys, vals }()
	for i, v := range want {
		if i < n && held[i] == v {
			continue
		}
		held[i] = v
		keys = append(keys, base+uint32(i))
		vals = append(vals, v)
	}
	if len(keys) == 0 {
		return held, nil
	}
	if _, err := m.BatchUpdate(keys, vals, nil); err != nil {
		for i := range keys {
			if err := m.Put(keys[i], vals[i]); err != nil {
				return nil, fmt.Errorf("write rule %d: %w", keys[i]-base, err)
			}
		}
	}
	return held, nil
}

func (x *xdpIface) apply(itf netpol.Interface) error {
	// A rule equal to the one at its place in the last policy is not
	// compiled again; when every name is where it was, the counter slots
	// are too (no name lookups, nothing to free).
	rules := make([]netpol.Compiled, 0, len(itf.Rules))
	sameNames := len(itf.Rules) == len(x.last)
	for i, r := range itf.Rules {
		if i < len(x.last) && x.last[i] == r {
			rules = append(rules, x.lastC[i])
			continue
		}
		if sameNames && x.last[i].Name != r.Name {
			sameNames = false
		}
		c, err := netpol.Compile(r)
		if err != nil {
			return fmt.Errorf("netpol: %s: rule %s: %w", itf.Name, r.Name, err)
		}
		rules = append(rules, c)
	}
	// Counter slots: a name kept from the running policy keeps its slot; a
	// new name takes a free one, zeroed first. Slots of names that go away
	// are freed only after the switch (packets may still count on them).
	slots := make([]uint32, len(rules))
	var used map[string]uint32
	var fresh []string
	if sameNames {
		copy(slots, x.lastSlot)
	} else {
		zero := make([]policyCounter, ebpf.MustPossibleCPU())
		used = make(map[string]uint32, len(rules))
		for i, c := range rules {
			if slot, ok := x.slots[c.Name]; ok {
				used[c.Name], slots[i] = slot, slot
				continue
			}
			if len(x.free) == 0 {
				return fmt.Errorf("netpol: %s: out of counter slots", itf.Name)
			}
			slot := x.free[len(x.free)-1]
			x.free = x.free[:len(x.free)-1]
			if err := x.objs.Counters.Put(slot, zero); err != nil {
				x.free = append(x.free, slot)
				return fmt.Errorf("netpol: %s: reset counter: %w", itf.Name, err)
			}
			used[c.Name], slots[i] = slot, slot
			x.slots[c.Name] = slot
			fresh = append(fresh, c.Name)
		}
	}
	undo := func() {
		for _, n := range fresh {
			x.free = append(x.free, x.slots[n])
			delete(x.slots, n)
		}
	}
	next := x.gen ^ 1
	base := next * netpol.MaxRules
	// The rules an IPv4 packet can match and those an IPv6 packet can, each
	// in first-match order; a rule that names no family is in both.
	v4, v6 := x.v4[:0], x.v6[:0]
	idx4, idx6 := x.idx4[:0], x.idx6[:0] // v4[k] is rules[idx4[k]]
	for i, c := range rules {
		var action uint8
		if c.Allow {
			action = 1
		}
		if c.Family != netpol.FamilyV6 {
			v := policyRule{SportLo: c.SPortLo, SportHi: c.SPortHi, DportLo: c.DPortLo, DportHi: c.DPortHi,
				Proto: c.Proto, Action: action, Counter: slots[i]}
			v.Src, v.SrcMask = ipv4Prefix(c.Src)
			v.Dst, v.DstMask = ipv4Prefix(c.Dst)
			v4 = append(v4, v)
			idx4 = append(idx4, i)
		}
		if c.Family != netpol.FamilyV4 {
			v := policyRule6{SportLo: c.SPortLo, SportHi: c.SPortHi, DportLo: c.DPortLo, DportHi: c.DPortHi,
				Proto: c.Proto, Action: action, Counter: slots[i]}
			v.Src, v.SrcMask = ipv6Prefix(c.Src)
			v.Dst, v.DstMask = ipv6Prefix(c.Dst)
			v6 = append(v6, v)
			idx6 = append(idx6, i)
		}
	}
	// Diff against what the inactive generation holds (the policy before
	// the running one): only changed entries are written, in one batch.
	x.v4, x.v6, x.idx4, x.idx6 = v4, v6, idx4, idx6
	// Runs of source-only rules become one trie lookup each (trie.go).
	seg := func(k int) uint32 { return segID(next, k) }
	list4, runs4 := compressRuns(v4, idx4, rules, slots, func(seg uint32) policyRule { return policyRule{Kind: kindTrie, Counter: seg} }, seg)
	list6, runs6 := compressRuns(v6, idx6, rules, slots, func(seg uint32) policyRule6 { return policyRule6{Kind: kindTrie, Counter: seg} }, seg)
	want4, want6 := trieEntries(next, runs4, trie4Key), trieEntries(next, runs6, trie6Key)
	held4, heldT6 := x.trie4[next], x.trie6[next]
	x.trie4[next], x.trie6[next] = nil, nil // unknown until the writes succeed
	if err := syncTrie(x.objs.Trie4, next, held4, want4, func(k policyTrie4Key) uint32 { return k.Seg >> 16 }); err != nil {
		undo()
		return fmt.Errorf("netpol: %s: IPv4 networks: %w", itf.Name, err)
	}
	if err := syncTrie(x.objs.Trie6, next, heldT6, want6, func(k policyTrie6Key) uint32 { return k.Seg >> 16 }); err != nil {
		undo()
		return fmt.Errorf("netpol: %s: IPv6 networks: %w", itf.Name, err)
	}
	held, err := x.batch4.writeDiff(x.objs.Rules, &x.held[next], base, list4)
	if err != nil {
		undo()
		return fmt.Errorf("netpol: %s: IPv4 rules: %w", itf.Name, err)
	}
	held6, err := x.batch6.writeDiff(x.objs.Rules6, &x.held6[next], base, list6)
	if err != nil {
		undo()
		return fmt.Errorf("netpol: %s: IPv6 rules: %w", itf.Name, err)
	}
	// Rate-limited ports of the next generation.
	var stale []uint32
	var k uint32
	var v uint8
	for it := x.objs.RlPorts.Iterate(); it.Next(&k, &v); {
		if k>>16 == next {
			stale = append(stale, k)
		}
	}
	for _, k := range stale {
		x.objs.RlPorts.Delete(k)
	}
	s := policyGenSettings{Count: uint32(len(list4)), Count6: uint32(len(list6))}
	if itf.Default == "allow" {
		s.DefaultAction = 1
	}
	if rl := itf.RateLimit; rl != nil {
		s.RlRate, s.RlBurst = uint32(rl.PPS), uint32(rl.Burst)
		for _, p := range rl.Ports {
			if err := x.objs.RlPorts.Put(next<<16|uint32(p), uint8(1)); err != nil {
				undo()
				return fmt.Errorf("netpol: %s: rate-limited port %d: %w", itf.Name, p, err)
			}
		}
	}
	if err := x.objs.Settings.Put(next, s); err != nil {
		undo()
		return fmt.Errorf("netpol: %s: settings: %w", itf.Name, err)
	}
	// The switch: from here on every packet sees the whole new policy.
	if err := x.objs.Active.Put(uint32(0), next); err != nil {
		undo()
		return fmt.Errorf("netpol: %s: switch generation: %w", itf.Name, err)
	}
	x.gen = next
	x.held[next], x.held6[next] = held, held6
	x.trie4[next], x.trie6[next] = want4, want6
	x.free = append(x.free, x.reserved...)
	x.reserved = nil
	if !sameNames {
		for n, slot := range x.slots {
			if _, ok := used[n]; !ok {
				delete(x.slots, n)
				x.free = append(x.free, slot)
			}
		}
	}
	x.last = append(x.last[:0], itf.Rules...)
	x.lastC, x.lastSlot = rules, slots
	return nil
}

// read sums the per-CPU counters of every current rule and the default.
func (x *xdpIface) read() (map[string]netpol.Counter, error) {
	out := make(map[string]netpol.Counter, len(x.slots)+1)
	sum := func(slot uint32) (netpol.Counter, error) { return sumPerCPU(x.objs.Counters, slot) }
	for n, slot := range x.slots {
		c, err := sum(slot)
		if err != nil {
			return nil, err
		}
		out[n] = c
	}
	c, err := sum(defaultSlot)
	if err != nil {
		return nil, err
	}
	out["default"] = c
	return out, nil
}

func (b *xdpBackend) Stats(name string) (netpol.Stats, error) {
	x := b.ifaces[name]
	if x == nil {
		return netpol.Stats{}, fmt.Errorf("netpol: no policy on %q", name)
	}
	cur, err := x.read()
	if err != nil {
		return netpol.Stats{}, err
	}
	st := netpol.Stats{Rules: cur, Global: map[string]netpol.Counter{}}
	for i, n := range statNames {
		c, err := sumPerCPU(x.objs.Stats, uint32(i))
		if err != nil {
			return netpol.Stats{}, err
		}
		st.Global[n] = c
	}
	return st, nil
}

// Remove detaches one interface's program and deletes its pins.
func (b *xdpBackend) Remove(name string) error {
	x := b.ifaces[name]
	if x == nil {
		return nil
	}
	delete(b.ifaces, name)
	if x.pinned {
		x.link.Unpin()
	}
	err := x.link.Close()
	x.objs.Close()
	os.RemoveAll(b.pinDir(name))
	return err
}

// Close releases the agent's handles. Pinned interfaces (on_agent_stop:
// closed) keep filtering with the last policy; the others are detached.
func (b *xdpBackend) Close() error {
	var errs []error
	for name, x := range b.ifaces {
		if !x.pinned {
			errs = append(errs, b.Remove(name))
			continue
		}
		errs = append(errs, x.link.Close()) // the pin keeps it attached
		x.objs.Close()
	}
	b.ifaces = map[string]*xdpIface{}
	return errors.Join(errs...)
}

// ifaceIndex finds an interface in the current network namespace.
func ifaceIndex(name string) (int, error) {
	itf, err := net.InterfaceByName(name)
	if err != nil {
		return 0, fmt.Errorf("netpol: interface %q: %w", name, err)
	}
	return itf.Index, nil
}

// sumPerCPU adds up the per-CPU packet and byte counts at key of a
// per-CPU counter map.
func sumPerCPU(m *ebpf.Map, key uint32) (netpol.Counter, error) {
	var per []policyCounter
	var c netpol.Counter
	if err := m.Lookup(key, &per); err != nil {
		return c, err
	}
	for _, p := range per {
		c.Add(netpol.Counter{Packets: p.Packets, Bytes: p.Bytes})
	}
	return c, nil
}
