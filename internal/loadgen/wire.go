package loadgen

// A minimal MQTT 3.1.1 / 5.0 client codec for the load generator's hot path.
//
// Encoders build CONNECT, SUBSCRIBE and pre-encoded PUBLISH templates whose
// packet identifier and payload are patched in place. The reader parses the
// fixed header and remaining length by hand from a bufio.Reader and hands the
// body out without copying (a view into the reader's buffer, valid until the
// next call). The parsers below treat every byte from the broker as
// untrusted: they check every length before slicing and never panic
// (FuzzPacketReader, FuzzParsers).

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/outpost-edge/outpost/internal/mqttwire"
)

// MQTT control packet types (MQTT 3.1.1 §2.2.1, MQTT 5 §2.1.2).
const (
	typeConnect    = 1
	typeConnack    = 2
	typePublish    = 3
	typePuback     = 4
	typePubrec     = 5
	typePubrel     = 6
	typePubcomp    = 7
	typeSubscribe  = 8
	typeSuback     = 9
	typeUnsubscr   = 10
	typeUnsuback   = 11
	typePingreq    = 12
	typePingresp   = 13
	typeDisconnect = 14
	typeAuth       = 15
)

var packetNames = [16]string{"reserved", "CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC", "PUBREL",
	"PUBCOMP", "SUBSCRIBE", "SUBACK", "UNSUBSCRIBE", "UNSUBACK", "PINGREQ", "PINGRESP", "DISCONNECT", "AUTH"}

// Protocol levels in CONNECT.
const (
	protoV311 = 4
	protoV5   = 5
)

// maxVarint is the largest value a 4-byte variable byte integer holds.
const maxVarint = mqttwire.MaxVarint

var (
	// ErrMalformed is returned (wrapped, with the packet and field) when the
	// broker sends bytes that are not a valid MQTT packet.
	ErrMalformed = errors.New("malformed MQTT packet")
	// ErrPacketTooLarge is returned when an incoming packet's remaining length
	// exceeds the configured maximum packet size.
	ErrPacketTooLarge = errors.New("MQTT packet exceeds maximum size")
)

func malformed(packet, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrMalformed, packet, fmt.Sprintf(format, args...))
}

var (
	errShort  = mqttwire.ErrShort
	errVarint = mqttwire.ErrVarint
)

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// packetReader reads MQTT packets from a buffered stream. next returns a view
// of the body that is valid until the following call to next.
type packetReader struct {
	r       *bufio.Reader
	max     int    // maximum remaining length accepted
	pending int    // bytes of the previous body still in r, discarded on next()
	big     []byte // body storage for packets larger than r's buffer
}

func newPacketReader(r io.Reader, bufSize, maxPacket int) *packetReader {
	return &packetReader{r: bufio.NewReaderSize(r, bufSize), max: maxPacket}
}

// next reads one packet and returns its fixed-header byte and body.
func (pr *packetReader) next() (byte, []byte, error) {
	if pr.pending > 0 {
		if _, err := pr.r.Discard(pr.pending); err != nil {
			return 0, nil, err
		}
		pr.pending = 0
	}
	h, err := pr.r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, shift := 0, 0
	for i := 0; ; i++ {
		if i == 4 {
			return 0, nil, malformed(packetNames[h>>4], "remaining length: %v", errVarint)
		}
		c, err := pr.r.ReadByte()
		if err != nil {
			return 0, nil, unexpectedEOF(err)
		}
		n |= int(c&0x7f) << shift
		if c&0x80 == 0 {
			break
		}
		shift += 7
	}
	if n > pr.max {
		return 0, nil, fmt.Errorf("%w: %s of %d bytes (limit %d)", ErrPacketTooLarge, packetNames[h>>4], n, pr.max)
	}
	if n <= pr.r.Size() {
		body, err := pr.r.Peek(n)
		if err != nil {
			return 0, nil, unexpectedEOF(err)
		}
		pr.pending = n
		return h, body, nil
	}
	if cap(pr.big) < n {
		pr.big = make([]byte, n)
	}
	body := pr.big[:n]
	if _, err := io.ReadFull(pr.r, body); err != nil {
		return 0, nil, unexpectedEOF(err)
	}
	return h, body, nil
}

