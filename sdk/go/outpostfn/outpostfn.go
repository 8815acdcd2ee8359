// Package outpostfn is the Go SDK for Outpost functions: WebAssembly
// modules run by the agent (internal/function) on messages that match a
// trigger, or from a rule as fn('name', args...).
//
// Build a function with the standard toolchain (Go 1.24 or newer):
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o anomaly.wasm .
//
// and register the handlers in init (a reactor module has no main run):
//
//	func init() {
//		outpostfn.OnMessage(func(m *outpostfn.Message) error {
//			return outpostfn.Emit("alerts/"+m.DeviceID, m.Payload)
//		})
//		outpostfn.OnCall(func(c *outpostfn.Call) (outpostfn.Value, error) {
//			x, _ := c.Args[0].Float()
//			return outpostfn.Number(x * 2), nil
//		})
//	}
//	func main() {}
//
// The ABI it implements is documented in docs/functions.md: the module
// exports outpost_alloc, outpost_on_message and outpost_call and imports
// the host functions of module "outpost". This file holds the portable
// part (types and the decoder of what the host sends); the wasm glue is in
// the wasip1-only files, so the package also builds (and is tested) on the
// host.
package outpostfn

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// Message is the message that triggered a function.
type Message struct {
	Topic, DeviceID, ClientID string
	QoS                       byte
	Retain                    bool
	ContentType               string
	Props                     [][2]string // MQTT 5 user properties
	Payload                   []byte
}

// Value kinds: the types of the rule language.
const (
	KindNull byte = iota
	KindBool
	KindNum
	KindStr
	KindJSON
)

// Value is an argument or result of fn() in a rule.
type Value struct {
	Kind byte
	Num  float64
	Str  string
}

// Null, Bool, Number, String and JSON make values.
func Null() Value            { return Value{} }
func Number(f float64) Value { return Value{Kind: KindNum, Num: f} }
func String(s string) Value  { return Value{Kind: KindStr, Str: s} }
func JSON(raw string) Value  { return Value{Kind: KindJSON, Str: raw} }
func Bool(b bool) Value {
	if b {
		return Value{Kind: KindBool, Num: 1}
	}
	return Value{Kind: KindBool}
}

// Float returns a number argument.
func (v Value) Float() (float64, bool) { return v.Num, v.Kind == KindNum }

// Call is one fn('name', args...) call from a rule.
type Call struct {
	Name     string // the name the rule used (a module may serve several)
	DeviceID string // the device of the message or window group ("" when none)
	Args     []Value
}

// ErrEncoding is returned by the decoders for bytes that are not a valid
// encoding (never expected from the host; tested by fuzzing).
var ErrEncoding = errors.New("outpostfn: bad encoding")

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
	if r.err == nil && r.off >= len(r.b) {
		r.fail("truncated")
	}
	if r.err != nil {
		return 0
	}
	r.off++
	return r.b[r.off-1]
}

func (r *reader) u32() uint32 {
	if r.err == nil && len(r.b)-r.off < 4 {
		r.fail("truncated")
	}
	if r.err != nil {
		return 0
	}
	r.off += 4
	return binary.LittleEndian.Uint32(r.b[r.off-4:])
}

func (r *reader) bytes() []byte {
	n := r.u32()
	if r.err == nil && uint64(n) > uint64(len(r.b)-r.off) {
		r.fail("length exceeds input")
	}
	if r.err != nil {
		return nil
	}
	r.off += int(n)
	return r.b[r.off-int(n) : r.off : r.off]
}

func (r *reader) value() Value {
	v := Value{Kind: r.u8()}
	switch v.Kind {
	case KindNull:
	case KindBool:
		v.Num = float64(r.u8() & 1)
	case KindNum:
		if r.err == nil && len(r.b)-r.off < 8 {
			r.fail("truncated")
		}
		if r.err == nil {
			v.Num = math.Float64frombits(binary.LittleEndian.Uint64(r.b[r.off:]))
			r.off += 8
		}
	case KindStr, KindJSON:
		v.Str = string(r.bytes())
	default:
		r.fail("unknown kind")
	}
	return v
}

