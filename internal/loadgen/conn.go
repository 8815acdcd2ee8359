package loadgen

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

var (
	// ErrRefused is returned (wrapped in a *ConnackError) when the broker
	// answers CONNECT with a non-zero reason code.
	ErrRefused = errors.New("broker refused the connection")
	// ErrNotAuthorized is returned (wrapped in a *ConnackError) when the
	// broker refuses the credentials: MQTT 3.1.1 codes 4 and 5, MQTT 5
	// codes 0x86 and 0x87.
	ErrNotAuthorized = errors.New("bad username or password, or not authorized")
	// ErrClosedBeforeConnack is returned when the broker closes the
	// connection without answering CONNECT (some brokers do this for bad
	// credentials or an unsupported protocol version).
	ErrClosedBeforeConnack = errors.New("broker closed the connection before CONNACK")
	// ErrSubscribeRefused is returned when SUBACK refuses the subscription.
	ErrSubscribeRefused = errors.New("broker refused the subscription")
)

// ConnackError is a CONNACK with a non-zero return or reason code.
type ConnackError struct {
	Code   byte
	V5     bool
	Reason string // MQTT 5 Reason String, if the broker sent one
}

var connackV3 = map[byte]string{1: "unacceptable protocol version", 2: "identifier rejected",
	3: "server unavailable", 4: "bad user name or password", 5: "not authorized"}

var connackV5 = map[byte]string{0x80: "unspecified error", 0x81: "malformed packet", 0x82: "protocol error",
	0x83: "implementation specific error", 0x84: "unsupported protocol version", 0x85: "client identifier not valid",
	0x86: "bad user name or password", 0x87: "not authorized", 0x88: "server unavailable", 0x89: "server busy",
	0x8A: "banned", 0x8C: "bad authentication method", 0x90: "topic name invalid", 0x95: "packet too large",
	0x97: "quota exceeded", 0x99: "payload format invalid", 0x9A: "retain not supported", 0x9B: "QoS not supported",
	0x9C: "use another server", 0x9D: "server moved", 0x9F: "connection rate exceeded"}

func (e *ConnackError) Error() string {
	name := connackV3[e.Code]
	if e.V5 || e.Code >= 0x80 {
		name = connackV5[e.Code]
	}
	if name == "" {
		name = "unknown reason"
	}
	s := fmt.Sprintf("%v: CONNACK code 0x%02x (%s)", ErrRefused, e.Code, name)
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	return s
}

// Is reports ErrRefused for every code and ErrNotAuthorized for the
// credential codes.
func (e *ConnackError) Is(target error) bool {
	switch target {
	case ErrRefused:
		return true
	case ErrNotAuthorized:
		return e.Code == 4 || e.Code == 5 || e.Code == 0x86 || e.Code == 0x87
	}
	return false
}

// endpoint is a parsed broker URL.
type endpoint struct {
	raw     string
	network string // "tcp" or "unix"
	address string
	tls     *tls.Config
	wsURL   string // set for ws:// and wss://
}

// parseEndpoint parses tcp://, mqtt://, ssl://, tls://, mqtts://, unix://,
// ws:// and wss:// broker URLs.
func parseEndpoint(raw string, tlsCfg *tls.Config) (endpoint, error) {
	e := endpoint{raw: raw, network: "tcp"}
	if strings.HasPrefix(raw, "unix:") {
		p := strings.TrimPrefix(strings.TrimPrefix(raw, "unix:"), "//")
		if p == "" {
			return e, fmt.Errorf("url %q: empty socket path", raw)
		}
		e.network, e.address = "unix", p
		return e, nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return e, fmt.Errorf("url %q: %w", raw, err)
	}
	if u.Host == "" {
		return e, fmt.Errorf("url %q: missing host (want e.g. tcp://127.0.0.1:1883)", raw)
	}
	port := u.Port()
	switch u.Scheme {
	case "tcp", "mqtt":
		if port == "" {
			port = "1883"
		}
	case "ssl", "tls", "mqtts":
		if port == "" {
			port = "8883"
		}
		e.tls = tlsCfg
	case "ws", "wss":
		if u.Path == "" {
			u.Path = "/"
		}
		e.wsURL = u.String()
		if u.Scheme == "wss" {
			e.tls = tlsCfg
		}
	default:
		return e, fmt.Errorf("url %q: unsupported scheme %q (tcp, ssl, unix, ws, wss)", raw, u.Scheme)
	}
	e.address = net.JoinHostPort(u.Hostname(), port)
	if e.tls != nil && e.tls.ServerName == "" && !e.tls.InsecureSkipVerify {
		c := e.tls.Clone()
		c.ServerName = u.Hostname()
		e.tls = c
	}
	return e, nil
}

// tlsConfig builds the client TLS configuration from PEM files.
func tlsConfig(caFile, certFile, keyFile string, insecure bool) (*tls.Config, error) {
	c := &tls.Config{InsecureSkipVerify: insecure, MinVersion: tls.VersionTLS12} //nolint:gosec // opt-in flag
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("cacert: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("cacert %s: no PEM certificate found", caFile)
		}
		c.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("cert and key: give both or neither")
	}
	if certFile != "" {
		kp, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("cert %s / key %s: %w", certFile, keyFile, err)
		}
		c.Certificates = []tls.Certificate{kp}
	}
	return c, nil
}

