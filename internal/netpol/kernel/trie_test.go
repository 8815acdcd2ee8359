package kernel

import (
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/outpost-edge/outpost/internal/netpol"
)

// The longest network of a run that holds an address must name the first
// rule of the run that matches it: checked against a brute-force scan on
// random runs of nested networks, both families.
func TestFirstMatchIsLongestPrefix(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < 300; round++ {
		v6 := round%2 == 1
		base := netip.MustParseAddr("10.20.0.0")
		if v6 {
			base = netip.MustParseAddr("fd00:20::")
		}
		bits := base.BitLen()
		randAddr := func() netip.Addr {
			// Addresses near base, so that networks nest and overlap.
			b := base.AsSlice()
			b[len(b)-1] = byte(rng.IntN(256))
			b[len(b)-2] = byte(rng.IntN(4))
			a, _ := netip.AddrFromSlice(b)
			return a
		}
		run := make([]runRule, 1+rng.IntN(40))
		for i := range run {
			p, _ := randAddr().Prefix(bits - rng.IntN(14))
			run[i] = runRule{src: p, allow: rng.IntN(2) == 0, slot: uint32(i)}
		}
		fm := firstMatch(run)
		for probe := 0; probe < 200; probe++ {
			a := randAddr()
			want := -1
			for i, r := range run {
				if r.src.Contains(a) {
					want = i
					break
				}
			}
			// The longest network of the run holding a.
			got, gotLen := -1, -1
			for p, r := range fm {
				if p.Contains(a) && p.Bits() > gotLen {
					got, gotLen = int(r.slot), p.Bits()
				}
			}
			if got != want {
				t.Fatalf("round %d, %v: trie gives rule %d, first match is %d (run %v)", round, a, got, want, run)
			}
		}
	}
}

// Runs of at least minTrieRun source-only rules become one trie entry;
// shorter runs and other rules stay, in order.
func TestCompressRuns(t *testing.T) {
	var rules []netpol.Compiled
	add := func(n int, srcOnly bool) {
		for i := 0; i < n; i++ {
			c := netpol.Compiled{Src: netip.MustParsePrefix("10.0.0.0/8"), SPortHi: 65535, DPortHi: 65535}
			if !srcOnly {
				c.Proto = netpol.ProtoTCP
			}
			rules = append(rules, c)
		}
	}
	add(minTrieRun-1, true) // too short: stays
	add(1, false)
	add(minTrieRun, true) // one trie entry
	add(2, false)
	add(minTrieRun+3, true) // another
	list := make([]int, len(rules))
	idx := make([]int, len(rules))
	for i := range list {
		list[i], idx[i] = i, i
	}
	out, runs := compressRuns(list, idx, rules, make([]uint32, len(rules)), func(seg uint32) int { return -1 - int(seg) }, func(k int) uint32 { return uint32(k) })
	want := []int{0, 1, 2, 3, 4, 5, 6, 7, -1, 16, 17, -2}
	if len(runs) != 2 || len(out) != len(want) {
		t.Fatalf("got %v with %d runs, want %v", out, len(runs), want)
	}
	for i := range want {
		if out[i] != want[i] {
			t.Fatalf("got %v, want %v", out, want)
		}
	}
}
