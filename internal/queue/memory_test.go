package queue

import (
	"context"
	"runtime"
	"sync"
	"testing"
	"time"
)

// TestBacklogNotInMemory: a queue holding a large backlog keeps only
// per-segment metadata in memory, before and while it is read.
func TestBacklogNotInMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 60 MB")
	}
	dir := t.TempDir()
	cfg := Config{Dir: dir, Fsync: FsyncNever, SegmentSize: 4 << 20, MaxBytes: 1 << 30}
	q := openT(t, cfg, Options{})
	const n = 250_000 // 250k × (200+24) B ≈ 56 MB
	data := make([]byte, 200)
	var wg sync.WaitGroup
	wg.Add(n)
	for range n {
		q.AppendAsync(data, func(_ uint64, err error) {
			if err != nil {
				t.Error(err)
			}
			wg.Done()
		})
	}
	wg.Wait()
	q.Close()

	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	q = openT(t, cfg, Options{})
	for range 1000 { // read and acknowledge a little
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		r, err := q.Next(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		q.Ack(r.Seq)
	}
	held := int64(heap()) - int64(before)
	st := q.Stats()
	t.Logf("backlog %d records, %d MB on disk in %d segments; heap held by the open queue: %d KB", st.Depth, st.DiskBytes>>20, st.Segments, held>>10)
	if st.Depth != n-1000 {
		t.Fatalf("depth %d", st.Depth)
	}
	if held > 4<<20 {
		t.Fatalf("open queue holds %d bytes of heap for a %d-byte backlog", held, st.DiskBytes)
	}
}
