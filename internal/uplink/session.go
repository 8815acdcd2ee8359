package uplink

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho/log"
	pahosession "github.com/eclipse/paho.golang/paho/session"
)

// session is the paho.golang session manager of one uplink: it owns the
// in-flight window and the packet identifiers. paho's Client runs the
// connection (CONNECT/CONNACK, keep alive, the read loop, SUBSCRIBE, server
// DISCONNECT) and hands every acknowledgement to PacketReceived; the uplink
// writes its PUBLISH packets itself, batched, in lane order (see sender).
//
// Unlike paho's default state it keeps nothing across connections: an
// unacknowledged record stays in its lane queue and is resent after Rewind
// on the next connection (MQTT-4.4.0-1 allows a fresh packet identifier for
// a QoS 1 resend: the broker treats it as a new message, a duplicate).
type session struct {
	log   *slog.Logger
	onAck func(p pend, code byte, reason string) // called without the lock, from paho's reader
	freed chan struct{}                          // signalled (cap 1) when a slot frees

	mu        sync.Mutex
	w         *lockedConn // nil while disconnected
	window    int         // max publishes in flight: min(config, server Receive Maximum)
	inflight  int
	slots     []pend // indexed by packet identifier
	next      int    // next identifier to try
	ctrl      map[uint16]chan<- packets.ControlPacket
	nack      map[uint16]byte // downlink: reason code for the PUBACK of this identifier
	maxPkt    uint32          // server Maximum Packet Size (0 = none)
	retainOK  bool
	maxQoS    byte
	cfgWindow int // configured window
}

// pend is one outstanding packet identifier.
type pend struct {
	used bool
	ctrl bool  // SUBSCRIBE/UNSUBSCRIBE, not a publish
	lane int32 // index into Uplink.lanes
	size int32 // PUBLISH bytes on the wire
	seq  uint64
	data []byte // the record's bytes, kept for a retry after a negative PUBACK
	time time.Time
}

var _ pahosession.SessionManager = (*session)(nil)

func newSession(lg *slog.Logger, inFlight int, onAck func(pend, byte, string)) *session {
	return &session{log: lg, onAck: onAck, cfgWindow: inFlight, freed: make(chan struct{}, 1),
		ctrl: map[uint16]chan<- packets.ControlPacket{}, nack: map[uint16]byte{}}
}

// ConAckReceived starts a connection: the window is sized from the
// broker's Receive Maximum (MQTT 5.0 §3.2.2.3.3; absent = 65535).
func (s *session) ConAckReceived(w io.Writer, _ *packets.Connect, ca *packets.Connack) error {
	lc, ok := w.(*lockedConn)
	if !ok {
		return errors.New("uplink: session used with an unexpected connection type")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	recvMax := 65535
	s.maxPkt, s.retainOK, s.maxQoS = 0, true, 2
	if p := ca.Properties; p != nil {
		if p.ReceiveMaximum != nil && *p.ReceiveMaximum > 0 {
			recvMax = int(*p.ReceiveMaximum)
		}
		if p.MaximumPacketSize != nil {
			s.maxPkt = *p.MaximumPacketSize
		}
		if p.RetainAvailable != nil {
			s.retainOK = *p.RetainAvailable == 1
		}
		if p.MaximumQOS != nil {
			s.maxQoS = *p.MaximumQOS
		}
	}
	s.window = min(s.cfgWindow, recvMax)
	s.slots = make([]pend, min(65535, 2*s.window+16)+1)
	s.next = 1
	s.inflight = 0
	s.w = lc
	clear(s.ctrl)
	clear(s.nack)
	return nil
}

// ConnectionLost forgets every outstanding identifier: the records stay
// unacknowledged in their lanes and are resent after Rewind.
func (s *session) ConnectionLost(*packets.Disconnect) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.w = nil
	for id, ch := range s.ctrl {
		select {
		case ch <- packets.ControlPacket{}: // paho reads a zero packet as "shut down"
		default:
		}
		delete(s.ctrl, id)
	}
	for i := range s.slots {
		s.slots[i] = pend{}
	}
	s.inflight = 0
	return nil
}

// reserve allocates a packet identifier for a publish if the window allows
// (limit may be below the window to keep slots for higher lanes).
func (s *session) reserve(p pend, limit int) (uint16, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.w == nil || s.inflight >= min(limit, s.window) {
		return 0, false
	}
	id, ok := s.allocLocked()
	if !ok {
		return 0, false
	}
	p.used = true
	s.slots[id] = p
	s.inflight++
	return id, true
}

func (s *session) allocLocked() (uint16, bool) {
	n := len(s.slots) - 1
	for range n {
		id := s.next
		s.next++
		if s.next > n {
			s.next = 1
		}
		if !s.slots[id].used {
			return uint16(id), true
		}
	}
	return 0, false
}

// state returns the window, the publishes in flight and the broker limits.
func (s *session) state() (window, inflight int, maxPkt uint32, retainOK bool, maxQoS byte, up bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.window, s.inflight, s.maxPkt, s.retainOK, s.maxQoS, s.w != nil
}

