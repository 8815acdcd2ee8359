// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2023 mochi-mqtt, mochi-co
// SPDX-FileContributor: mochi-co

package mqtt

import (
	"sort"
	"sync"
	"sync/atomic"

	"github.com/mochi-mqtt/server/v2/packets"
)

// Inflight is a map of InflightMessage keyed on packet id.
//
// outpost: the two directions have separate packet identifier spaces
// (MQTT 5 section 2.2.1: the Client and the Server each assign their own
// Packet Identifiers). internal holds the server's side of flows the server
// started (PUBLISH and PUBREL it sent, by the ids it assigned); inbound holds
// its side of flows the client started (PUBREC awaiting the client's PUBREL,
// and transient PUBACK/PUBCOMP), by the client's ids. Upstream kept both in
// one map, so a client PUBLISH or SUBSCRIBE reusing an id the server had in
// flight to that client was refused with 0x91, or deleted the server's
// message.
type Inflight struct {
	sync.RWMutex
	internal            map[uint16]packets.Packet // internal contains the inflight packets
	inbound             map[uint16]packets.Packet // outpost: client-initiated flows, by the client's ids
	receiveQuota        int32                     // remaining inbound qos quota for flow control
	sendQuota           int32                     // remaining outbound qos quota for flow control
	maximumReceiveQuota int32                     // maximum allowed receive quota
	maximumSendQuota    int32                     // maximum allowed send quota
}

// NewInflights returns a new instance of an Inflight packets map.
func NewInflights() *Inflight {
	return &Inflight{
		internal: map[uint16]packets.Packet{},
		inbound:  map[uint16]packets.Packet{},
	}
}

// IsInbound reports whether an in-flight packet belongs to a flow the
// client started (the server's PUBACK, PUBREC or PUBCOMP for the client's
// PUBLISH), whose id is in the client's packet identifier space.
//
// outpost: see Inflight.
func IsInbound(pk packets.Packet) bool {
	switch pk.FixedHeader.Type {
	case packets.Puback, packets.Pubrec, packets.Pubcomp:
		return true
	}
	return false
}

// Set adds or updates an inflight packet by packet id, in the identifier
// space of its direction (see IsInbound).
func (i *Inflight) Set(m packets.Packet) bool {
	i.Lock()
	defer i.Unlock()

	space := i.internal
	if IsInbound(m) {
		space = i.inbound
	}
	_, ok := space[m.PacketID]
	space[m.PacketID] = m
	return !ok
}

// GetInbound returns the in-flight packet of a client-initiated flow by the
// client's packet id.
//
// outpost: see Inflight.
func (i *Inflight) GetInbound(id uint16) (packets.Packet, bool) {
	i.RLock()
	defer i.RUnlock()
	m, ok := i.inbound[id]
	return m, ok
}

// DeleteInbound removes the in-flight packet of a client-initiated flow by
// the client's packet id. Returns true if it existed.
//
// outpost: see Inflight.
func (i *Inflight) DeleteInbound(id uint16) bool {
	i.Lock()
	defer i.Unlock()
	_, ok := i.inbound[id]
	delete(i.inbound, id)
	return ok
}

// Remove removes pk from the identifier space of its direction. Returns true
// if it existed.
//
// outpost: see Inflight.
func (i *Inflight) Remove(pk packets.Packet) bool {
	if IsInbound(pk) {
		return i.DeleteInbound(pk.PacketID)
	}
	return i.Delete(pk.PacketID)
}

// Get returns an inflight packet by packet id (server-initiated flows).
func (i *Inflight) Get(id uint16) (packets.Packet, bool) {
	i.RLock()
	defer i.RUnlock()

	if m, ok := i.internal[id]; ok {
		return m, true
	}

	return packets.Packet{}, false
}

// Len returns the number of server-initiated flows in flight (messages sent
// or queued to the client awaiting acknowledgement).
func (i *Inflight) Len() int {
	i.RLock()
	defer i.RUnlock()
	return len(i.internal)
}

// Clone returns a new instance of Inflight with the same message data.
// This is used when transferring inflights from a taken-over session.
func (i *Inflight) Clone() *Inflight {
	c := NewInflights()
	i.RLock()
	defer i.RUnlock()
	for k, v := range i.internal {
		c.internal[k] = v
	}
	for k, v := range i.inbound {
		c.inbound[k] = v
	}
	return c
}

