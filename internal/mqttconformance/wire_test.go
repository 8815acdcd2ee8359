package mqttconformance

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/mqttwire"
)

// Packet types (MQTT 5 section 2.1.2, 3.1.1 section 2.2.1).
const (
	tConnect    = 1
	tConnack    = 2
	tPublish    = 3
	tPuback     = 4
	tPubrec     = 5
	tPubrel     = 6
	tPubcomp    = 7
	tSubscribe  = 8
	tSuback     = 9
	tUnsubscr   = 10
	tUnsuback   = 11
	tPingreq    = 12
	tPingresp   = 13
	tDisconnect = 14
)

var typeNames = [16]string{"reserved", "CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC", "PUBREL",
	"PUBCOMP", "SUBSCRIBE", "SUBACK", "UNSUBSCRIBE", "UNSUBACK", "PINGREQ", "PINGRESP", "DISCONNECT", "AUTH"}

// Property identifiers (MQTT 5 section 2.2.2.2).
const (
	pMessageExpiry   = 0x02
	pResponseTopic   = 0x08
	pCorrelationData = 0x09
	pSubscriptionID  = 0x0B
	pSessionExpiry   = 0x11
	pReasonString    = 0x1F
	pReceiveMaximum  = 0x21
	pTopicAliasMax   = 0x22
	pTopicAlias      = 0x23
	pUserProperty    = 0x26
)

// props are the MQTT 5 properties the tests set or check. Pointers and
// slices are nil when the property is absent.
type props struct {
	messageExpiry   *uint32
	responseTopic   *string
	correlationData []byte
	sessionExpiry   *uint32
	receiveMaximum  *uint16
	topicAliasMax   *uint16
	topicAlias      uint16
	reasonString    string
	user            [][2]string
	subIDs          []int
}

func u32(v uint32) *uint32 { return &v }
func u16(v uint16) *uint16 { return &v }
func str(v string) *string { return &v }