// buffered reports how many bytes past the current packet are already read.
func (pr *packetReader) buffered() int { return pr.r.Buffered() - pr.pending }

func unexpectedEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// props holds the MQTT 5 properties the load generator acts on or reports.
type props struct {
	receiveMax       uint16 // 0 = absent (the spec default is 65535)
	maxQoS           byte   // 0xff = absent
	maxPacketSize    uint32 // 0 = absent
	topicAliasMax    uint16
	serverKeepAlive  int32 // -1 = absent
	assignedClientID string
	reason           string
}

// parseProps parses an MQTT 5 property block at the start of b (length
// prefix included) and returns the bytes after it.
func parseProps(packet string, b []byte) (props, []byte, error) {
	p := props{maxQoS: 0xff, serverKeepAlive: -1}
	n, used, err := mqttwire.ReadVarint(b)
	if err != nil {
		return p, nil, malformed(packet, "property length: %v", err)
	}
	b = b[used:]
	if n > len(b) {
		return p, nil, malformed(packet, "property length %d exceeds the %d bytes left", n, len(b))
	}
	rest := b[n:]
	b = b[:n]
	for len(b) > 0 {
		id := b[0]
		b = b[1:]
		var size int
		switch id {
		case 0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A: // byte
			size = 1
		case 0x13, 0x21, 0x22, 0x23: // two byte integer
			size = 2
		case 0x02, 0x11, 0x18, 0x27: // four byte integer
			size = 4
		case 0x0B: // variable byte integer
			_, used, err := mqttwire.ReadVarint(b)
			if err != nil {
				return p, nil, malformed(packet, "property 0x%02x: %v", id, err)
			}
			size = used
		case 0x03, 0x08, 0x09, 0x12, 0x15, 0x16, 0x1A, 0x1C, 0x1F: // string or binary
			if len(b) < 2 {
				return p, nil, malformed(packet, "property 0x%02x: %v", id, errShort)
			}
			size = 2 + int(binary.BigEndian.Uint16(b))
		case 0x26: // string pair
			if len(b) < 2 {
				return p, nil, malformed(packet, "property 0x26: %v", errShort)
			}
			k := 2 + int(binary.BigEndian.Uint16(b))
			if len(b) < k+2 {
				return p, nil, malformed(packet, "property 0x26: %v", errShort)
			}
			size = k + 2 + int(binary.BigEndian.Uint16(b[k:]))
		default:
			return p, nil, malformed(packet, "unknown property 0x%02x", id)
		}
		if size > len(b) {
			return p, nil, malformed(packet, "property 0x%02x: %v", id, errShort)
		}
		v := b[:size]
		switch id {
		case 0x21:
			p.receiveMax = binary.BigEndian.Uint16(v)
		case 0x24:
			p.maxQoS = v[0]
		case 0x27:
			p.maxPacketSize = binary.BigEndian.Uint32(v)
		case 0x22:
			p.topicAliasMax = binary.BigEndian.Uint16(v)
		case 0x13:
			p.serverKeepAlive = int32(binary.BigEndian.Uint16(v))
		case 0x12:
			p.assignedClientID = string(v[2:])
		case 0x1F:
			p.reason = string(v[2:])
		}
		b = b[size:]
	}
	return p, rest, nil
}

// connack is a decoded CONNACK.
type connack struct {
	sessionPresent bool
	code           byte
	props
}

// parseConnack decodes a CONNACK body ([MQTT-3.2.2], MQTT 5 §3.2.2).
func parseConnack(body []byte, v5 bool) (connack, error) {
	var c connack
	c.maxQoS, c.serverKeepAlive = 0xff, -1
	if len(body) < 2 {
		return c, malformed("CONNACK", "%d-byte body, want at least 2", len(body))
	}
	if body[0]&^1 != 0 {
		return c, malformed("CONNACK", "reserved acknowledge flags 0x%02x", body[0])
	}
	c.sessionPresent = body[0]&1 == 1
	c.code = body[1]
	if !v5 {
		if len(body) != 2 {
			return c, malformed("CONNACK", "%d-byte body, want 2", len(body))
		}
		return c, nil
	}
	if len(body) == 2 { // tolerated: no property block
		return c, nil
	}
	p, rest, err := parseProps("CONNACK", body[2:])
	if err != nil {
		return c, err
	}
	if len(rest) != 0 {
		return c, malformed("CONNACK", "%d bytes after the properties", len(rest))
	}
	c.props = p
	return c, nil
}

