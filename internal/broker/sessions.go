package broker

import (
	"bytes"
	"math/rand/v2"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// This file holds the checks that keep one principal from acting through
// another's state: wills (a deferred publish), sessions (owned by the user
// that created them), shared subscription groups (members with different
// ACLs), and the size bounds that keep one client from filling the broker's
// stores. docs/broker.md "Attacks we test" lists the attacks they stop.

// connectLimits refuses, before authentication, a CONNECT whose client id
// or will topic is longer than the configured limits (keys of the
// persistence file must stay bounded). It sends the CONNACK itself (as
// OnConnect must); MQTT 3.1.1 has no code for a bad will topic, so that
// connection is closed without one.
func (h *hook) connectLimits(srv *mqtt.Server, cl *mqtt.Client, pk packets.Packet, lim Limits) error {
	var code packets.Code
	switch {
	case len(cl.ID) > lim.MaxClientIDLength:
		h.b.m.limitRefused("client_id_length").Inc()
		code = packets.ErrClientIdentifierNotValid
	case pk.Connect.WillFlag && len(pk.Connect.WillTopic) > lim.MaxTopicLength:
		h.b.m.limitRefused("topic_length").Inc()
		code = packets.ErrTopicNameInvalid
	default:
		return nil
	}
	if _, v3 := packets.V5CodesToV3[code]; cl.Properties.ProtocolVersion == 5 || v3 {
		_ = srv.SendConnack(cl, code, false, nil)
	}
	return code
}

// OnConnectAuthorize runs after authentication, before the session is set
// up (fork patch 20). It refuses:
//
//   - a will topic with wildcards (a protocol error: 0x82; 3.1.1 closes the
//     connection), on a $ topic, or one the client's publish ACL denies
//     (0x87; 3.1.1: 5 not authorized). The will is checked again when it
//     fires (fork patch 21), as the ACL may have been reloaded meanwhile.
//   - a client id whose session belongs to another user (foreign_session:
//     refuse), or makes the newcomer start fresh (foreign_session: fresh).
//     The owner is the session's username, which the store persists.
func (h *hook) OnConnectAuthorize(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	b := h.b
	if pk.Connect.WillFlag {
		w := pk.Connect.WillTopic
		switch {
		case strings.ContainsAny(w, "+#"):
			b.m.connectRefused("will_topic_invalid").Inc()
			b.logRefusal(cl, "will topic has wildcards", w)
			return pk, packets.ErrProtocolViolation
		case !mqtt.IsValidFilter(w, true) || !h.OnACLCheck(cl, w, true):
			b.m.connectRefused("will_not_authorized").Inc()
			b.logRefusal(cl, "will topic not allowed by the publish ACL", w)
			return pk, packets.ErrNotAuthorized
		}
	}
	srv, cfg := b.server(), b.conf.Load()
	if srv == nil || cfg == nil {
		return pk, nil
	}
	if old, ok := srv.Clients.Get(cl.ID); ok && !bytes.Equal(old.Properties.Username, cl.Properties.Username) {
		if cfg.ForeignSession == ForeignSessionFresh {
			b.m.connectRefused("foreign_session_replaced").Inc()
			pk.Connect.Clean = true // mochi discards the old session and disconnects its client
			return pk, nil
		}
		b.m.connectRefused("foreign_session").Inc()
		b.logRefusal(cl, "client id belongs to another user's session", "")
		return pk, packets.ErrNotAuthorized
	}
	return pk, nil
}

func (b *Broker) logRefusal(cl *mqtt.Client, why, topic string) {
	if b.logOnce.first("refused:" + cl.ID + ":" + why) {
		b.log.Warn("broker: connection refused", "client", cl.ID, "user", string(cl.Properties.Username),
			"remote", cl.Net.Remote, "reason", why, "topic", topic)
	}
}

// OnWill keeps a will from adding a new retained topic to a full retained
// store: it is then published without retain (counted).
func (h *hook) OnWill(cl *mqtt.Client, w mqtt.Will) (mqtt.Will, error) {
	if w.Retain && len(w.Payload) > 0 && !h.b.retainFits(w.TopicName, len(w.Payload)) {
		w.Retain = false
	}
	return w, nil
}

// retainFits reports whether a retained message on topic with n payload
// bytes fits in the retained store's limits (count and bytes). Replacing a
// topic's message with one no larger always fits. Concurrent publishers may
// overshoot the limit by one message each.
func (b *Broker) retainFits(topic string, n int) bool {
	srv, cfg := b.server(), b.conf.Load()
	if srv == nil || cfg == nil {
		return true
	}
	st := srv.Topics.Retained
	grow := int64(len(topic) + n)
	if old, ok := st.Get(topic); ok {
		grow -= int64(len(old.TopicName) + len(old.Payload))
	} else if st.Len() >= cfg.Limits.MaxRetained {
		b.m.limitRefused("max_retained").Inc()
		return false
	}
	if grow > 0 && st.Bytes()+grow > int64(cfg.Limits.MaxRetainedBytes) {
		b.m.limitRefused("max_retained_bytes").Inc()
		return false
	}
	return true
}

// OnSelectSubscribers picks the member of each shared subscription group
// that gets a message among the members allowed to read it (connected ones
// first), so the choice of member never loses a message to the ACL. mochi
// would pick any member and the delivery-time ACL check would then drop the
// message when that member may not read it. A group none of whose members
// may read the message gets nothing, as a plain subscription would.
func (h *hook) OnSelectSubscribers(subs *mqtt.Subscribers, pk packets.Packet) *mqtt.Subscribers {
	srv := h.b.server()
	if srv == nil || len(subs.Shared) == 0 {
		return subs
	}
	if subs.SharedSelected == nil {
		subs.SharedSelected = map[string]packets.Subscription{}
	}
	var online, offline []string
	for _, members := range subs.Shared {
		online, offline = online[:0], offline[:0]
		for id := range members {
			cl, ok := srv.Clients.Get(id)
			if !ok || !h.mayReceive(cl, pk.TopicName) {
				continue
			}
			if cl.Closed() || cl.Net.Conn == nil {
				offline = append(offline, id)
			} else {
				online = append(online, id)
			}
		}
		pick := online
		if len(pick) == 0 {
			pick = offline
		}
		if len(pick) == 0 {
			h.b.m.dropped("shared_no_member_allowed").Inc()
			continue
		}
		id := pick[rand.IntN(len(pick))]
		sub := members[id]
		if prev, ok := subs.SharedSelected[id]; ok {
			sub = prev.Merge(sub)
		}
		subs.SharedSelected[id] = sub
	}
	return subs
}

// mayReceive is the delivery ACL check without its denial counter (a member
// passed over is not a denial).
func (h *hook) mayReceive(cl *mqtt.Client, topic string) bool {
	if cl.Net.Inline {
		return true
	}
	a, user := h.b.aclFor(cl)
	return a.canReceive(user, cl.ID, topic)
}