func appendStr(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

func (p props) encode() []byte {
	var b []byte
	if p.messageExpiry != nil {
		b = binary.BigEndian.AppendUint32(append(b, pMessageExpiry), *p.messageExpiry)
	}
	if p.responseTopic != nil {
		b = appendStr(append(b, pResponseTopic), *p.responseTopic)
	}
	if p.correlationData != nil {
		b = appendStr(append(b, pCorrelationData), string(p.correlationData))
	}
	if p.sessionExpiry != nil {
		b = binary.BigEndian.AppendUint32(append(b, pSessionExpiry), *p.sessionExpiry)
	}
	if p.receiveMaximum != nil {
		b = binary.BigEndian.AppendUint16(append(b, pReceiveMaximum), *p.receiveMaximum)
	}
	if p.topicAliasMax != nil {
		b = binary.BigEndian.AppendUint16(append(b, pTopicAliasMax), *p.topicAliasMax)
	}
	if p.topicAlias != 0 {
		b = binary.BigEndian.AppendUint16(append(b, pTopicAlias), p.topicAlias)
	}
	for _, kv := range p.user {
		b = appendStr(appendStr(append(b, pUserProperty), kv[0]), kv[1])
	}
	return append(mqttwire.AppendVarint(nil, len(b)), b...)
}

var errMalformed = errors.New("malformed packet from broker")

func decodeProps(b []byte) (props, []byte, error) {
	var p props
	n, used, err := mqttwire.ReadVarint(b)
	if err != nil || used+n > len(b) {
		return p, nil, fmt.Errorf("%w: property length", errMalformed)
	}
	rest, b := b[used+n:], b[used:used+n]
	for len(b) > 0 {
		id := b[0]
		b = b[1:]
		need := func(k int) error {
			if len(b) < k {
				return fmt.Errorf("%w: property 0x%02x truncated", errMalformed, id)
			}
			return nil
		}
		readStr := func() (string, error) {
			if err := need(2); err != nil {
				return "", err
			}
			k := int(binary.BigEndian.Uint16(b))
			if err := need(2 + k); err != nil {
				return "", err
			}
			s := string(b[2 : 2+k])
			b = b[2+k:]
			return s, nil
		}
		switch id {
		case pMessageExpiry, pSessionExpiry, 0x18, 0x27: // four byte integers
			if err := need(4); err != nil {
				return p, nil, err
			}
			v := binary.BigEndian.Uint32(b)
			switch id {
			case pMessageExpiry:
				p.messageExpiry = &v
			case pSessionExpiry:
				p.sessionExpiry = &v
			}
			b = b[4:]
		case pReceiveMaximum, pTopicAliasMax, pTopicAlias, 0x13: // two byte integers
			if err := need(2); err != nil {
				return p, nil, err
			}
			v := binary.BigEndian.Uint16(b)
			switch id {
			case pReceiveMaximum:
				p.receiveMaximum = &v
			case pTopicAliasMax:
				p.topicAliasMax = &v
			case pTopicAlias:
				p.topicAlias = v
			}
			b = b[2:]
		case 0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A: // bytes
			if err := need(1); err != nil {
				return p, nil, err
			}
			b = b[1:]
		case pSubscriptionID:
			v, used, err := mqttwire.ReadVarint(b)
			if err != nil {
				return p, nil, fmt.Errorf("%w: subscription identifier", errMalformed)
			}
			p.subIDs = append(p.subIDs, v)
			b = b[used:]
		case pResponseTopic, pCorrelationData, pReasonString, 0x03, 0x12, 0x15, 0x16, 0x1A, 0x1C:
			s, err := readStr()
			if err != nil {
				return p, nil, err
			}
			switch id {
			case pResponseTopic:
				p.responseTopic = &s
			case pCorrelationData:
				p.correlationData = []byte(s)
			case pReasonString:
				p.reasonString = s
			}
		case pUserProperty:
			k, err := readStr()
			if err != nil {
				return p, nil, err
			}
			v, err := readStr()
			if err != nil {
				return p, nil, err
			}
			p.user = append(p.user, [2]string{k, v})
		default:
			return p, nil, fmt.Errorf("%w: unknown property 0x%02x", errMalformed, id)
		}
	}
	return p, rest, nil
}

// packet is one decoded packet from the broker.
type packet struct {
	typ, flags     byte
	id             uint16
	reason         byte   // CONNACK, PUBACK..PUBCOMP, DISCONNECT (0 when absent)
	hasReason      bool   // the reason code byte was present
	codes          []byte // SUBACK, UNSUBACK
	sessionPresent bool
	topic          string
	payload        []byte
	props          props
}

func (p packet) qos() byte    { return p.flags >> 1 & 3 }
func (p packet) dup() bool    { return p.flags&8 != 0 }
func (p packet) name() string { return typeNames[p.typ] }

func (p packet) String() string {
	switch p.typ {
	case tPublish:
		return fmt.Sprintf("PUBLISH id=%d qos=%d dup=%v topic=%q payload=%q", p.id, p.qos(), p.dup(), p.topic, p.payload)
	case tSuback, tUnsuback:
		return fmt.Sprintf("%s id=%d codes=% x", p.name(), p.id, p.codes)
	}
	return fmt.Sprintf("%s id=%d reason=0x%02x", p.name(), p.id, p.reason)
}

// client is a raw MQTT client on one TCP connection.
type client struct {
	t    *testing.T
	name string
	v5   bool
	c    net.Conn
	r    *bufio.Reader
}

func dial(t *testing.T, addr, name string, v5 bool) *client {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("%s: dial %s: %v", name, addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return &client{t: t, name: name, v5: v5, c: c, r: bufio.NewReader(c)}
}

func (c *client) send(b []byte) {
	c.t.Helper()
	_ = c.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.c.Write(b); err != nil {
		c.t.Fatalf("%s: write: %v", c.name, err)
	}
}

func frame(h byte, body []byte) []byte {
	return append(mqttwire.AppendVarint([]byte{h}, len(body)), body...)
}

type connectOpts struct {
	id, user, pass string
	clean          bool
	keepAlive      uint16
	props          props
}

func (c *client) connect(o connectOpts) packet {
	c.t.Helper()
	level := byte(4)
	if c.v5 {
		level = 5
	}
	flags := byte(0)
	if o.clean {
		flags |= 2
	}
	if o.user != "" {
		flags |= 0x80
	}
	if o.pass != "" {
		flags |= 0x40
	}
	ka := o.keepAlive
	if ka == 0 {
		ka = 30
	}
	b := appendStr(nil, "MQTT")
	b = append(b, level, flags)
	b = binary.BigEndian.AppendUint16(b, ka)
	if c.v5 {
		b = append(b, o.props.encode()...)
	}
	b = appendStr(b, o.id)
	if o.user != "" {
		b = appendStr(b, o.user)
	}
	if o.pass != "" {
		b = appendStr(b, o.pass)
	}
	c.send(frame(tConnect<<4, b))
	ack := c.expect(tConnack)
	if ack.reason != 0 {
		c.t.Fatalf("%s: CONNACK refused: 0x%02x", c.name, ack.reason)
	}
	return ack
}

type pubOpts struct {
	topic   string
	payload string
	qos     byte
	id      uint16
	retain  bool
	dup     bool
	props   props
}

func (c *client) publish(o pubOpts) {
	c.t.Helper()
	h := byte(tPublish<<4) | o.qos<<1
	if o.retain {
		h |= 1
	}
	if o.dup {
		h |= 8
	}
	b := appendStr(nil, o.topic)
	if o.qos > 0 {
		b = binary.BigEndian.AppendUint16(b, o.id)
	}
	if c.v5 {
		b = append(b, o.props.encode()...)
	}
	c.send(frame(h, append(b, o.payload...)))
}

type subOpt struct {
	filter  string
	qos     byte
	noLocal bool
}

func (c *client) subscribe(id uint16, subs ...subOpt) packet {
	c.t.Helper()
	b := binary.BigEndian.AppendUint16(nil, id)
	if c.v5 {
		b = append(b, 0)
	}
	for _, s := range subs {
		o := s.qos
		if s.noLocal {
			o |= 4
		}
		b = append(appendStr(b, s.filter), o)
	}
	c.send(frame(tSubscribe<<4|2, b))
	ack := c.expect(tSuback)
	if ack.id != id {
		c.t.Fatalf("%s: SUBACK for id %d, want %d", c.name, ack.id, id)
	}
	return ack
}

// ack sends PUBACK, PUBREC, PUBREL or PUBCOMP for id with reason 0.
func (c *client) ack(typ byte, id uint16) {
	c.t.Helper()
	h := typ << 4
	if typ == tPubrel {
		h |= 2
	}
	c.send(frame(h, binary.BigEndian.AppendUint16(nil, id)))
}

// ping makes one PINGREQ/PINGRESP round trip: the broker handles a
// client's packets in order, so everything sent before has been processed.
func (c *client) ping() {
	c.t.Helper()
	c.send([]byte{tPingreq << 4, 0})
	c.expect(tPingresp)
}

func (c *client) disconnect() {
	c.t.Helper()
	b := []byte{}
	if c.v5 {
		b = []byte{0, 0}
	}
	c.send(frame(tDisconnect<<4, b))
	c.c.Close()
}

// read returns the next packet, or an error (io.EOF when the broker closed
// the connection, a timeout when nothing came within d).
func (c *client) read(d time.Duration) (packet, error) {
	_ = c.c.SetReadDeadline(time.Now().Add(d))
	h, err := c.r.ReadByte()
	if err != nil {
		return packet{}, err
	}
	var lb []byte
	for {
		x, err := c.r.ReadByte()
		if err != nil {
			return packet{}, err
		}
		lb = append(lb, x)
		if x&0x80 == 0 || len(lb) == 4 {
			break
		}
	}
	n, _, err := mqttwire.ReadVarint(lb)
	if err != nil {
		return packet{}, fmt.Errorf("%w: remaining length", errMalformed)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(c.r, body); err != nil {
		return packet{}, err
	}
	return c.decode(h, body)
}

func (c *client) decode(h byte, b []byte) (packet, error) {
	p := packet{typ: h >> 4, flags: h & 15}
	short := fmt.Errorf("%w: %s too short", errMalformed, typeNames[p.typ])
	var err error
	switch p.typ {
	case tConnack:
		if len(b) < 2 {
			return p, short
		}
		p.sessionPresent, p.reason, p.hasReason = b[0]&1 == 1, b[1], true
		if c.v5 {
			p.props, _, err = decodeProps(b[2:])
		}
	case tPublish:
		if len(b) < 2 {
			return p, short
		}
		k := int(binary.BigEndian.Uint16(b))
		if len(b) < 2+k {
			return p, short
		}
		p.topic, b = string(b[2:2+k]), b[2+k:]
		if p.qos() > 0 {
			if len(b) < 2 {
				return p, short
			}
			p.id, b = binary.BigEndian.Uint16(b), b[2:]
		}
		if c.v5 {
			p.props, b, err = decodeProps(b)
		}
		p.payload = b
	case tPuback, tPubrec, tPubrel, tPubcomp:
		if len(b) < 2 {
			return p, short
		}
		p.id = binary.BigEndian.Uint16(b)
		if len(b) > 2 {
			p.reason, p.hasReason = b[2], true
			if !c.v5 {
				return p, fmt.Errorf("%w: MQTT 3.1.1 %s with %d bytes", errMalformed, typeNames[p.typ], len(b))
			}
		}
		if len(b) > 3 {
			p.props, _, err = decodeProps(b[3:])
		}
	case tSuback, tUnsuback:
		if len(b) < 2 {
			return p, short
		}
		p.id, b = binary.BigEndian.Uint16(b), b[2:]
		if c.v5 {
			p.props, b, err = decodeProps(b)
		}
		p.codes = b
	case tDisconnect:
		if !c.v5 {
			return p, fmt.Errorf("%w: DISCONNECT sent to an MQTT 3.1.1 client [MQTT-3.14.0-1 (3.1.1): only clients send it]", errMalformed)
		}
		if len(b) > 0 {
			p.reason, p.hasReason = b[0], true
		}
		if len(b) > 1 {
			p.props, _, err = decodeProps(b[1:])
		}
	case tPingresp:
	default:
		return p, fmt.Errorf("%w: unexpected packet type %d", errMalformed, p.typ)
	}
	return p, err
}

const waitPacket = 5 * time.Second // generous: CI under -race

// expect reads the next packet and fails unless it has type typ.
func (c *client) expect(typ byte) packet {
	c.t.Helper()
	p, err := c.read(waitPacket)
	if err != nil {
		c.t.Fatalf("%s: waiting for %s: %v", c.name, typeNames[typ], err)
	}
	if p.typ != typ {
		c.t.Fatalf("%s: got %v, want %s", c.name, p, typeNames[typ])
	}
	return p
}

// expectNothing fails if a packet arrives within d.
func (c *client) expectNothing(d time.Duration) {
	c.t.Helper()
	p, err := c.read(d)
	if err == nil {
		c.t.Fatalf("%s: unexpected %v", c.name, p)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		c.t.Fatalf("%s: connection failed while expecting nothing: %v", c.name, err)
	}
}

// expectClosed reads until the broker closes the connection and returns
// the packets it sent before.
func (c *client) expectClosed() []packet {
	c.t.Helper()
	var got []packet
	for {
		p, err := c.read(waitPacket)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				c.t.Fatalf("%s: connection still open; got %v", c.name, got)
			}
			return got
		}
		got = append(got, p)
	}
}
