package loadgen

import (
	"bytes"
	"io"
	"testing"
)

// BenchmarkPublishPath is the publisher's per-message work: patch seq and
// timestamp into a pre-encoded PUBLISH and append it to a buffered writer.
func BenchmarkPublishPath(b *testing.B) {
	for _, kind := range []PayloadKind{PayloadBinary, PayloadJSON} {
		b.Run(string(kind), func(b *testing.B) {
			f := payloadFormat{kind: kind, size: 200, runID: 1}
			t := newPublishTemplate("bench/bench-00000000-p3/sensors/0", 1, false, f.build(3))
			var sink bytes.Buffer
			b.SetBytes(int64(len(t.buf)))
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				t.setPacketID(pidFor(uint64(i)))
				f.stamp(t.payload(), 3, uint64(i), int64(i)*1000)
				sink.Write(t.buf)
				if sink.Len() > 1<<20 {
					sink.Reset()
				}
			}
		})
	}
}

// BenchmarkSubscribePath is the subscriber's per-message work: read the
// packet, parse PUBLISH and payload, track the sequence number and record
// latency.
func BenchmarkSubscribePath(b *testing.B) {
	for _, kind := range []PayloadKind{PayloadBinary, PayloadJSON} {
		b.Run(string(kind), func(b *testing.B) {
			f := payloadFormat{kind: kind, size: 200, runID: 1}
			t := newPublishTemplate("bench/bench-00000000-p3/sensors/0", 0, false, f.build(3))
			var stream []byte
			const n = 4096
			for i := 0; i < n; i++ {
				f.stamp(t.payload(), 3, uint64(i), int64(i))
				stream = append(stream, t.buf...)
			}
			rd := bytes.NewReader(stream)
			pr := newPacketReader(rd, subReadBuf, 1<<20)
			var tr seqTracker
			h := newHist()
			b.SetBytes(int64(len(t.buf)))
			b.ReportAllocs()
			var base uint64
			for b.Loop() {
				hd, body, err := pr.next()
				if err == io.EOF {
					rd.Reset(stream)
					pr = newPacketReader(rd, subReadBuf, 1<<20)
					base += n
					continue
				}
				p, err := parsePublish(hd&0x0f, body, false)
				if err != nil {
					b.Fatal(err)
				}
				st, ok := parsePayload(p.payload)
				if !ok {
					b.Fatal("payload")
				}
				tr.observe(base + st.seq)
				record(h, 1000+st.ts%1000)
			}
		})
	}
}