// AddToSession registers SUBSCRIBE and UNSUBSCRIBE packets sent by paho.
// Publishes never go through paho's Publish.
func (s *session) AddToSession(_ context.Context, p pahosession.Packet, resp chan<- packets.ControlPacket) error {
	if p.Type() == packets.PUBLISH {
		return errors.New("uplink: publishes are written by the uplink, not through paho.Publish")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.w == nil {
		return pahosession.ErrNoConnection
	}
	id, ok := s.allocLocked()
	if !ok {
		return pahosession.ErrPacketIdentifiersExhausted
	}
	s.slots[id] = pend{used: true, ctrl: true}
	s.ctrl[id] = resp
	p.SetIdentifier(id)
	return nil
}

// PacketReceived handles acknowledgements and downlink publishes.
func (s *session) PacketReceived(cp *packets.ControlPacket, pubs chan<- *packets.Publish) error {
	switch p := cp.Content.(type) {
	case *packets.Puback:
		s.mu.Lock()
		var pd pend
		if int(p.PacketID) < len(s.slots) && s.slots[p.PacketID].used && !s.slots[p.PacketID].ctrl {
			pd = s.slots[p.PacketID]
			s.slots[p.PacketID] = pend{}
			s.inflight--
		}
		// Wake the sender when a full window gets its first free slot (it
		// then waits at most coalesceWait for a refill batch, see
		// coalesce), when a refill batch is free, and when nothing is in
		// flight (drainInflight). Between those, waking it for every
		// PUBACK of a large window did nothing but cost a cross-thread
		// wake-up each: a tenth of the agent's CPU while draining a backlog.
		free := s.window - s.inflight
		wake := s.inflight == 0 || free == 1 || free >= refillBatch(s.window)
		s.mu.Unlock()
		if !pd.used {
			s.log.Debug("uplink: PUBACK for unknown packet identifier", "packet_id", p.PacketID)
			return nil
		}
		var reason string
		if p.Properties != nil {
			reason = p.Properties.ReasonString
		}
		s.onAck(pd, p.ReasonCode, reason)
		if wake {
			select {
			case s.freed <- struct{}{}:
			default:
			}
		}
	case *packets.Suback, *packets.Unsuback:
		id := cp.PacketID()
		s.mu.Lock()
		ch, ok := s.ctrl[id]
		delete(s.ctrl, id)
		if ok && int(id) < len(s.slots) {
			s.slots[id] = pend{}
		}
		s.mu.Unlock()
		if ok {
			select {
			case ch <- *cp:
			default:
			}
		}
	case *packets.Publish:
		pubs <- p
	case *packets.Pubrel: // QoS 2 downlink (we subscribe with QoS <= 1; tolerate a broker that upgrades)
		s.write(&packets.Pubcomp{PacketID: p.PacketID})
	case *packets.Pubrec, *packets.Pubcomp:
		s.log.Debug("uplink: unexpected QoS 2 acknowledgement", "packet_id", cp.PacketID())
	}
	return nil
}

// setNack makes the next Ack of a downlink publish negative.
func (s *session) setNack(id uint16, code byte) {
	s.mu.Lock()
	s.nack[id] = code
	s.mu.Unlock()
}

// Ack acknowledges a downlink publish after the Downlink handled it.
func (s *session) Ack(pb *packets.Publish) error {
	s.mu.Lock()
	code := s.nack[pb.PacketID]
	delete(s.nack, pb.PacketID)
	s.mu.Unlock()
	switch pb.QoS {
	case 1:
		return s.write(&packets.Puback{PacketID: pb.PacketID, ReasonCode: code, Properties: &packets.Properties{}})
	case 2:
		return s.write(&packets.Pubrec{PacketID: pb.PacketID, ReasonCode: code, Properties: &packets.Properties{}})
	}
	return nil
}

type writerTo interface {
	WriteTo(io.Writer) (int64, error)
}

func (s *session) write(p writerTo) error {
	s.mu.Lock()
	w := s.w
	s.mu.Unlock()
	if w == nil {
		return pahosession.ErrNoConnection
	}
	_, err := p.WriteTo(w) // locks w (it is a sync.Locker)
	return err
}

func (s *session) Close() error              { return nil }
func (s *session) SetErrorLogger(log.Logger) {}
func (s *session) SetDebugLogger(log.Logger) {}

// lockedConn serialises writes: paho's packet writers lock it (it is a
// sync.Locker, see packets.ControlPacket.WriteTo) and the sender locks it
// around each batch. Every write has a deadline so a stalled network cannot
// block the keep-alive pinger behind the lock forever. Reads are buffered:
// paho's packet reader issues several small reads per packet, one syscall
// each without a buffer (a third of the uplink's CPU at 100k PUBACKs/s).
type lockedConn struct {
	net.Conn
	sync.Mutex
	timeout time.Duration
	br      *bufio.Reader // used by paho's single reader goroutine only
}

func newLockedConn(c net.Conn, timeout time.Duration) *lockedConn {
	return &lockedConn{Conn: c, timeout: timeout, br: bufio.NewReaderSize(c, 16<<10)}
}

func (c *lockedConn) Read(b []byte) (int, error) { return c.br.Read(b) }

func (c *lockedConn) Write(b []byte) (int, error) {
	if c.timeout > 0 {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(c.timeout))
	}
	return c.Conn.Write(b)
}

// writeBatch writes one batch of packets under the lock.
func (c *lockedConn) writeBatch(b []byte) error {
	c.Lock()
	defer c.Unlock()
	_, err := c.Write(b)
	return err
}
