package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/outpost-edge/outpost/internal/netpol"
)

// minTrieRun is the shortest run of source-only rules the XDP backend
// turns into one longest-prefix lookup; shorter runs stay plain rules
// (their comparisons cost less than a trie walk).
const minTrieRun = 8

const kindTrie = 1

// srcOnly reports whether a rule matches on its source network alone: a
// block or allow list of networks is a run of such rules.
func srcOnly(c netpol.Compiled) bool {
	return c.Src.IsValid() && !c.Dst.IsValid() && c.Proto == 0 &&
		c.SPortLo == 0 && c.SPortHi == 65535 && c.DPortLo == 0 && c.DPortHi == 65535
}

// runRule is one rule of a source-only run, in policy order.
type runRule struct {
	src   netip.Prefix
	allow bool
	slot  uint32 // counter slot
}

// firstMatch gives, for each distinct network of a run, the earliest rule
// of the run whose network contains it. A packet's longest matching
// network P then names its first matching rule: every network of the run
// that contains the packet's address contains P or is P, and they were all
// considered for P. Sorting by address then length puts each network after
// all of its supernets, so one pass with a stack of the current supernets
// does it in O(n log n).
func firstMatch(run []runRule) map[netip.Prefix]runRule {
	first := make(map[netip.Prefix]int, len(run))
	nets := make([]netip.Prefix, 0, len(run))
	for i, r := range run {
		if _, ok := first[r.src]; !ok {
			first[r.src] = i
			nets = append(nets, r.src)
		}
	}
	slices.SortFunc(nets, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	type open struct {
		net  netip.Prefix
		best int
	}
	var stack []open
	out := make(map[netip.Prefix]runRule, len(nets))
	for _, p := range nets {
		for len(stack) > 0 && !(stack[len(stack)-1].net.Bits() <= p.Bits() && stack[len(stack)-1].net.Contains(p.Addr())) {
			stack = stack[:len(stack)-1]
		}
		best := first[p]
		if len(stack) > 0 {
			best = min(best, stack[len(stack)-1].best)
		}
		stack = append(stack, open{p, best})
		out[p] = run[best]
	}
	return out
}

// compressRuns replaces each run of at least minTrieRun source-only rules
// in a list (IPv4 or IPv6) by one trie entry for segment seg(k), k counting
// the runs; it returns the new list and the runs' networks. list[i] is
// rules[idx[i]], with counter slot slots[idx[i]]. Without a run, list is
// returned as it is.
func compressRuns[T any](list []T, idx []int, rules []netpol.Compiled, slots []uint32, trieEntry func(seg uint32) T, seg func(k int) uint32) ([]T, []map[netip.Prefix]runRule) {
	var out []T
	var runs []map[netip.Prefix]runRule
	done := 0 // list[:done] is in out (once out is used)
	for i := 0; i < len(list); {
		j := i
		for j < len(list) && srcOnly(rules[idx[j]]) {
			j++
		}
		if j-i < minTrieRun {
			i = max(j, i+1)
			continue
		}
		run := make([]runRule, 0, j-i)
		for k := i; k < j; k++ {
			c := rules[idx[k]]
			run = append(run, runRule{c.Src, c.Allow, slots[idx[k]]})
		}
		out = append(out, list[done:i]...)
		out = append(out, trieEntry(seg(len(runs))))
		runs = append(runs, firstMatch(run))
		done, i = j, j
	}
	if runs == nil {
		return list, nil
	}
	return append(out, list[done:]...), runs
}

// segID is a run's id in the trie keys: the generation in the high bits,
// so both generations' runs live in one trie.
func segID(gen uint32, k int) uint32 { return gen<<16 | uint32(k) }

func trieValue(r runRule) policyTrieVal {
	v := policyTrieVal{Counter: r.slot}
	if r.allow {
		v.Action = 1
	}
	return v
}

// trieEntries is a generation's trie content: every network of every run,
// under the key key gives it in the run's segment.
func trieEntries[K comparable](gen uint32, runs []map[netip.Prefix]runRule, key func(p netip.Prefix, seg uint32) K) map[K]policyTrieVal {
	out := map[K]policyTrieVal{}
	for k, run := range runs {
		for p, r := range run {
			out[key(p, segID(gen, k))] = trieValue(r)
		}
	}
	return out
}

func trie4Key(p netip.Prefix, seg uint32) policyTrie4Key {
	a := p.Addr().As4()
	return policyTrie4Key{Prefixlen: uint32(32 + p.Bits()), Seg: seg, Addr: binary.NativeEndian.Uint32(a[:])}
}

func trie6Key(p netip.Prefix, seg uint32) policyTrie6Key {
	a := p.Addr().As16()
	key := policyTrie6Key{Prefixlen: uint32(32 + p.Bits()), Seg: seg}
	for w := 0; w < 4; w++ {
		key.Addr[w] = binary.NativeEndian.Uint32(a[4*w:])
	}
	return key
}

// syncTrie makes generation gen's entries of a trie map equal want: held
// is what they are known to be (nil: unknown, read from the map), stale
// entries are deleted, new or changed ones written (in one batch where
// the kernel can).
func syncTrie[K comparable](m *ebpf.Map, gen uint32, held, want map[K]policyTrieVal, genOf func(K) uint32) error {
	if held == nil {
		held = map[K]policyTrieVal{}
		var k K
		var v policyTrieVal
		for it := m.Iterate(); it.Next(&k, &v); {
			if genOf(k) == gen {
				held[k] = v
			}
		}
	}
	var del []K
	for k := range held {
		if _, ok := want[k]; !ok {
			del = append(del, k)
		}
	}
	if len(del) > 0 {
		if _, err := m.BatchDelete(del, nil); err != nil {
			for _, k := range del {
				if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
					return fmt.Errorf("delete trie entry: %w", err)
				}
			}
		}
	}
	var keys []K
	var vals []policyTrieVal
	for k, v := range want {
		if old, ok := held[k]; ok && old == v {
			continue
		}
		keys = append(keys, k)
		vals = append(vals, v)
	}
	if len(keys) == 0 {
		return nil
	}
	if _, err := m.BatchUpdate(keys, vals, nil); err == nil {
		return nil
	}
	for i := range keys {
		if err := m.Put(keys[i], vals[i]); err != nil {
			return fmt.Errorf("write trie entry: %w", err)
		}
	}
	return nil
}