// GetAll returns all the inflight messages of both directions, or with
// immediate only the server's messages parked until the client's Receive
// Maximum allows sending them.
func (i *Inflight) GetAll(immediate bool) []packets.Packet {
	i.RLock()
	defer i.RUnlock()

	m := []packets.Packet{}
	for _, v := range i.internal {
		if !immediate || v.Parked { // outpost: Parked, not Expiry < 0, which lost the message's expiry
			m = append(m, v)
		}
	}
	if !immediate {
		for _, v := range i.inbound {
			m = append(m, v)
		}
	}

	sortPublishOrder(m)

	return m
}

// sortPublishOrder orders packets by creation second, then by packet id,
// treating ids as a sequence that may have wrapped past 65535.
//
// outpost: upstream sorted by uint16(Created) alone, so messages created in
// the same second were resent and released in random (map) order, against
// [MQTT-4.6.0-1]/[MQTT-4.6.0-2]-style ordering.
func sortPublishOrder(ps []packets.Packet) {
	lo, hi := uint16(65535), uint16(0)
	for _, p := range ps {
		lo, hi = min(lo, p.PacketID), max(hi, p.PacketID)
	}
	wrapped := hi-lo > 32768
	key := func(id uint16) int {
		if wrapped && id < 32768 {
			return int(id) + 65536
		}
		return int(id)
	}
	sort.Slice(ps, func(i, j int) bool {
		if ps[i].Created != ps[j].Created {
			return ps[i].Created < ps[j].Created
		}
		return key(ps[i].PacketID) < key(ps[j].PacketID)
	})
}

// NextImmediate returns the next inflight packet which is indicated to be sent immediately.
// This typically occurs when the quota has been exhausted, and we need to wait until new quota
// is free to continue sending.
func (i *Inflight) NextImmediate() (packets.Packet, bool) {
	// outpost: no RLock here; GetAll takes it, and a second RLock while a
	// writer waits deadlocks (as in Clients.GetByListener).
	m := i.GetAll(true)
	if len(m) > 0 {
		return m[0], true
	}

	return packets.Packet{}, false
}

// Delete removes an in-flight message of a server-initiated flow by packet
// id. Returns true if the message existed.
func (i *Inflight) Delete(id uint16) bool {
	i.Lock()
	defer i.Unlock()

	_, ok := i.internal[id]
	delete(i.internal, id)

	return ok
}

// TakeRecieveQuota reduces the receive quota by 1.
func (i *Inflight) DecreaseReceiveQuota() {
	if atomic.LoadInt32(&i.receiveQuota) > 0 {
		atomic.AddInt32(&i.receiveQuota, -1)
	}
}

// TakeRecieveQuota increases the receive quota by 1.
func (i *Inflight) IncreaseReceiveQuota() {
	if atomic.LoadInt32(&i.receiveQuota) < atomic.LoadInt32(&i.maximumReceiveQuota) {
		atomic.AddInt32(&i.receiveQuota, 1)
	}
}

// ResetReceiveQuota resets the receive quota to the maximum allowed value.
func (i *Inflight) ResetReceiveQuota(n int32) {
	atomic.StoreInt32(&i.receiveQuota, n)
	atomic.StoreInt32(&i.maximumReceiveQuota, n)
}

// DecreaseSendQuota reduces the send quota by 1.
func (i *Inflight) DecreaseSendQuota() {
	if atomic.LoadInt32(&i.sendQuota) > 0 {
		atomic.AddInt32(&i.sendQuota, -1)
	}
}

// IncreaseSendQuota increases the send quota by 1.
func (i *Inflight) IncreaseSendQuota() {
	if atomic.LoadInt32(&i.sendQuota) < atomic.LoadInt32(&i.maximumSendQuota) {
		atomic.AddInt32(&i.sendQuota, 1)
	}
}

// ResetSendQuota resets the send quota to the maximum allowed value.
func (i *Inflight) ResetSendQuota(n int32) {
	atomic.StoreInt32(&i.sendQuota, n)
	atomic.StoreInt32(&i.maximumSendQuota, n)
}
