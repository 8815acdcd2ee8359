package outpostfn

import (
	"encoding/binary"
	"errors"
	"testing"
)

func str(b []byte, s string) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

func TestDecodeMessage(t *testing.T) {
	b := []byte{1}
	b = str(b, "sensors/d1/vibration")
	b = str(b, "d1")
	b = str(b, "c1")
	b = append(b, 1, 0)
	b = str(b, "application/json")
	b = binary.LittleEndian.AppendUint32(b, 1)
	b = str(str(b, "k"), "v")
	b = str(b, `{"temp":1}`)
	m, err := DecodeMessage(b)
	if err != nil || m.Topic != "sensors/d1/vibration" || m.DeviceID != "d1" || m.QoS != 1 || len(m.Props) != 1 || string(m.Payload) != `{"temp":1}` {
		t.Fatalf("%+v, %v", m, err)
	}
	if _, err := DecodeMessage(b[:len(b)-1]); !errors.Is(err, ErrEncoding) {
		t.Fatalf("truncated: %v", err)
	}
}

func FuzzDecode(f *testing.F) {
	c := []byte{1}
	c = str(str(c, "f"), "d")
	c = binary.LittleEndian.AppendUint32(c, 1)
	c = AppendValue(c, Number(2))
	f.Add(c)
	f.Add([]byte{1, 255, 255, 255, 255})
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := DecodeMessage(b); err != nil && !errors.Is(err, ErrEncoding) {
			t.Fatal(err)
		}
		if _, err := DecodeCall(b); err != nil && !errors.Is(err, ErrEncoding) {
			t.Fatal(err)
		}
	})
}
