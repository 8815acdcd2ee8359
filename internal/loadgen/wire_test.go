package loadgen

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func TestEncodeConnect(t *testing.T) {
	got := encodeConnect(connectOptions{version: protoV311, clientID: "c1", username: "u", password: "pw", keepAlive: 60})
	want := []byte{
		0x10, 21, // CONNECT, remaining length
		0, 4, 'M', 'Q', 'T', 'T', // protocol name
		4,     // level 3.1.1
		0xc2,  // username, password, clean session
		0, 60, // keep alive
		0, 2, 'c', '1', // client id
		0, 1, 'u', // username
		0, 2, 'p', 'w', // password
	}
	if !bytes.Equal(got, want) {
		t.Errorf("v3 CONNECT\n got % x\nwant % x", got, want)
	}
	got = encodeConnect(connectOptions{version: protoV5, clientID: "c", maxPacketSize: 1 << 20})
	want = []byte{
		0x10, 19,
		0, 4, 'M', 'Q', 'T', 'T',
		5,    // level 5
		0x02, // clean start
		0, 0, // keep alive
		5, 0x27, 0, 0x10, 0, 0, // properties: maximum packet size 1 MiB
		0, 1, 'c',
	}
	if !bytes.Equal(got, want) {
		t.Errorf("v5 CONNECT\n got % x\nwant % x", got, want)
	}
}

func TestEncodeSubscribe(t *testing.T) {
	got := encodeSubscribe(1, "a/+", 1, false)
	want := []byte{0x82, 8, 0, 1, 0, 3, 'a', '/', '+', 1}
	if !bytes.Equal(got, want) {
		t.Errorf("v3 SUBSCRIBE % x, want % x", got, want)
	}
	got = encodeSubscribe(7, "a", 0, true)
	want = []byte{0x82, 7, 0, 7, 0 /* no properties */, 0, 1, 'a', 0}
	if !bytes.Equal(got, want) {
		t.Errorf("v5 SUBSCRIBE % x, want % x", got, want)
	}
}

func TestPublishTemplateRoundTrip(t *testing.T) {
	for _, v5 := range []bool{false, true} {
		for _, qos := range []byte{0, 1} {
			payload := bytes.Repeat([]byte{'z'}, 300) // remaining length needs 2 bytes
			tm := newPublishTemplate("bench/c/sensors/0", qos, v5, payload)
			if qos == 1 {
				tm.setPacketID(0xbeef)
			}
			copy(tm.payload(), "hello")
			pr := newPacketReader(bytes.NewReader(tm.buf), 512, 1<<20)
			h, body, err := pr.next()
			if err != nil {
				t.Fatal(err)
			}
			if h>>4 != typePublish {
				t.Fatalf("type %d", h>>4)
			}
			p, err := parsePublish(h&0x0f, body, v5)
			if err != nil {
				t.Fatalf("v5=%v qos=%d: %v", v5, qos, err)
			}
			if string(p.topic) != "bench/c/sensors/0" || p.qos != qos || len(p.payload) != 300 || !bytes.HasPrefix(p.payload, []byte("hello")) {
				t.Errorf("v5=%v qos=%d: got topic %q qos %d payload %d", v5, qos, p.topic, p.qos, len(p.payload))
			}
			if qos == 1 && p.packetID != 0xbeef {
				t.Errorf("packet id %x", p.packetID)
			}
		}
	}
}

func TestParseConnack(t *testing.T) {
	c, err := parseConnack([]byte{0x01, 0x00}, false)
	if err != nil || !c.sessionPresent || c.code != 0 {
		t.Errorf("v3: %+v %v", c, err)
	}
	if _, err := parseConnack([]byte{0x00, 0x00, 0x00}, false); !errors.Is(err, ErrMalformed) {
		t.Errorf("v3 with 3 bytes: %v", err)
	}
	if _, err := parseConnack([]byte{0x02, 0x00}, false); !errors.Is(err, ErrMalformed) {
		t.Errorf("reserved flags: %v", err)
	}
	body := []byte{0x00, 0x00,
		17,             // property length
		0x21, 0x00, 20, // receive maximum 20
		0x24, 1, // maximum QoS 1
		0x27, 0, 0, 1, 0, // maximum packet size 256
		0x1F, 0, 2, 'h', 'i', // reason string
		0x28, 1, // wildcard subscription available (skipped)
	}
	c, err = parseConnack(body, true)
	if err != nil {
		t.Fatal(err)
	}
	if c.receiveMax != 20 || c.maxQoS != 1 || c.maxPacketSize != 256 || c.reason != "hi" {
		t.Errorf("v5 props: %+v", c.props)
	}
	if _, err := parseConnack([]byte{0, 0, 3, 0x21, 0}, true); !errors.Is(err, ErrMalformed) {
		t.Errorf("property length past end: %v", err)
	}
	if _, err := parseConnack([]byte{0, 0, 1, 0x7f}, true); err == nil || !strings.Contains(err.Error(), "unknown property 0x7f") {
		t.Errorf("unknown property: %v", err)
	}
}

