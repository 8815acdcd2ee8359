package broker

import (
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Asynchronous QoS 1 acknowledgement.
//
// With Options.OnPublishAsync set, a QoS 1 publish from a network client is
// not acknowledged by mochi in the client's read loop. Instead:
//
//  1. the hook reserves a slot in the client's acker: at most the broker's
//     receive_maximum publishes may await their PUBACK. An MQTT 5 client
//     also takes one of its receive quota (mochi's count of unacknowledged
//     QoS>0 publishes), so one more publish than Receive Maximum gets
//     DISCONNECT 0x93 [MQTT-3.3.4-7], section 3.3.4; a 3.1.1 client, which
//     has no Receive Maximum, makes the read loop wait for a slot;
//  2. the message is handed to the pipeline, whose durable sinks group many
//     publishes into one fsync;
//  3. local subscribers get the message at once, through an inline client
//     that carries the publisher's client id (so No Local still works);
//  4. mochi is told to do nothing more with the packet;
//  5. when the pipeline reports the message durable (or refused), the acker
//     sends PUBACKs strictly in the order the publishes arrived
//     [MQTT-4.6.0-2], whatever order completions come in.
//
// A refusal becomes PUBACK 0x97 (MQTT 5) or a disconnect without PUBACK
// (3.1.1, which has no negative acknowledgement), so the client resends.
type acker struct {
	cl     *mqtt.Client
	inline *mqtt.Client // local fan-out with the publisher's id as origin
	slots  chan struct{}
	kick   chan struct{}
	stop   chan struct{}
	refuse func(error) packets.Code
	quota  bool // MQTT 5: publishes awaiting PUBACK count against the client's receive quota

	mu      sync.Mutex
	pending []*ackEntry // in arrival order

	acks []packets.Packet // writer's scratch, reused per batch
}

type ackEntry struct {
	id   uint16
	done bool
	code packets.Code
	err  error
}

func (b *Broker) ackerFor(srv *mqtt.Server, cl *mqtt.Client) *acker {
	b.ackMu.Lock()
	defer b.ackMu.Unlock()
	if a, ok := b.ackers[cl]; ok {
		return a
	}
	max := 64
	if cfg := b.conf.Load(); cfg != nil {
		max = cfg.Limits.ReceiveMaximum
	}
	a := &acker{cl: cl, inline: srv.NewClient(nil, cl.Net.Listener, cl.ID, true), slots: make(chan struct{}, max),
		kick: make(chan struct{}, 1), stop: make(chan struct{}), refuse: refusalCode,
		quota: cl.Properties.ProtocolVersion == 5}
	b.ackers[cl] = a
	go a.writer()
	return a
}

func (b *Broker) dropAcker(cl *mqtt.Client) {
	b.ackMu.Lock()
	a, ok := b.ackers[cl]
	delete(b.ackers, cl)
	b.ackMu.Unlock()
	if ok {
		close(a.stop)
	}
}

// reserve appends an entry for packet id, waiting for a free slot.
func (a *acker) reserve(id uint16) *ackEntry {
	if a.quota {
		a.cl.State.Inflight.DecreaseReceiveQuota()
	}
	a.slots <- struct{}{}
	e := &ackEntry{id: id}
	a.mu.Lock()
	a.pending = append(a.pending, e)
	a.mu.Unlock()
	return e
}

// complete records e's outcome. It never blocks: completions arrive on the
// durable queue's committer goroutine, which must not wait for a slow client.
// The acker's writer sends the PUBACKs that became due.
func (a *acker) complete(e *ackEntry, err error) {
	a.mu.Lock()
	e.done = true
	if err != nil {
		e.err = err
		e.code = a.refuse(err)
	}
	a.mu.Unlock()
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// writer sends PUBACKs for the completed prefix, in arrival order, and frees
// their receive-maximum slots.
func (a *acker) writer() {
	var ready []*ackEntry
	for {
		select {
		case <-a.stop:
			return
		case <-a.kick:
		}
		a.mu.Lock()
		n := 0
		for n < len(a.pending) && a.pending[n].done {
			n++
		}
		ready = append(ready[:0], a.pending[:n]...)
		a.pending = append(a.pending[:0], a.pending[n:]...)
		a.mu.Unlock()
		// Quota and slots return before the PUBACKs go out: a client that
		// publishes again the moment it reads one must find room.
		for range ready {
			if a.quota {
				a.cl.State.Inflight.IncreaseReceiveQuota()
			}
			<-a.slots
		}
		a.send(ready)
	}
}

// send writes the PUBACKs for ready, in order, with one write to the
// connection (one group commit typically completes hundreds at once; one
// write syscall each was a third of the agent's CPU at 60k msg/s).
func (a *acker) send(ready []*ackEntry) {
	if a.cl.Closed() || len(ready) == 0 {
		return
	}
	acks := a.acks[:0]
	for _, e := range ready {
		if e.err != nil && a.cl.Properties.ProtocolVersion < 5 {
			// 3.1.1: no negative PUBACK. Send the acknowledgements due
			// before it, then close the connection so the client resends
			// this message (and everything after it) on reconnect.
			_ = a.cl.WritePackets(acks)
			a.cl.Stop(e.code)
			return
		}
		ack := packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Puback},
			PacketID:    e.id,
		}
		if e.err != nil {
			ack.ReasonCode = e.code.Code
			ack.Properties.ReasonString = e.code.Reason
		}
		acks = append(acks, ack)
	}
	_ = a.cl.WritePackets(acks)
	clear(acks)
	a.acks = acks[:0]
}
