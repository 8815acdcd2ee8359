package queue

import (
	"context"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Benchmarks: 200-byte records, fsync policies always / interval (10ms) /
// never, 1 and 10 concurrent writers, and the drain (Next + Ack) rate; the
// same workload on bbolt used as a queue for comparison. Reproduce with
//
//	flock /tmp/outpost-bench.lock go test -run '^$' -bench . -benchtime 2s ./internal/queue/
//
// Each benchmark reports appends/s (or records/s) and, for the disk queue,
// records per fsync (group commit at work).

const benchRecord = 200

var policies = []string{FsyncAlways, FsyncInterval, FsyncNever}

// runWriters calls op b.N times spread over w goroutines.
func runWriters(b *testing.B, w int, op func() error) {
	var n atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for range w {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n.Add(1) <= int64(b.N) {
				if err := op(); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "appends/s")
}

func BenchmarkAppend(b *testing.B) {
	data := make([]byte, benchRecord)
	for _, p := range policies {
		for _, w := range []int{1, 10} {
			b.Run(fmt.Sprintf("fsync=%s/writers=%d", p, w), func(b *testing.B) {
				q, err := Open(Config{Dir: b.TempDir(), Fsync: p, MaxBytes: 8 << 30, SegmentSize: 64 << 20}, Options{})
				if err != nil {
					b.Fatal(err)
				}
				defer q.Close()
				b.SetBytes(benchRecord)
				b.ReportAllocs()
				runWriters(b, w, func() error {
					_, err := q.Append(context.Background(), data)
					return err
				})
				if st := q.Stats(); st.Fsyncs > 0 {
					b.ReportMetric(float64(b.N)/float64(st.Fsyncs), "records/fsync")
				}
			})
		}
	}
}

// BenchmarkAppendAsync is the broker-hook path: one goroutine pipelines
// publishes, completions arrive by callback.
func BenchmarkAppendAsync(b *testing.B) {
	data := make([]byte, benchRecord)
	for _, p := range policies {
		b.Run("fsync="+p, func(b *testing.B) {
			q, err := Open(Config{Dir: b.TempDir(), Fsync: p, MaxBytes: 8 << 30, SegmentSize: 64 << 20}, Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer q.Close()
			b.SetBytes(benchRecord)
			b.ReportAllocs()
			var wg sync.WaitGroup
			wg.Add(b.N)
			done := func(uint64, error) { wg.Done() }
			b.ResetTimer()
			start := time.Now()
			for range b.N {
				q.AppendAsync(data, done)
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "appends/s")
			if st := q.Stats(); st.Fsyncs > 0 {
				b.ReportMetric(float64(b.N)/float64(st.Fsyncs), "records/fsync")
			}
		})
	}
}

// BenchmarkDrain measures Next + Ack over a backlog of b.N records written
// beforehand (and reopened, so reads come from the files).
func BenchmarkDrain(b *testing.B) {
	dir := b.TempDir()
	cfg := Config{Dir: dir, Fsync: FsyncNever, MaxBytes: 8 << 30, SegmentSize: 64 << 20}
	q, err := Open(cfg, Options{})
	if err != nil {
		b.Fatal(err)
	}
	data := make([]byte, benchRecord)
	var wg sync.WaitGroup
	wg.Add(b.N)
	for range b.N {
		q.AppendAsync(data, func(uint64, error) { wg.Done() })
	}
	wg.Wait()
	q.Close()
	q, err = Open(cfg, Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer q.Close()
	b.SetBytes(benchRecord)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		r, err := q.Next(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		if err := q.Ack(r.Seq); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "records/s")
}

// boltQueue is bbolt used as a queue: key = big-endian seq, value = data.
type boltQueue struct {
	db   *bolt.DB
	seq  atomic.Uint64
	stop chan struct{}
	wg   sync.WaitGroup
}

var boltBucket = []byte("q")

func openBolt(b *testing.B, policy string) *boltQueue {
	db, err := bolt.Open(filepath.Join(b.TempDir(), "q.db"), 0o600, &bolt.Options{NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		b.Fatal(err)
	}
	db.NoSync = policy != FsyncAlways
	db.MaxBatchDelay = time.Millisecond // bbolt default 10ms: far worse for a single writer
	if err := db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucketIfNotExists(boltBucket); return err }); err != nil {
		b.Fatal(err)
	}
	bq := &boltQueue{db: db, stop: make(chan struct{})}
	if policy == FsyncInterval {
		bq.wg.Add(1)
		go func() {
			defer bq.wg.Done()
			t := time.NewTicker(DefaultFsyncInterval)
			defer t.Stop()
			for {
				select {
				case <-t.C:
					db.Sync()
				case <-bq.stop:
					return
				}
			}
		}()
	}
	return bq
}

func (bq *boltQueue) close() {
	close(bq.stop)
	bq.wg.Wait()
	bq.db.Close()
}

// append uses Update for one writer and Batch (bbolt's group commit) for
// concurrent writers.
func (bq *boltQueue) append(data []byte, batch bool) error {
	put := func(tx *bolt.Tx) error {
		var k [8]byte
		binary.BigEndian.PutUint64(k[:], bq.seq.Add(1))
		return tx.Bucket(boltBucket).Put(k[:], data)
	}
	if batch {
		return bq.db.Batch(put)
	}
	return bq.db.Update(put)
}

func BenchmarkBoltAppend(b *testing.B) {
	data := make([]byte, benchRecord)
	for _, p := range policies {
		for _, w := range []int{1, 10} {
			b.Run(fmt.Sprintf("fsync=%s/writers=%d", p, w), func(b *testing.B) {
				bq := openBolt(b, p)
				defer bq.close()
				b.SetBytes(benchRecord)
				b.ReportAllocs()
				runWriters(b, w, func() error { return bq.append(data, w > 1) })
			})
		}
	}
}

// BenchmarkBoltDrain reads and deletes b.N records, 256 per transaction,
// without fsync (acknowledgements need not be durable, as in the disk
// queue's cursor).
func BenchmarkBoltDrain(b *testing.B) {
	bq := openBolt(b, FsyncNever)
	defer bq.close()
	data := make([]byte, benchRecord)
	for i := 0; i < b.N; i += 10000 {
		err := bq.db.Update(func(tx *bolt.Tx) error {
			for j := i; j < min(i+10000, b.N); j++ {
				var k [8]byte
				binary.BigEndian.PutUint64(k[:], bq.seq.Add(1))
				if err := tx.Bucket(boltBucket).Put(k[:], data); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(benchRecord)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	left := b.N
	for left > 0 {
		err := bq.db.Update(func(tx *bolt.Tx) error {
			c := tx.Bucket(boltBucket).Cursor()
			var keys [][]byte
			for k, v := c.First(); k != nil && len(keys) < 256; k, v = c.Next() {
				_ = append([]byte(nil), v...) // the consumer's copy
				keys = append(keys, k)
			}
			for _, k := range keys {
				if err := tx.Bucket(boltBucket).Delete(k); err != nil {
					return err
				}
			}
			left -= len(keys)
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "records/s")
}
