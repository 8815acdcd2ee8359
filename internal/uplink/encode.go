package uplink

import (
	"encoding/binary"

	"github.com/outpost-edge/outpost/internal/message"

	"github.com/outpost-edge/outpost/internal/mqttwire"
)

// MQTT v5 PUBLISH property identifiers (MQTT 5.0 §2.2.2.2).
const (
	propPayloadFormat   = 0x01
	propMessageExpiry   = 0x02
	propContentType     = 0x03
	propResponseTopic   = 0x08
	propCorrelationData = 0x09
	propUserProperty    = 0x26
)

// appendPublishProps appends the PUBLISH properties of m (without the
// length prefix). expiry is the remaining message expiry in seconds (0 =
// none).
func appendPublishProps(dst []byte, m *message.Message, expiry uint32) []byte {
	if m.Props.PayloadFormat != 0 {
		dst = append(dst, propPayloadFormat, m.Props.PayloadFormat)
	}
	if expiry > 0 {
		dst = append(dst, propMessageExpiry)
		dst = binary.BigEndian.AppendUint32(dst, expiry)
	}
	if m.Props.ContentType != "" {
		dst = append(dst, propContentType)
		dst = appendStr(dst, m.Props.ContentType)
	}
	if m.Props.ResponseTopic != "" {
		dst = append(dst, propResponseTopic)
		dst = appendStr(dst, m.Props.ResponseTopic)
	}
	if len(m.Props.CorrelationData) > 0 {
		dst = append(dst, propCorrelationData)
		dst = binary.BigEndian.AppendUint16(dst, uint16(len(m.Props.CorrelationData)))
		dst = append(dst, m.Props.CorrelationData...)
	}
	for _, u := range m.Props.User {
		dst = append(dst, propUserProperty)
		dst = appendStr(dst, u.Key)
		dst = appendStr(dst, u.Value)
	}
	return dst
}

// propsFit reports whether every string/binary property of m fits its
// 16-bit length prefix (a longer one cannot be encoded).
func propsFit(m *message.Message) bool {
	if len(m.Props.ContentType) > 65535 || len(m.Props.ResponseTopic) > 65535 || len(m.Props.CorrelationData) > 65535 {
		return false
	}
	for _, u := range m.Props.User {
		if len(u.Key) > 65535 || len(u.Value) > 65535 {
			return false
		}
	}
	return true
}

func appendStr(dst []byte, s string) []byte {
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(s)))
	return append(dst, s...)
}

// publishSize is the encoded size of a QoS 1 PUBLISH packet.
func publishSize(topicLen, propsLen, payloadLen int) int {
	rem := 2 + topicLen + 2 + mqttwire.VarintLen(propsLen) + propsLen + payloadLen
	return 1 + mqttwire.VarintLen(rem) + rem
}

// appendPublish appends a QoS 1 PUBLISH packet (MQTT 5.0 §3.3).
func appendPublish(dst, topic []byte, packetID uint16, dup, retain bool, props, payload []byte) []byte {
	h := byte(0x30 | 1<<1) // PUBLISH, QoS 1
	if dup {
		h |= 1 << 3
	}
	if retain {
		h |= 1
	}
	rem := 2 + len(topic) + 2 + mqttwire.VarintLen(len(props)) + len(props) + len(payload)
	dst = append(dst, h)
	dst = mqttwire.AppendVarint(dst, rem)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(topic)))
	dst = append(dst, topic...)
	dst = binary.BigEndian.AppendUint16(dst, packetID)
	dst = mqttwire.AppendVarint(dst, len(props))
	dst = append(dst, props...)
	return append(dst, payload...)
}

// maxRemaining is the largest remaining length a packet can have.
const maxRemaining = mqttwire.MaxVarint