// DecodeMessage decodes the host's encoding of a message. Payload aliases b.
func DecodeMessage(b []byte) (*Message, error) {
	r := reader{b: b}
	if r.u8() != 1 && r.err == nil {
		r.fail("unknown version")
	}
	m := &Message{}
	m.Topic = string(r.bytes())
	m.DeviceID = string(r.bytes())
	m.ClientID = string(r.bytes())
	m.QoS = r.u8()
	m.Retain = r.u8() == 1
	m.ContentType = string(r.bytes())
	n := r.u32()
	if r.err == nil && uint64(n)*8 > uint64(len(b)-r.off) {
		r.fail("property count exceeds input")
	}
	for i := uint32(0); i < n && r.err == nil; i++ {
		k := string(r.bytes())
		m.Props = append(m.Props, [2]string{k, string(r.bytes())})
	}
	m.Payload = r.bytes()
	if r.err != nil {
		return nil, r.err
	}
	return m, nil
}

// DecodeCall decodes the host's encoding of a rule call.
func DecodeCall(b []byte) (*Call, error) {
	r := reader{b: b}
	if r.u8() != 1 && r.err == nil {
		r.fail("unknown version")
	}
	c := &Call{}
	c.Name = string(r.bytes())
	c.DeviceID = string(r.bytes())
	n := r.u32()
	if r.err == nil && uint64(n) > uint64(len(b)-r.off) {
		r.fail("argument count exceeds input")
	}
	for i := uint32(0); i < n && r.err == nil; i++ {
		c.Args = append(c.Args, r.value())
	}
	if r.err != nil {
		return nil, r.err
	}
	return c, nil
}

// AppendValue encodes v for the host (outpost.result).
func AppendValue(dst []byte, v Value) []byte {
	dst = append(dst, v.Kind)
	switch v.Kind {
	case KindBool:
		dst = append(dst, byte(v.Num)&1)
	case KindNum:
		dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(v.Num))
	case KindStr, KindJSON:
		dst = binary.LittleEndian.AppendUint32(dst, uint32(len(v.Str)))
		dst = append(dst, v.Str...)
	}
	return dst
}

// Level is a log level for Log.
type Level int32

const (
	LevelDebug Level = -4
	LevelInfo  Level = 0
	LevelWarn  Level = 4
	LevelError Level = 8
)

// Errors returned by the host calls.
var (
	// ErrDenied is returned when the function's manifest does not grant
	// the capability (publish to that topic) or the state limit is reached.
	ErrDenied = errors.New("outpostfn: denied by the host")
	// ErrHost is returned for any other failure the host reports.
	ErrHost = errors.New("outpostfn: host call failed")
)

var (
	onMessage func(*Message) error
	onCall    func(*Call) (Value, error)
)

// OnMessage registers the handler of messages that match the function's
// triggers (manifest entry on_message).
func OnMessage(h func(*Message) error) { onMessage = h }

// OnCall registers the handler of fn('name', args...) calls from rules
// (manifest entry callable).
func OnCall(h func(*Call) (Value, error)) { onCall = h }

// HandleMessage decodes a message in the host's encoding and runs the
// OnMessage handler (what outpost_on_message does; usable in host tests).
func HandleMessage(b []byte) error {
	if onMessage == nil {
		return errors.New("outpostfn: no OnMessage handler registered")
	}
	m, err := DecodeMessage(b)
	if err != nil {
		return err
	}
	return onMessage(m)
}

// HandleCall decodes a call in the host's encoding and runs the OnCall
// handler (what outpost_call does).
func HandleCall(b []byte) (Value, error) {
	if onCall == nil {
		return Value{}, errors.New("outpostfn: no OnCall handler registered")
	}
	c, err := DecodeCall(b)
	if err != nil {
		return Value{}, err
	}
	return onCall(c)
}
