// Package message defines the unit of data that flows through Outpost: a
// publish accepted by the embedded broker, with its metadata, on its way to the
// pipeline, the rule engine, the sinks, the durable queue and the uplink.
//
// It is a leaf package: it imports nothing from Outpost, so every domain
// package can depend on it without cycles.
//
// # Invariants
//
//   - Payload is never copied on the hot path. A Message shares the payload
//     bytes of the packet it was built from; holders must treat Payload as
//     read-only. A sink that keeps the payload beyond Deliver (a buffer, a
//     batch) must copy it with Clone.
//   - Topic is a concrete topic name (no wildcards), already validated by the
//     broker.
//   - Received is the gateway's wall clock at acceptance; rules that need event
//     time read it from the payload.
//
// The binary encoding (Encode/Decode) is what the durable queue stores. It is
// versioned by its first byte so records written by an older Outpost stay
// readable after an update.
package message

import (
	"context"
	"errors"
	"time"
)

// Message is one publish flowing through the gateway.
type Message struct {
	Topic    string
	Payload  []byte // shared with the broker packet: read-only, see package doc
	QoS      byte
	Retain   bool
	ClientID string // MQTT client id of the publisher ("" for internal sources)
	DeviceID string // resolved device identity (client id or a topic level, per config)
	Received time.Time
	Props    Properties
}

// Properties carries the MQTT v5 publish properties Outpost preserves.
type Properties struct {
	ContentType     string
	ResponseTopic   string
	CorrelationData []byte
	PayloadFormat   byte   // 0 = bytes, 1 = UTF-8
	MessageExpiry   uint32 // seconds, 0 = none
	User            []UserProperty
}

// UserProperty is an MQTT v5 user property (key/value pair, order preserved).
type UserProperty struct {
	Key, Value string
}

// Clone returns a deep copy whose payload and properties no longer share
// memory with m. Use it when a message must outlive the call that received it.
func (m *Message) Clone() *Message {
	c := *m
	c.Payload = append([]byte(nil), m.Payload...)
	if m.Props.CorrelationData != nil {
		c.Props.CorrelationData = append([]byte(nil), m.Props.CorrelationData...)
	}
	if m.Props.User != nil {
		c.Props.User = append([]UserProperty(nil), m.Props.User...)
	}
	return &c
}

// Sink is where the pipeline delivers messages: local republish, a JSON-lines
// file, the durable uplink queue, an HTTP webhook.
//
// Deliver must not retain m or its payload after it returns unless it copies
// them (Message.Clone). A nil error means the sink has accepted the message;
// for a Durable sink it means the message survives a crash (per the sink's
// fsync policy), and only then may a QoS 1 publish be acknowledged.
type Sink interface {
	Name() string
	Deliver(ctx context.Context, m *Message) error
}

// Durable is implemented by sinks whose acceptance is crash-safe. The pipeline
// waits for every durable sink a QoS >= 1 message is routed to before the
// broker acknowledges the publish.
type Durable interface {
	Sink
	Durable() bool
}

// AsyncDurable is a Durable sink that accepts without blocking: done is
// called exactly once, when the message is durable or refused. Calls for one
// sink complete in the order they were made. DeliverAsync copies what it
// keeps before it returns.
type AsyncDurable interface {
	Durable
	DeliverAsync(m *Message, done func(error))
}

// ErrRejected is returned (wrapped) by a sink that refuses a message by policy,
// e.g. a full queue with on_full: reject_new. The broker turns it into a
// negative PUBACK (v5 reason code 0x97 quota exceeded) for QoS 1 publishes.
var ErrRejected = errors.New("message rejected")
