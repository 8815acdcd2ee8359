// Package mqttwire holds the MQTT wire-format primitives that Outpost's
// hand-written encoders share: the load generator's client (internal/loadgen)
// and the uplink's PUBLISH fast path (internal/uplink). The broker and the
// uplink's session use mochi-mqtt and paho.golang for everything else.
//
// Invariants: AppendVarint writes exactly VarintLen(n) bytes for every n in
// 0..MaxVarint; ReadVarint accepts exactly what AppendVarint writes (at most
// four bytes) and reports truncated or over-long input with sentinel errors.
package mqttwire

import "errors"

// MaxVarint is the largest value a variable byte integer holds (four bytes;
// MQTT 5.0 §1.5.5): also the largest remaining length of a packet.
const MaxVarint = 268_435_455

var (
	// ErrShort is returned when the input ends inside a value.
	ErrShort = errors.New("truncated")
	// ErrVarint is returned for a variable byte integer longer than 4 bytes.
	ErrVarint = errors.New("variable byte integer longer than 4 bytes")
)

// AppendVarint appends n (0 ≤ n ≤ MaxVarint) as a variable byte integer.
func AppendVarint(dst []byte, n int) []byte {
	for {
		b := byte(n & 0x7f)
		n >>= 7
		if n > 0 {
			b |= 0x80
		}
		dst = append(dst, b)
		if n == 0 {
			return dst
		}
	}
}

// VarintLen returns how many bytes AppendVarint writes for n.
func VarintLen(n int) int {
	switch {
	case n < 128:
		return 1
	case n < 16384:
		return 2
	case n < 2097152:
		return 3
	}
	return 4
}

// ReadVarint decodes a variable byte integer from the start of b and returns
// the value and the number of bytes used.
func ReadVarint(b []byte) (value, used int, err error) {
	shift := 0
	for i := 0; i < 4; i++ {
		if i >= len(b) {
			return 0, 0, ErrShort
		}
		value |= int(b[i]&0x7f) << shift
		if b[i]&0x80 == 0 {
			return value, i + 1, nil
		}
		shift += 7
	}
	return 0, 0, ErrVarint
}