func (e endpoint) dial(ctx context.Context) (net.Conn, error) {
	if e.wsURL != "" {
		d := websocket.Dialer{Subprotocols: []string{"mqtt"}, TLSClientConfig: e.tls,
			ReadBufferSize: 32 << 10, WriteBufferSize: 32 << 10}
		ws, resp, err := d.DialContext(ctx, e.wsURL, nil)
		if resp != nil && resp.Body != nil {
			resp.Body.Close()
		}
		if err != nil {
			return nil, err
		}
		return &wsConn{Conn: ws}, nil
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, e.network, e.address)
	if err != nil {
		return nil, err
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	if e.tls != nil {
		tc := tls.Client(nc, e.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("TLS handshake: %w", err)
		}
		return tc, nil
	}
	return nc, nil
}

// wsConn adapts a WebSocket connection to net.Conn: MQTT packets travel in
// binary messages and may span message boundaries.
type wsConn struct {
	*websocket.Conn
	r io.Reader
}

func (c *wsConn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			_, r, err := c.Conn.NextReader()
			if err != nil {
				var ce *websocket.CloseError
				if errors.As(err, &ce) {
					return 0, io.EOF
				}
				return 0, err
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if err == io.EOF {
			c.r = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

func (c *wsConn) Write(p []byte) (int, error) {
	if err := c.Conn.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *wsConn) SetDeadline(t time.Time) error {
	if err := c.Conn.SetReadDeadline(t); err != nil {
		return err
	}
	return c.Conn.SetWriteDeadline(t)
}

// client is one MQTT connection of the load generator.
type client struct {
	id  string
	nc  net.Conn
	pr  *packetReader
	wmu sync.Mutex // guards w when two goroutines write (subscriber acks and pings)
	w   *bufio.Writer
	v5  bool
	ack connack
}

// connect dials the broker, sends CONNECT and waits for a successful CONNACK.
func connect(ctx context.Context, ep endpoint, o connectOptions, timeout time.Duration, readBuf, writeBuf, maxPacket int) (*client, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	nc, err := ep.dial(ctx)
	if err != nil {
		return nil, err
	}
	c := &client{id: o.clientID, nc: nc, pr: newPacketReader(nc, readBuf, maxPacket),
		w: bufio.NewWriterSize(nc, writeBuf), v5: o.version == protoV5}
	deadline, _ := ctx.Deadline()
	_ = nc.SetDeadline(deadline)
	if _, err := c.w.Write(encodeConnect(o)); err != nil {
		nc.Close()
		return nil, fmt.Errorf("send CONNECT: %w", err)
	}
	if err := c.w.Flush(); err != nil {
		nc.Close()
		return nil, fmt.Errorf("send CONNECT: %w", err)
	}
	h, body, err := c.pr.next()
	if err != nil {
		nc.Close()
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isConnReset(err) {
			return nil, ErrClosedBeforeConnack
		}
		return nil, fmt.Errorf("wait for CONNACK: %w", err)
	}
	if h>>4 != typeConnack {
		nc.Close()
		return nil, malformed(packetNames[h>>4], "received instead of CONNACK")
	}
	ack, err := parseConnack(body, c.v5)
	if err != nil {
		nc.Close()
		return nil, err
	}
	if ack.code != 0 {
		nc.Close()
		return nil, &ConnackError{Code: ack.code, V5: c.v5 && len(body) > 2 || ack.code >= 0x80, Reason: ack.reason}
	}
	c.ack = ack
	_ = nc.SetDeadline(time.Time{})
	return c, nil
}

func isConnReset(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && strings.Contains(oe.Err.Error(), "reset")
}

// subscribe sends one SUBSCRIBE and waits for its SUBACK; it returns the
// granted QoS. Call before the reader goroutine starts.
func (c *client) subscribe(filter string, qos byte, timeout time.Duration) (byte, error) {
	_ = c.nc.SetDeadline(time.Now().Add(timeout))
	defer c.nc.SetDeadline(time.Time{})
	if _, err := c.w.Write(encodeSubscribe(1, filter, qos, c.v5)); err != nil {
		return 0, fmt.Errorf("send SUBSCRIBE: %w", err)
	}
	if err := c.w.Flush(); err != nil {
		return 0, fmt.Errorf("send SUBSCRIBE: %w", err)
	}
	for {
		h, body, err := c.pr.next()
		if err != nil {
			return 0, fmt.Errorf("wait for SUBACK: %w", unexpectedEOF(err))
		}
		switch h >> 4 {
		case typeSuback:
			id, codes, reason, err := parseSuback(body, c.v5)
			if err != nil {
				return 0, err
			}
			if id != 1 {
				return 0, malformed("SUBACK", "packet identifier %d, want 1", id)
			}
			if codes[0] >= 0x80 {
				if reason != "" {
					return 0, fmt.Errorf("%w: %q: code 0x%02x: %s", ErrSubscribeRefused, filter, codes[0], reason)
				}
				return 0, fmt.Errorf("%w: %q: code 0x%02x", ErrSubscribeRefused, filter, codes[0])
			}
			return codes[0], nil
		case typePublish, typePingresp:
			// A retained message may arrive before SUBACK; it is not ours.
			if h>>4 == typePublish && (h>>1)&3 > 0 {
				p, err := parsePublish(h&0x0f, body, c.v5)
				if err != nil {
					return 0, err
				}
				_, _ = c.w.Write(appendPuback(nil, p.packetID))
			}
		case typeDisconnect:
			code, reason, _ := parseDisconnect(body, c.v5)
			return 0, fmt.Errorf("broker sent DISCONNECT (code 0x%02x %s) instead of SUBACK", code, reason)
		default:
			return 0, malformed(packetNames[h>>4], "received while waiting for SUBACK")
		}
	}
}

// disconnect sends DISCONNECT (best effort) and closes the connection.
func (c *client) disconnect() {
	c.wmu.Lock()
	_ = c.nc.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = c.w.Write(disconnectPacket)
	_ = c.w.Flush()
	c.wmu.Unlock()
	_ = c.nc.Close()
}
