package function

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
)

// ABIVersion is the version of the encoding of messages and values passed
// to and from guests (the first byte of every encoded input).
const ABIVersion = 1

// ErrEncoding is returned (wrapped) when bytes from a guest are not a valid
// encoding of a value, with the offset of the problem.
var ErrEncoding = errors.New("function: bad encoding from guest")

// Value kinds of the ABI; the same as the rule language's types.
const (
	KindNull byte = iota
	KindBool
	KindNum
	KindStr
	KindJSON // raw JSON text of an object or array
)

// Value is a rule-language value passed to and returned from fn().
type Value struct {
	Kind byte
	Num  float64 // number; 1/0 for bools
	Str  string  // string, or raw JSON for KindJSON
}

// Input is what a message-triggered function receives.
type Input struct {
	Topic, DeviceID, ClientID string
	QoS                       byte
	Retain                    bool
	ContentType               string
	Props                     [][2]string // MQTT 5 user properties
	Payload                   []byte
}

func appendStr(dst []byte, s string) []byte {
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(s)))
	return append(dst, s...)
}

// AppendInput encodes in for a guest's outpost_on_message:
//
//	u8 version=1, str topic, str device_id, str client_id, u8 qos, u8 retain,
//	str content_type, u32 nprops, nprops × (str key, str value), str payload
//
// where str is a u32 little-endian length and the bytes.
func AppendInput(dst []byte, in *Input) []byte {
	dst = append(dst, ABIVersion)
	dst = appendStr(dst, in.Topic)
	dst = appendStr(dst, in.DeviceID)
	dst = appendStr(dst, in.ClientID)
	var r byte
	if in.Retain {
		r = 1
	}
	dst = append(dst, in.QoS, r)
	dst = appendStr(dst, in.ContentType)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(in.Props)))
	for _, p := range in.Props {
		dst = appendStr(dst, p[0])
		dst = appendStr(dst, p[1])
	}
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(in.Payload)))
	return append(dst, in.Payload...)
}

// AppendValue encodes one value: u8 kind, then nothing (null), u8 (bool),
// f64 little-endian (number) or str (string, JSON).
func AppendValue(dst []byte, v Value) []byte {
	dst = append(dst, v.Kind)
	switch v.Kind {
	case KindBool:
		b := byte(0)
		if v.Num != 0 {
			b = 1
		}
		dst = append(dst, b)
	case KindNum:
		dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(v.Num))
	case KindStr, KindJSON:
		dst = appendStr(dst, v.Str)
	}
	return dst
}

// AppendCall encodes the input of outpost_call: u8 version=1, str name
// (the name the rule used), str device_id, u32 nargs, nargs × value.
func AppendCall(dst []byte, name, deviceID string, args []Value) []byte {
	dst = append(dst, ABIVersion)
	dst = appendStr(dst, name)
	dst = appendStr(dst, deviceID)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(args)))
	for _, a := range args {
		dst = AppendValue(dst, a)
	}
	return dst
}

// reader decodes the encodings above, recording the first problem.
type reader struct {
	b   []byte
	off int
	err error
}

func (r *reader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: %s at offset %d", ErrEncoding, what, r.off)
	}
}

func (r *reader) u8() byte {
	if r.err != nil {
		return 0
	}
	if r.off >= len(r.b) {
		r.fail("truncated")
		return 0
	}
	v := r.b[r.off]
	r.off++
	return v
}

func (r *reader) u32() uint32 {
	if r.err != nil {
		return 0
	}
	if len(r.b)-r.off < 4 {
		r.fail("truncated")
		return 0
	}
	v := binary.LittleEndian.Uint32(r.b[r.off:])
	r.off += 4
	return v
}

func (r *reader) bytes() []byte {
	n := r.u32()
	if r.err != nil {
		return nil
	}
	if uint64(n) > uint64(len(r.b)-r.off) {
		r.fail(fmt.Sprintf("length %d exceeds the %d bytes left", n, len(r.b)-r.off))
		return nil
	}
	v := r.b[r.off : r.off+int(n) : r.off+int(n)]
	r.off += int(n)
	return v
}

func (r *reader) str() string { return string(r.bytes()) }

func (r *reader) value() Value {
	k := r.u8()
	var v Value
	v.Kind = k
	switch k {
	case KindNull:
	case KindBool:
		b := r.u8()
		if b > 1 {
			r.fail("bool not 0 or 1")
		}
		v.Num = float64(b)
	case KindNum:
		if len(r.b)-r.off < 8 && r.err == nil {
			r.fail("truncated")
		}
		if r.err == nil {
			v.Num = math.Float64frombits(binary.LittleEndian.Uint64(r.b[r.off:]))
			r.off += 8
		}
	case KindStr, KindJSON:
		v.Str = r.str()
	default:
		r.fail(fmt.Sprintf("unknown value kind %d", k))
	}
	return v
}

// DecodeValue decodes exactly one value (what a guest passes to
// outpost.result). Trailing bytes are an error.
func DecodeValue(b []byte) (Value, error) {
	r := reader{b: b}
	v := r.value()
	if r.err == nil && r.off != len(b) {
		r.fail(fmt.Sprintf("%d trailing bytes", len(b)-r.off))
	}
	if r.err != nil {
		return Value{}, r.err
	}
	return v, nil
}

// DecodeInput decodes AppendInput's encoding (used by tests and tools; the
// guest SDK has its own decoder).
func DecodeInput(b []byte) (*Input, error) {
	r := reader{b: b}
	if v := r.u8(); r.err == nil && v != ABIVersion {
		r.fail(fmt.Sprintf("version %d", v))
	}
	in := &Input{}
	in.Topic = r.str()
	in.DeviceID = r.str()
	in.ClientID = r.str()
	in.QoS = r.u8()
	in.Retain = r.u8() == 1
	in.ContentType = r.str()
	n := r.u32()
	if r.err == nil && uint64(n)*8 > uint64(len(b)-r.off) {
		r.fail("property count exceeds input")
	}
	for i := uint32(0); i < n && r.err == nil; i++ {
		in.Props = append(in.Props, [2]string{r.str(), r.str()})
	}
	in.Payload = r.bytes()
	if r.err == nil && r.off != len(b) {
		r.fail(fmt.Sprintf("%d trailing bytes", len(b)-r.off))
	}
	if r.err != nil {
		return nil, r.err
	}
	return in, nil
}

// DecodeCall decodes AppendCall's encoding.
func DecodeCall(b []byte) (name, deviceID string, args []Value, err error) {
	r := reader{b: b}
	if v := r.u8(); r.err == nil && v != ABIVersion {
		r.fail(fmt.Sprintf("version %d", v))
	}
	name = r.str()
	deviceID = r.str()
	n := r.u32()
	if r.err == nil && uint64(n) > uint64(len(b)-r.off) {
		r.fail("argument count exceeds input")
	}
	for i := uint32(0); i < n && r.err == nil; i++ {
		args = append(args, r.value())
	}
	if r.err == nil && r.off != len(b) {
		r.fail(fmt.Sprintf("%d trailing bytes", len(b)-r.off))
	}
	if r.err != nil {
		return "", "", nil, r.err
	}
	return name, deviceID, args, nil
}

func hashHex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
