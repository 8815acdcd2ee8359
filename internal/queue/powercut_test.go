package queue

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// TestPowerCut runs writers and a consumer on crashFS, cuts power at a
// random moment, reopens the durable state and checks that every record
// whose Append returned nil (fsync: always) and that was not acknowledged is
// present, intact and in order.
func TestPowerCut(t *testing.T) {
	iters := 30
	if testing.Short() {
		iters = 5
	}
	for it := range iters {
		torn := it%2 == 1
		t.Run(fmt.Sprintf("iter%d-torn=%v", it, torn), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(it), 42))
			powerCutOnce(t, rng, torn)
		})
	}
}

func powerCutOnce(t *testing.T, rng *rand.Rand, torn bool) {
	const dir = "/q"
	cfs := newCrashFS()
	cfg := Config{Dir: dir, SegmentSize: minSegmentSize, MaxBytes: 1 << 30}
	q, err := Open(cfg, Options{fs: cfs, housekeep: time.Duration(1+rng.IntN(20)) * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	returned := map[uint64]int{} // seq -> payload size, Append returned nil
	acked := map[uint64]bool{}

	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		seed := rng.Uint64()
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, uint64(w)))
			for ctx.Err() == nil {
				// Contents are checked by writer and length.
				n := 20 + r.IntN(3000)
				data := bytes.Repeat([]byte{byte('A' + w)}, n)
				seq, err := q.Append(context.Background(), data)
				if err != nil {
					return
				}
				mu.Lock()
				returned[seq] = n<<8 | w
				mu.Unlock()
			}
		}()
	}
	// A consumer acknowledges most records, out of order in small groups,
	// so segments get deleted and the cursor moves.
	wg.Add(1)
	go func() {
		defer wg.Done()
		var pend []uint64
		held := uint64(0)
		ack := func(s uint64) {
			q.Ack(s)
			mu.Lock()
			acked[s] = true
			mu.Unlock()
		}
		for ctx.Err() == nil {
			rec, err := q.Next(ctx)
			if err != nil {
				return
			}
			pend = append(pend, rec.Seq)
			if len(pend) == 4 {
				for _, i := range []int{2, 0, 3} {
					ack(pend[i])
				}
				if held != 0 {
					ack(held) // the one held back from the previous group
				}
				held = pend[1]
				pend = pend[:0]
			}
		}
	}()

	checkFor(t, 20*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(returned) < 100 {
			return fmt.Errorf("%d appends returned", len(returned))
		}
		return nil
	})
	time.Sleep(time.Duration(rng.IntN(150)) * time.Millisecond)
	// Freeze the filesystem and the bookkeeping at the same instant.
	mu.Lock()
	cfs.mu.Lock()
	want := make(map[uint64]int, len(returned))
	for s, v := range returned {
		if !acked[s] {
			want[s] = v
		}
	}
	cfs.mu.Unlock()
	after := cfs.PowerCut(rng, torn)
	mu.Unlock()
	stop()
	q.Close()
	wg.Wait()

	q2, err := Open(cfg, Options{fs: after})
	if err != nil {
		t.Fatalf("open after power cut: %v", err)
	}
	defer q2.Close()
	got := drain(t, q2, 30*time.Millisecond, true)
	prev := uint64(0)
	have := map[uint64]bool{}
	for _, r := range got {
		if r.Seq <= prev {
			t.Fatalf("seq %d after %d", r.Seq, prev)
		}
		prev = r.Seq
		have[r.Seq] = true
		if v, ok := returned[r.Seq]; ok {
			n, w := v>>8, v&0xff
			if !bytes.Equal(r.Data, bytes.Repeat([]byte{byte('A' + w)}, n)) {
				t.Fatalf("seq %d: wrong contents", r.Seq)
			}
		}
	}
	lost := 0
	for s := range want {
		if !have[s] {
			lost++
			if lost < 5 {
				t.Errorf("acknowledged record %d lost", s)
			}
		}
	}
	if lost > 0 {
		t.Fatalf("%d of %d acknowledged records lost", lost, len(want))
	}
	st := q2.Stats()
	if st.Drops[ReasonCorrupt] != 0 {
		t.Fatalf("corruption reported after a clean power cut: %v", st.Drops)
	}
	if st.FirstSeq < 2 {
		t.Logf("cursor never persisted before the cut")
	}
	t.Logf("appended %d, checked %d unacknowledged, delivered %d after cut, torn tails %d",
		len(returned), len(want), len(got), st.Drops[ReasonTornTail])
}
