package loadgen

import "testing"

func TestSeqTracker(t *testing.T) {
	cases := []struct {
		name                  string
		seqs                  []uint64
		unique, dup, outOrder uint64
	}{
		{"in order", []uint64{0, 1, 2, 3}, 4, 0, 0},
		{"gap is loss", []uint64{0, 1, 5}, 3, 0, 0},
		{"duplicate", []uint64{0, 1, 1, 2, 0}, 3, 2, 0},
		{"late arrival", []uint64{0, 2, 1, 3}, 4, 0, 1},
		{"late then duplicate", []uint64{0, 3, 1, 1}, 3, 1, 1},
		{"big jump clears window", []uint64{0, 1, seqWindow * 3, 2}, 4, 0, 1},
		{"gap spanning words", []uint64{0, 200, 100, 150, 100}, 4, 1, 2},
	}
	for _, c := range cases {
		var tr seqTracker
		for _, s := range c.seqs {
			tr.observe(s)
		}
		if tr.unique != c.unique || tr.duplicates != c.dup || tr.outOfOrder != c.outOrder {
			t.Errorf("%s: unique %d dup %d ooo %d, want %d %d %d", c.name, tr.unique, tr.duplicates, tr.outOfOrder, c.unique, c.dup, c.outOrder)
		}
	}
}

func TestSeqTrackerWraps(t *testing.T) {
	// Many windows of in-order traffic with one duplicate per window: the
	// ring must forget old seqs and still catch recent duplicates.
	var tr seqTracker
	n := uint64(seqWindow*3 + 17)
	for s := uint64(0); s < n; s++ {
		tr.observe(s)
		if s%seqWindow == 100 {
			tr.observe(s - 50)
		}
	}
	if tr.unique != n || tr.duplicates != 3 || tr.outOfOrder != 0 {
		t.Errorf("unique %d dup %d ooo %d", tr.unique, tr.duplicates, tr.outOfOrder)
	}
}
