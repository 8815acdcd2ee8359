package loadgen

import (
	"bytes"
	"testing"
)

// seedStream is a realistic broker→client byte stream: CONNACK with MQTT 5
// properties, SUBACK, PUBLISH QoS 0 and 1 with payloads of both kinds,
// PUBACK, PINGRESP and DISCONNECT.
func seedStream(v5 bool) []byte {
	var s []byte
	if v5 {
		s = append(s, 0x20, 8, 0, 0, 5, 0x21, 0, 20, 0x24, 1)
		s = append(s, 0x90, 4, 0, 1, 0, 1)
	} else {
		s = append(s, 0x20, 2, 0, 0)
		s = append(s, 0x90, 3, 0, 1, 0)
	}
	f := payloadFormat{kind: PayloadJSON, size: 200, runID: 7}
	pl := f.build(3)
	f.stamp(pl, 3, 42, 123456)
	s = append(s, newPublishTemplate("bench/x/sensors/0", 0, v5, pl).buf...)
	bf := payloadFormat{kind: PayloadBinary, size: 40, runID: 7}
	bl := bf.build(1)
	bf.stamp(bl, 1, 9, 99)
	t := newPublishTemplate("bench/y/sensors/1", 1, v5, bl)
	t.setPacketID(513)
	s = append(s, t.buf...)
	s = append(s, 0x40, 2, 2, 1, 0xd0, 0)
	if v5 {
		s = append(s, 0xe0, 5, 0x8b, 3, 0x1F, 0, 0)
	} else {
		s = append(s, 0xe0, 0)
	}
	return s
}

// consume reads packets and dispatches each to its parser, like the
// publisher and subscriber readers do; it must never panic.
func consume(data []byte, v5 bool, bufSize int) {
	pr := newPacketReader(bytes.NewReader(data), bufSize, 1<<16)
	for i := 0; i < 1000; i++ {
		h, body, err := pr.next()
		if err != nil {
			return
		}
		dispatch(h, body, v5)
	}
}

func dispatch(h byte, body []byte, v5 bool) {
	switch h >> 4 {
	case typeConnack:
		_, _ = parseConnack(body, v5)
	case typePublish:
		if p, err := parsePublish(h&0x0f, body, v5); err == nil {
			if st, ok := parsePayload(p.payload); ok {
				var tr seqTracker
				tr.observe(st.seq)
			}
		}
	case typePuback:
		_, _, _ = parseAck("PUBACK", body, v5)
	case typeSuback:
		_, _, _, _ = parseSuback(body, v5)
	case typeDisconnect:
		_, _, _ = parseDisconnect(body, v5)
	}
}

func FuzzPacketReader(f *testing.F) {
	for _, v5 := range []bool{false, true} {
		s := seedStream(v5)
		f.Add(s, v5)
		// The same stream split at odd places and truncated.
		f.Add(s[:len(s)/3], v5)
		f.Add(s[7:], v5)
		f.Add(s[:len(s)-1], v5)
	}
	f.Add([]byte{0x30, 0xff, 0xff, 0xff, 0xff, 0x7f}, false)
	f.Add([]byte{0x20, 0x03, 0x00, 0x00, 0x80}, true)
	f.Fuzz(func(t *testing.T, data []byte, v5 bool) {
		consume(data, v5, 16)   // big-packet path
		consume(data, v5, 4096) // peek path
	})
}

func FuzzParsers(f *testing.F) {
	f.Add(byte(0x20), []byte{0, 0, 5, 0x21, 0, 20, 0x24, 1}, true)
	f.Add(byte(0x32), []byte{0, 1, 'a', 0, 1, 0, 'x'}, true)
	f.Add(byte(0x40), []byte{0, 1, 0x87, 4, 0x1F, 0, 1, 'r'}, true)
	f.Add(byte(0x90), []byte{0, 1, 3, 0x26, 0, 0}, true)
	f.Add(byte(0xe0), []byte{0x8e, 0}, true)
	f.Add(byte(0x30), []byte{0, 0, 0x0B, 0xff, 0xff, 0xff, 0xff}, true)
	f.Fuzz(func(t *testing.T, h byte, body []byte, v5 bool) {
		dispatch(h, body, v5)
		if _, rest, err := parseProps("X", body); err == nil && len(rest) > len(body) {
			t.Fatalf("rest longer than input")
		}
	})
}

func FuzzParsePayload(f *testing.F) {
	for _, k := range []PayloadKind{PayloadBinary, PayloadJSON} {
		pf := payloadFormat{kind: k, size: minPayloadSize(k) + 20, runID: 1}
		p := pf.build(5)
		pf.stamp(p, 5, 77, 1234)
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		st, ok := parsePayload(p)
		if !ok {
			return
		}
		// Anything accepted re-encodes to the same fields.
		for _, k := range []PayloadKind{PayloadBinary, PayloadJSON} {
			if k == PayloadJSON && (st.pub > jMaxPublishers || st.seq >= 1e12 || st.ts < 0 || st.ts >= 1e15) {
				continue
			}
			pf := payloadFormat{kind: k, size: minPayloadSize(k), runID: st.run}
			q := pf.build(int(st.pub))
			pf.stamp(q, int(st.pub), st.seq, st.ts)
			if got, ok := parsePayload(q); !ok || got != st {
				t.Fatalf("%s re-encode of %+v parsed as %+v ok=%v", k, st, got, ok)
			}
		}
	})
}