// publish is a decoded incoming PUBLISH; slices point into the body.
type publish struct {
	qos      byte
	dup      bool
	retain   bool
	packetID uint16
	topic    []byte
	payload  []byte
}

// parsePublish decodes a PUBLISH body given the fixed-header flags.
func parsePublish(flags byte, body []byte, v5 bool) (publish, error) {
	p := publish{qos: (flags >> 1) & 3, dup: flags&8 != 0, retain: flags&1 != 0}
	if p.qos == 3 {
		return p, malformed("PUBLISH", "QoS 3") // [MQTT-3.3.1-4]
	}
	if len(body) < 2 {
		return p, malformed("PUBLISH", "topic length: %v", errShort)
	}
	tl := int(binary.BigEndian.Uint16(body))
	if 2+tl > len(body) {
		return p, malformed("PUBLISH", "topic length %d exceeds the %d bytes left", tl, len(body)-2)
	}
	p.topic = body[2 : 2+tl]
	b := body[2+tl:]
	if p.qos > 0 {
		if len(b) < 2 {
			return p, malformed("PUBLISH", "packet identifier: %v", errShort)
		}
		p.packetID = binary.BigEndian.Uint16(b)
		if p.packetID == 0 {
			return p, malformed("PUBLISH", "packet identifier 0 with QoS %d", p.qos) // [MQTT-2.3.1-1]
		}
		b = b[2:]
	}
	if v5 {
		_, rest, err := parseProps("PUBLISH", b)
		if err != nil {
			return p, err
		}
		b = rest
	}
	p.payload = b
	return p, nil
}

// parseAck decodes a PUBACK (or PUBREC/PUBREL/PUBCOMP/UNSUBACK) body and
// returns the packet identifier and reason code (0 for MQTT 3.1.1).
func parseAck(name string, body []byte, v5 bool) (uint16, byte, error) {
	if len(body) < 2 {
		return 0, 0, malformed(name, "%d-byte body, want at least 2", len(body))
	}
	id := binary.BigEndian.Uint16(body)
	if !v5 {
		if len(body) != 2 {
			return 0, 0, malformed(name, "%d-byte body, want 2", len(body))
		}
		return id, 0, nil
	}
	if len(body) == 2 {
		return id, 0, nil
	}
	code := body[2]
	if len(body) > 3 {
		_, rest, err := parseProps(name, body[3:])
		if err != nil {
			return 0, 0, err
		}
		if len(rest) != 0 {
			return 0, 0, malformed(name, "%d bytes after the properties", len(rest))
		}
	}
	return id, code, nil
}

// parseSuback decodes a SUBACK body: packet identifier and one return code
// per requested filter.
func parseSuback(body []byte, v5 bool) (uint16, []byte, string, error) {
	if len(body) < 3 {
		return 0, nil, "", malformed("SUBACK", "%d-byte body, want at least 3", len(body))
	}
	id := binary.BigEndian.Uint16(body)
	b := body[2:]
	reason := ""
	if v5 {
		p, rest, err := parseProps("SUBACK", b)
		if err != nil {
			return 0, nil, "", err
		}
		b, reason = rest, p.reason
	}
	if len(b) == 0 {
		return 0, nil, "", malformed("SUBACK", "no return codes")
	}
	return id, b, reason, nil
}

// parseDisconnect decodes a server DISCONNECT (MQTT 5 only carries a reason).
func parseDisconnect(body []byte, v5 bool) (byte, string, error) {
	if !v5 || len(body) == 0 {
		if len(body) != 0 {
			return 0, "", malformed("DISCONNECT", "%d-byte body in MQTT 3.1.1", len(body))
		}
		return 0, "", nil
	}
	code := body[0]
	if len(body) == 1 {
		return code, "", nil
	}
	p, rest, err := parseProps("DISCONNECT", body[1:])
	if err != nil {
		return 0, "", err
	}
	if len(rest) != 0 {
		return 0, "", malformed("DISCONNECT", "%d bytes after the properties", len(rest))
	}
	return code, p.reason, nil
}

