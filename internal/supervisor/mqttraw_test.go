package supervisor

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
)

// rawClient is a lean MQTT 3.1.1 client for load generation: pre-encoded
// packets out, one buffered reader in. QoS 0 only.
type rawClient struct {
	conn net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
}

func appendVarint(b []byte, n int) []byte {
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		b = append(b, d)
		if n == 0 {
			return b
		}
	}
}

func appendStr(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

func rawDial(network, addr, clientID, user, pass string) (*rawClient, error) {
	conn, err := net.Dial(network, addr)
	if err != nil {
		return nil, err
	}
	c := &rawClient{conn: conn, r: bufio.NewReaderSize(conn, 64<<10), w: bufio.NewWriterSize(conn, 64<<10)}
	var body []byte
	body = appendStr(body, "MQTT")
	flags := byte(0x02) // clean session
	if user != "" {
		flags |= 0x80 | 0x40
	}
	body = append(body, 4, flags, 0, 0) // level 4, keepalive 0
	body = appendStr(body, clientID)
	if user != "" {
		body = appendStr(body, user)
		body = appendStr(body, pass)
	}
	pkt := appendVarint([]byte{0x10}, len(body))
	pkt = append(pkt, body...)
	if _, err := conn.Write(pkt); err != nil {
		conn.Close()
		return nil, err
	}
	typ, p, err := c.readPacket(nil)
	if err != nil || typ != 2 || len(p) < 2 || p[1] != 0 {
		conn.Close()
		return nil, fmt.Errorf("connack: type %d %v %v", typ, p, err)
	}
	return c, nil
}

func (c *rawClient) subscribe(filter string) error {
	body := []byte{0, 1}
	body = appendStr(body, filter)
	body = append(body, 0)
	pkt := appendVarint([]byte{0x82}, len(body))
	pkt = append(pkt, body...)
	if _, err := c.conn.Write(pkt); err != nil {
		return err
	}
	typ, p, err := c.readPacket(nil)
	if err != nil || typ != 9 || len(p) < 3 || p[2] >= 0x80 {
		return fmt.Errorf("suback: type %d %v %v", typ, p, err)
	}
	return nil
}

// publishPacket returns a pre-encoded QoS 0 PUBLISH with room for an
// 8-byte timestamp at the end of the payload.
func publishPacket(topic string, payloadLen int) (pkt []byte, tsOff int) {
	body := appendStr(nil, topic)
	body = append(body, make([]byte, payloadLen)...)
	pkt = appendVarint([]byte{0x30}, len(body))
	pkt = append(pkt, body...)
	return pkt, len(pkt) - 8
}

// readPacket reads one packet and returns its type and body (reusing buf).
func (c *rawClient) readPacket(buf []byte) (byte, []byte, error) {
	h, err := c.r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, mult := 0, 1
	for i := 0; ; i++ {
		b, err := c.r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		n += int(b&0x7f) * mult
		if b&0x80 == 0 {
			break
		}
		mult *= 128
		if i > 3 {
			return 0, nil, errors.New("bad remaining length")
		}
	}
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(c.r, buf); err != nil {
		return 0, nil, err
	}
	return h >> 4, buf, nil
}

func (c *rawClient) close() { c.conn.Close() }
