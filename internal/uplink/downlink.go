package uplink

import (
	"context"
	"strings"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/outpost-edge/outpost/internal/message"
)

// LocalTopic maps a cloud command topic to its local topic by stripping
// the downlink prefix: with prefix "outpost/gw-1/", cloud topic
// "outpost/gw-1/cmd/valve/open" is local "cmd/valve/open". ok is false for
// a topic outside the prefix (or equal to it).
func LocalTopic(prefix, cloud string) (local string, ok bool) {
	local, ok = strings.CutPrefix(cloud, prefix)
	return local, ok && local != ""
}

// onDownlink is paho's publish handler (one goroutine, in arrival order):
// it hands the command to the Downlink. A refused command is acknowledged
// with reason code 0x80 (the broker drops it; it is not redelivered) and
// counted.
func (u *Uplink) onDownlink(pr paho.PublishReceived) (bool, error) {
	p := pr.Packet
	u.m.dlReceived.Inc()
	if u.opts.Downlink == nil {
		u.m.dlIgnored.Inc()
		return true, nil
	}
	local, ok := LocalTopic(u.dlPrefix, p.Topic)
	if !ok {
		u.m.dlIgnored.Inc()
		u.log.Warn("uplink: downlink message outside the command prefix ignored", "topic", p.Topic, "prefix", u.dlPrefix)
		return true, nil
	}
	m := &message.Message{Topic: local, Payload: p.Payload, QoS: p.QoS, Retain: p.Retain, Received: time.Now()}
	if pp := p.Properties; pp != nil {
		m.Props.ContentType = pp.ContentType
		m.Props.ResponseTopic = pp.ResponseTopic
		m.Props.CorrelationData = pp.CorrelationData
		if pp.PayloadFormat != nil {
			m.Props.PayloadFormat = *pp.PayloadFormat
		}
		if pp.MessageExpiry != nil {
			m.Props.MessageExpiry = *pp.MessageExpiry
		}
		for _, up := range pp.User {
			m.Props.User = append(m.Props.User, message.UserProperty{Key: up.Key, Value: up.Value})
		}
	}
	u.mu.Lock()
	base := u.runCtx
	u.mu.Unlock()
	if base == nil {
		base = context.Background()
	}
	ctx, cancel := context.WithTimeout(base, u.cfg.ConnectTimeout.D())
	defer cancel()
	if err := u.opts.Downlink.Deliver(ctx, m); err != nil {
		u.m.dlErrors.Inc()
		u.log.Warn("uplink: downlink command refused locally", "topic", local, "err", err)
		if p.QoS > 0 {
			u.sess.setNack(p.PacketID, 0x80)
		}
	}
	return true, nil
}