// connectOptions are the fields of an encoded CONNECT.
type connectOptions struct {
	version       byte // protoV311 or protoV5
	clientID      string
	username      string
	password      string
	keepAlive     uint16 // seconds
	maxPacketSize uint32 // MQTT 5: advertised Maximum Packet Size (0 = omit)
}

// encodeConnect returns a complete CONNECT packet with clean start set.
func encodeConnect(o connectOptions) []byte {
	var vh []byte
	vh = appendString(vh, "MQTT")
	vh = append(vh, o.version)
	flags := byte(0x02) // clean session / clean start
	if o.username != "" {
		flags |= 0x80
	}
	if o.password != "" {
		flags |= 0x40
	}
	vh = append(vh, flags)
	vh = binary.BigEndian.AppendUint16(vh, o.keepAlive)
	if o.version == protoV5 {
		var p []byte
		if o.maxPacketSize > 0 {
			p = append(p, 0x27)
			p = binary.BigEndian.AppendUint32(p, o.maxPacketSize)
		}
		vh = mqttwire.AppendVarint(vh, len(p))
		vh = append(vh, p...)
	}
	vh = appendString(vh, o.clientID)
	if o.username != "" {
		vh = appendString(vh, o.username)
	}
	if o.password != "" {
		vh = appendString(vh, o.password)
	}
	pkt := append([]byte{typeConnect << 4}, mqttwire.AppendVarint(nil, len(vh))...)
	return append(pkt, vh...)
}

// encodeSubscribe returns a SUBSCRIBE for one filter at the given QoS.
func encodeSubscribe(id uint16, filter string, qos byte, v5 bool) []byte {
	var vh []byte
	vh = binary.BigEndian.AppendUint16(vh, id)
	if v5 {
		vh = append(vh, 0) // no properties
	}
	vh = appendString(vh, filter)
	vh = append(vh, qos)
	pkt := append([]byte{typeSubscribe<<4 | 0x02}, mqttwire.AppendVarint(nil, len(vh))...) // [MQTT-3.8.1-1]
	return append(pkt, vh...)
}

// appendPuback appends a PUBACK with reason Success (the 2-byte form is valid
// in MQTT 5 too, §3.4.2.1).
func appendPuback(b []byte, id uint16) []byte {
	return append(b, typePuback<<4, 2, byte(id>>8), byte(id))
}

var (
	pingreqPacket    = []byte{typePingreq << 4, 0}
	disconnectPacket = []byte{typeDisconnect << 4, 0}
)

// publishTemplate is a pre-encoded PUBLISH whose packet identifier and
// payload bytes are patched in place before each write.
type publishTemplate struct {
	buf        []byte
	pidOff     int // offset of the packet identifier, -1 for QoS 0
	payloadOff int
}

func newPublishTemplate(topic string, qos byte, v5 bool, payload []byte) publishTemplate {
	rl := 2 + len(topic) + len(payload)
	if qos > 0 {
		rl += 2
	}
	if v5 {
		rl++
	}
	b := make([]byte, 0, 1+mqttwire.VarintLen(rl)+rl)
	b = append(b, typePublish<<4|qos<<1)
	b = mqttwire.AppendVarint(b, rl)
	b = appendString(b, topic)
	t := publishTemplate{pidOff: -1}
	if qos > 0 {
		t.pidOff = len(b)
		b = append(b, 0, 1)
	}
	if v5 {
		b = append(b, 0) // no properties
	}
	t.payloadOff = len(b)
	t.buf = append(b, payload...)
	return t
}

func (t *publishTemplate) payload() []byte { return t.buf[t.payloadOff:] }

func (t *publishTemplate) setPacketID(id uint16) {
	binary.BigEndian.PutUint16(t.buf[t.pidOff:], id)
}
