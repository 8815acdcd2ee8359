package mqttwire

import (
	"bytes"
	"errors"
	"testing"
)

func TestVarint(t *testing.T) {
	for _, c := range []struct {
		n    int
		want []byte
	}{
		{0, []byte{0}}, {127, []byte{0x7f}}, {128, []byte{0x80, 0x01}},
		{16383, []byte{0xff, 0x7f}}, {16384, []byte{0x80, 0x80, 0x01}},
		{2097151, []byte{0xff, 0xff, 0x7f}}, {2097152, []byte{0x80, 0x80, 0x80, 0x01}},
		{MaxVarint, []byte{0xff, 0xff, 0xff, 0x7f}},
	} {
		got := AppendVarint(nil, c.n)
		if !bytes.Equal(got, c.want) || VarintLen(c.n) != len(c.want) {
			t.Errorf("%d: % x (len %d), want % x", c.n, got, VarintLen(c.n), c.want)
		}
		v, used, err := ReadVarint(append(got, 0xAA))
		if err != nil || v != c.n || used != len(c.want) {
			t.Errorf("read %d: %d %d %v", c.n, v, used, err)
		}
	}
	for _, c := range []struct {
		in   []byte
		want error
	}{
		{nil, ErrShort}, {[]byte{0x80}, ErrShort}, {[]byte{0xff, 0xff, 0xff}, ErrShort},
		{[]byte{0x80, 0x80, 0x80, 0x80, 0x01}, ErrVarint},
	} {
		if _, _, err := ReadVarint(c.in); !errors.Is(err, c.want) {
			t.Errorf("% x: %v, want %v", c.in, err, c.want)
		}
	}
}

// FuzzReadVarint: arbitrary bytes never panic, never read past 4 bytes, and
// whatever decodes re-encodes to a value in range.
func FuzzReadVarint(f *testing.F) {
	for _, s := range [][]byte{{0}, {0x80, 0x01}, {0xff, 0xff, 0xff, 0x7f}, {0x80, 0x80, 0x80, 0x80, 0x01}, {}} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		v, used, err := ReadVarint(b)
		if err != nil {
			return
		}
		if used < 1 || used > 4 || used > len(b) || v < 0 || v > MaxVarint {
			t.Fatalf("% x: value %d used %d", b, v, used)
		}
		if VarintLen(v) > used {
			t.Fatalf("% x: %d needs %d bytes, read from %d", b, v, VarintLen(v), used)
		}
	})
}
