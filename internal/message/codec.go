package message

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// codecV1 is the first byte of every encoded message.
const codecV1 = 1

// ErrCorrupt is returned (wrapped) by Decode for bytes that are not a valid
// encoding. The caller decides whether to skip the record or stop.
var ErrCorrupt = errors.New("message: corrupt encoding")

// maxField bounds every length prefix Decode accepts, so a corrupt length can
// never trigger a huge allocation.
const maxField = 256 << 20

// flags in the header byte
const (
	flagRetain = 1 << 0
)

// AppendEncode appends the binary encoding of m to dst and returns the result.
// Layout (v1): version, qos, flags, payloadFormat, received unix nanos (varint),
// expiry (uvarint), then length-prefixed topic, client id, device id, content
// type, response topic, correlation data, user property count and pairs, and
// finally the payload (rest of the record).
func AppendEncode(dst []byte, m *Message) []byte {
	var flags byte
	if m.Retain {
		flags |= flagRetain
	}
	dst = append(dst, codecV1, m.QoS, flags, m.Props.PayloadFormat)
	var ns int64
	if !m.Received.IsZero() {
		ns = m.Received.UnixNano()
	}
	dst = binary.AppendVarint(dst, ns)
	dst = binary.AppendUvarint(dst, uint64(m.Props.MessageExpiry))
	dst = appendString(dst, m.Topic)
	dst = appendString(dst, m.ClientID)
	dst = appendString(dst, m.DeviceID)
	dst = appendString(dst, m.Props.ContentType)
	dst = appendString(dst, m.Props.ResponseTopic)
	dst = appendBytes(dst, m.Props.CorrelationData)
	dst = binary.AppendUvarint(dst, uint64(len(m.Props.User)))
	for _, u := range m.Props.User {
		dst = appendString(dst, u.Key)
		dst = appendString(dst, u.Value)
	}
	return append(dst, m.Payload...)
}

// Encode returns the binary encoding of m.
func Encode(m *Message) []byte {
	return AppendEncode(make([]byte, 0, 32+len(m.Topic)+len(m.ClientID)+len(m.DeviceID)+len(m.Payload)), m)
}

// Decode parses an encoding produced by Encode. The returned message's Payload
// and CorrelationData alias b (no copy); strings are copied.
func Decode(b []byte) (*Message, error) {
	d := decoder{b: b}
	if len(b) < 4 {
		return nil, fmt.Errorf("%w: %d bytes is shorter than the header", ErrCorrupt, len(b))
	}
	if b[0] != codecV1 {
		return nil, fmt.Errorf("%w: unknown version %d", ErrCorrupt, b[0])
	}
	m := &Message{QoS: b[1], Retain: b[2]&flagRetain != 0}
	m.Props.PayloadFormat = b[3]
	if m.QoS > 2 {
		return nil, fmt.Errorf("%w: qos %d", ErrCorrupt, m.QoS)
	}
	d.off = 4
	ns := d.varint()
	if ns != 0 {
		m.Received = time.Unix(0, ns)
	}
	exp := d.uvarint()
	if exp > 1<<32-1 {
		d.fail("expiry out of range")
	}
	m.Props.MessageExpiry = uint32(exp)
	m.Topic = d.str()
	m.ClientID = d.str()
	m.DeviceID = d.str()
	m.Props.ContentType = d.str()
	m.Props.ResponseTopic = d.str()
	m.Props.CorrelationData = d.bytes()
	n := d.uvarint()
	if d.err == nil && n > uint64(len(b)-d.off)/2 {
		d.fail("user property count exceeds record")
	}
	if d.err == nil && n > 0 {
		m.Props.User = make([]UserProperty, 0, n)
		for i := uint64(0); i < n && d.err == nil; i++ {
			k := d.str()
			v := d.str()
			m.Props.User = append(m.Props.User, UserProperty{Key: k, Value: v})
		}
	}
	if d.err != nil {
		return nil, d.err
	}
	m.Payload = b[d.off:len(b):len(b)]
	return m, nil
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

func appendBytes(dst, b []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(b)))
	return append(dst, b...)
}

type decoder struct {
	b   []byte
	off int
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s at offset %d", ErrCorrupt, what, d.off)
	}
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b[d.off:])
	if n <= 0 {
		d.fail("bad uvarint")
		return 0
	}
	d.off += n
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b[d.off:])
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.off += n
	return v
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > maxField || n > uint64(len(d.b)-d.off) {
		d.fail("length exceeds record")
		return nil
	}
	if n == 0 {
		return nil
	}
	v := d.b[d.off : d.off+int(n) : d.off+int(n)]
	d.off += int(n)
	return v
}

func (d *decoder) str() string {
	return string(d.bytes())
}