func TestParseAckSubackDisconnect(t *testing.T) {
	if id, code, err := parseAck("PUBACK", []byte{0x12, 0x34}, false); err != nil || id != 0x1234 || code != 0 {
		t.Errorf("v3 PUBACK: %x %x %v", id, code, err)
	}
	if id, code, err := parseAck("PUBACK", []byte{0, 9, 0x87, 0}, true); err != nil || id != 9 || code != 0x87 {
		t.Errorf("v5 PUBACK: %x %x %v", id, code, err)
	}
	if _, _, err := parseAck("PUBACK", []byte{0}, true); !errors.Is(err, ErrMalformed) {
		t.Errorf("short PUBACK: %v", err)
	}
	id, codes, _, err := parseSuback([]byte{0, 1, 0x80}, false)
	if err != nil || id != 1 || !bytes.Equal(codes, []byte{0x80}) {
		t.Errorf("v3 SUBACK: %d % x %v", id, codes, err)
	}
	id, codes, reason, err := parseSuback([]byte{0, 1, 4, 0x1F, 0, 1, 'x', 0x01}, true)
	if err != nil || id != 1 || !bytes.Equal(codes, []byte{1}) || reason != "x" {
		t.Errorf("v5 SUBACK: %d % x %q %v", id, codes, reason, err)
	}
	if _, _, _, err := parseSuback([]byte{0, 1, 0}, true); !errors.Is(err, ErrMalformed) {
		t.Errorf("SUBACK without codes: %v", err)
	}
	code, reason, err := parseDisconnect([]byte{0x8e, 4, 0x1F, 0, 1, 'y'}, true)
	if err != nil || code != 0x8e || reason != "y" {
		t.Errorf("v5 DISCONNECT: %x %q %v", code, reason, err)
	}
}

func TestParsePublishErrors(t *testing.T) {
	cases := []struct {
		name  string
		flags byte
		body  []byte
		v5    bool
	}{
		{"qos 3", 0x06, []byte{0, 1, 'a'}, false},
		{"no topic length", 0, []byte{0}, false},
		{"topic past end", 0, []byte{0, 5, 'a'}, false},
		{"missing packet id", 0x02, []byte{0, 1, 'a', 0}, false},
		{"packet id 0", 0x02, []byte{0, 1, 'a', 0, 0}, false},
		{"v5 properties past end", 0, []byte{0, 1, 'a', 9}, true},
	}
	for _, c := range cases {
		if _, err := parsePublish(c.flags, c.body, c.v5); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v", c.name, err)
		}
	}
}

func TestPacketReader(t *testing.T) {
	var stream []byte
	stream = append(stream, 0x20, 2, 0, 0)                       // CONNACK
	big := newPublishTemplate("t", 0, false, make([]byte, 5000)) // larger than the reader's buffer
	stream = append(stream, big.buf...)
	stream = append(stream, 0x40, 2, 0, 7) // PUBACK
	stream = append(stream, 0xd0, 0)       // PINGRESP
	// One byte at a time exercises every partial read.
	pr := newPacketReader(iotest.OneByteReader(bytes.NewReader(stream)), 16, 1<<20)
	want := []struct {
		typ  byte
		size int
	}{{typeConnack, 2}, {typePublish, 5003}, {typePuback, 2}, {typePingresp, 0}}
	for i, w := range want {
		h, body, err := pr.next()
		if err != nil {
			t.Fatalf("packet %d: %v", i, err)
		}
		if h>>4 != w.typ || len(body) != w.size {
			t.Errorf("packet %d: type %d size %d, want %d %d", i, h>>4, len(body), w.typ, w.size)
		}
	}
	if _, _, err := pr.next(); err != io.EOF {
		t.Errorf("at end: %v, want io.EOF", err)
	}

	pr = newPacketReader(bytes.NewReader([]byte{0x30, 0x80, 0x80, 0x80, 0x80, 0x01}), 16, 1<<20)
	if _, _, err := pr.next(); !errors.Is(err, ErrMalformed) {
		t.Errorf("5-byte remaining length: %v", err)
	}
	pr = newPacketReader(bytes.NewReader([]byte{0x30, 0xff, 0x7f}), 16, 1000)
	if _, _, err := pr.next(); !errors.Is(err, ErrPacketTooLarge) {
		t.Errorf("too large: %v", err)
	}
	pr = newPacketReader(bytes.NewReader([]byte{0x30, 10, 0, 1}), 16, 1000)
	if _, _, err := pr.next(); err != io.ErrUnexpectedEOF {
		t.Errorf("truncated body: %v", err)
	}
}
