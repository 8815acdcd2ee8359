package queue

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// impls are the implementations the contract suite runs over.
var impls = []struct {
	name string
	open func(t *testing.T) Queue
}{
	{"mem", func(t *testing.T) Queue { return NewMem(0) }},
	{"disk", func(t *testing.T) Queue {
		q, err := Open(Config{Dir: t.TempDir()}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		return q
	}},
	{"disk-small-segments-never", func(t *testing.T) Queue {
		q, err := Open(Config{Dir: t.TempDir(), SegmentSize: minSegmentSize, Fsync: FsyncNever}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		return q
	}},
}

func forEach(t *testing.T, f func(t *testing.T, q Queue)) {
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			q := im.open(t)
			defer q.Close()
			f(t, q)
		})
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustAppend(t *testing.T, q Queue, s string) uint64 {
	t.Helper()
	seq, err := q.Append(ctxT(t), []byte(s))
	if err != nil {
		t.Fatalf("append %q: %v", s, err)
	}
	return seq
}

func mustNext(t *testing.T, q Queue) Record {
	t.Helper()
	r, err := q.Next(ctxT(t))
	if err != nil {
		t.Fatalf("next: %v", err)
	}
	return r
}

func TestContractOrder(t *testing.T) {
	forEach(t, func(t *testing.T, q Queue) {
		var last uint64
		for i := range 100 {
			seq := mustAppend(t, q, fmt.Sprint("m", i))
			if seq <= last {
				t.Fatalf("seq %d after %d", seq, last)
			}
			last = seq
		}
		prev := uint64(0)
		for i := range 100 {
			r := mustNext(t, q)
			if string(r.Data) != fmt.Sprint("m", i) || r.Seq <= prev {
				t.Fatalf("record %d: seq %d data %q", i, r.Seq, r.Data)
			}
			if r.Time.IsZero() {
				t.Fatal("zero time")
			}
			prev = r.Seq
			if err := q.Ack(r.Seq); err != nil {
				t.Fatal(err)
			}
		}
		if d := q.Stats().Depth; d != 0 {
			t.Fatalf("depth %d after acking everything", d)
		}
	})
}

func TestContractNextBlocks(t *testing.T) {
	forEach(t, func(t *testing.T, q Queue) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		if _, err := q.Next(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Next on empty queue: %v", err)
		}
		got := make(chan Record, 1)
		go func() {
			r, err := q.Next(context.Background())
			if err == nil {
				got <- r
			}
			close(got)
		}()
		mustAppend(t, q, "wake")
		select {
		case r := <-got:
			if string(r.Data) != "wake" {
				t.Fatalf("got %q", r.Data)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Next did not wake up")
		}
	})
}

func TestContractOutOfOrderAckAndRewind(t *testing.T) {
	forEach(t, func(t *testing.T, q Queue) {
		for i := range 5 {
			mustAppend(t, q, fmt.Sprint(i))
		}
		var recs []Record
		for range 5 {
			recs = append(recs, mustNext(t, q))
		}
		// Ack 1, 3 (0-based) out of order: nothing removable yet.
		q.Ack(recs[1].Seq)
		q.Ack(recs[3].Seq)
		if d := q.Stats().Depth; d != 3 {
			t.Fatalf("depth %d, want 3", d)
		}
		q.Rewind()
		// Unacknowledged ones come again, in order, acked ones do not.
		for _, want := range []int{0, 2, 4} {
			r := mustNext(t, q)
			if r.Seq != recs[want].Seq || string(r.Data) != fmt.Sprint(want) {
				t.Fatalf("after rewind got seq %d %q, want %d", r.Seq, r.Data, recs[want].Seq)
			}
		}
		q.Ack(recs[0].Seq)
		if d := q.Stats().Depth; d != 2 {
			t.Fatalf("depth %d, want 2", d)
		}
		q.Ack(recs[2].Seq)
		q.Ack(recs[4].Seq)
		q.Ack(recs[4].Seq) // duplicate ack is harmless
		if d := q.Stats().Depth; d != 0 {
			t.Fatalf("depth %d, want 0", d)
		}
		mustAppend(t, q, "after")
		if r := mustNext(t, q); string(r.Data) != "after" {
			t.Fatalf("got %q", r.Data)
		}
	})
}

func TestContractConcurrentAppend(t *testing.T) {
	forEach(t, func(t *testing.T, q Queue) {
		const writers, each = 10, 200
		var wg sync.WaitGroup
		seqs := make(chan uint64, writers*each)
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range each {
					seq, err := q.Append(context.Background(), fmt.Appendf(nil, "%d-%d", w, i))
					if err != nil {
						t.Error(err)
						return
					}
					seqs <- seq
				}
			}()
		}
		wg.Wait()
		close(seqs)
		seen := map[uint64]bool{}
		for s := range seqs {
			if seen[s] {
				t.Fatalf("duplicate seq %d", s)
			}
			seen[s] = true
		}
		last := map[int]int{}
		for range writers * each {
			r := mustNext(t, q)
			if !seen[r.Seq] {
				t.Fatalf("unexpected seq %d", r.Seq)
			}
			var w, i int
			fmt.Sscanf(string(r.Data), "%d-%d", &w, &i)
			if p, ok := last[w]; ok && i != p+1 {
				t.Fatalf("writer %d: record %d after %d", w, i, p)
			}
			last[w] = i
			q.Ack(r.Seq)
		}
	})
}

func TestContractAppendAsyncOrder(t *testing.T) {
	forEach(t, func(t *testing.T, q Queue) {
		const n = 1000
		var mu sync.Mutex
		var got []uint64
		done := make(chan struct{})
		for i := range n {
			q.AppendAsync([]byte(fmt.Sprint(i)), func(seq uint64, err error) {
				if err != nil {
					t.Error(err)
				}
				mu.Lock()
				got = append(got, seq)
				if len(got) == n {
					close(done)
				}
				mu.Unlock()
			})
		}
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatal("callbacks missing")
		}
		for i := 1; i < n; i++ {
			if got[i] <= got[i-1] {
				t.Fatalf("callback %d: seq %d after %d", i, got[i], got[i-1])
			}
		}
		for i := range n {
			if r := mustNext(t, q); string(r.Data) != fmt.Sprint(i) || r.Seq != got[i] {
				t.Fatalf("record %d: seq %d %q", i, r.Seq, r.Data)
			}
		}
	})
}

func TestContractClose(t *testing.T) {
	forEach(t, func(t *testing.T, q Queue) {
		errc := make(chan error, 1)
		go func() {
			_, err := q.Next(context.Background())
			errc <- err
		}()
		time.Sleep(10 * time.Millisecond) // let Next block (either order is fine)
		if err := q.Close(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-errc:
			if !errors.Is(err, ErrClosed) {
				t.Fatalf("Next after Close: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Next not woken by Close")
		}
		if _, err := q.Append(context.Background(), []byte("x")); !errors.Is(err, ErrClosed) {
			t.Fatalf("Append after Close: %v", err)
		}
		if err := q.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	})
}
