package broker

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"
	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// store persists retained messages, client sessions, subscriptions and
// in-flight QoS>0 messages in a bbolt file, so they survive a restart.
//
// Writes are coalesced: every change goes into a pending map keyed like
// mochi's own storage hooks, and a background loop commits the map in one
// transaction (one fsync) every flushInterval. A message that is published
// and acknowledged within the interval (the normal case) is never written at
// all, where mochi's bolt hook pays two fsyncs per QoS 1 message. The cost is
// that a power cut loses at most the last interval of broker session state.
// Acknowledged device data bound for the cloud does not depend on this: it is
// in the durable queue before the PUBACK is sent.
type store struct {
	mqtt.HookBase
	path     string
	interval time.Duration
	log      *slog.Logger
	failed   *metrics.Counter // records that could not be written (each fails alone)

	db *bbolt.DB

	mu      sync.Mutex
	pending map[string][]byte // nil value = delete
	kick    chan struct{}
	stop    chan struct{}
	done    chan struct{}
}

var bucketName = []byte("outpost")

// maxPending triggers an early flush so memory stays bounded under load.
const maxPending = 4096

func newStore(path string, interval time.Duration, log *slog.Logger, m *brokerMetrics) *store {
	return &store{path: path, interval: interval, log: log, pending: map[string][]byte{},
		failed: m.set.GetOrCreateCounter(`outpost_broker_persistence_records_failed_total`),
		kick:   make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
}

func (s *store) ID() string { return "outpost-store" }

func (s *store) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnSessionEstablished, mqtt.OnDisconnect, mqtt.OnSubscribed, mqtt.OnUnsubscribed,
		mqtt.OnRetainMessage, mqtt.OnWillSent, mqtt.OnQosPublish, mqtt.OnQosComplete, mqtt.OnQosDropped,
		mqtt.OnClientExpired, mqtt.OnRetainedExpired,
		mqtt.StoredClients, mqtt.StoredInflightMessages, mqtt.StoredRetainedMessages, mqtt.StoredSubscriptions,
	}, []byte{b})
}

// Init opens the file (failing after 2 s if another process holds it).
func (s *store) Init(any) error {
	db, err := bbolt.Open(s.path, 0o600, &bbolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return fmt.Errorf("%s is locked by another process (is another outpost running with the same data_dir?)", s.path)
		}
		return err
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketName)
		return err
	}); err != nil {
		db.Close()
		return err
	}
	s.db = db
	go s.loop()
	return nil
}

// Stop flushes what is pending and closes the file.
func (s *store) Stop() error {
	if s.db == nil {
		return nil
	}
	close(s.stop)
	<-s.done
	err := s.flush()
	if cerr := s.db.Close(); err == nil {
		err = cerr
	}
	s.db = nil
	return err
}

func (s *store) loop() {
	defer close(s.done)
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		case <-s.kick:
		}
		if err := s.flush(); err != nil {
			s.log.Error("broker: persisting session state failed", "file", s.path, "err", err)
		}
	}
}

func (s *store) flush() error {
	s.mu.Lock()
	if len(s.pending) == 0 {
		s.mu.Unlock()
		return nil
	}
	batch := s.pending
	s.pending = make(map[string][]byte, len(batch))
	s.mu.Unlock()
	return s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketName)
		failed := 0
		for k, v := range batch {
			var err error
			if v == nil {
				err = b.Delete([]byte(k))
			} else {
				err = b.Put([]byte(k), v)
			}
			if err != nil {
				// One bad record (a key over bbolt's 32 KiB limit, a value over
				// its size limit) fails alone: bbolt checks these before it
				// changes anything, so the rest of the batch still commits.
				s.failed.Inc()
				if failed++; failed > 1 {
					continue // one line per flush; the counter has them all
				}
				s.log.Warn("broker: a session state record could not be persisted", "file", s.path,
					"key", truncate(k, 64), "key_bytes", len(k), "err", err)
			}
		}
		return nil
	})
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

func (s *store) set(key string, v storage.Serializable) {
	data, err := v.MarshalBinary()
	if err != nil {
		s.log.Error("broker: encoding session state", "key", key, "err", err)
		return
	}
	s.put(key, data)
}

func (s *store) del(key string) { s.put(key, nil) }

func (s *store) put(key string, data []byte) {
	s.mu.Lock()
	s.pending[key] = data
	n := len(s.pending)
	s.mu.Unlock()
	if n >= maxPending {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
}

func clientKey(id string) string { return storage.ClientKey + "_" + id }
func subKey(id, filter string) string {
	return storage.SubscriptionKey + "_" + id + ":" + filter
}
func retainedKey(topic string) string { return storage.RetainedKey + "_" + topic }

// inflightKey names a session's in-flight record. A flow the client started
// (its QoS 2 PUBLISH awaiting PUBREL) is in the client's packet identifier
// space, apart from the server's own messages to it: "<id>:in" (mochi's
// hooks pass the stored packet, whose type tells the direction).
func inflightKey(id string, pk packets.Packet) string {
	if mqtt.IsInbound(pk) {
		return storage.InflightKey + "_" + id + ":" + pk.FormatID() + ":in"
	}
	return storage.InflightKey + "_" + id + ":" + pk.FormatID()
}

func (s *store) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) { s.saveClient(cl) }
func (s *store) OnWillSent(cl *mqtt.Client, _ packets.Packet)           { s.saveClient(cl) }

func (s *store) saveClient(cl *mqtt.Client) {
	props := cl.Properties.Props.Copy(false)
	s.set(clientKey(cl.ID), &storage.Client{
		ID: cl.ID, T: storage.ClientKey, Remote: cl.Net.Remote, Listener: cl.Net.Listener,
		Username: cl.Properties.Username, Clean: cl.Properties.Clean, ProtocolVersion: cl.Properties.ProtocolVersion,
		Properties: storage.ClientProperties{
			SessionExpiryInterval: props.SessionExpiryInterval, AuthenticationMethod: props.AuthenticationMethod,
			AuthenticationData: props.AuthenticationData, RequestProblemInfo: props.RequestProblemInfo,
			RequestResponseInfo: props.RequestResponseInfo, ReceiveMaximum: props.ReceiveMaximum,
			TopicAliasMaximum: props.TopicAliasMaximum, User: props.User, MaximumPacketSize: props.MaximumPacketSize,
		},
		Will: storage.ClientWill(cl.Properties.Will),
	})
}

func (s *store) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	if !expire || cl.StopCause() == packets.ErrSessionTakenOver {
		return
	}
	s.dropClient(cl.ID)
}

func (s *store) OnClientExpired(cl *mqtt.Client) { s.dropClient(cl.ID) }

// dropClient removes a session with its subscriptions and in-flight messages
// (mochi's hook leaves the latter behind).
func (s *store) dropClient(id string) {
	s.del(clientKey(id))
	for _, prefix := range []string{storage.SubscriptionKey + "_" + id + ":", storage.InflightKey + "_" + id + ":"} {
		_ = s.db.View(func(tx *bbolt.Tx) error {
			c := tx.Bucket(bucketName).Cursor()
			p := []byte(prefix)
			for k, _ := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, _ = c.Next() {
				s.del(string(k))
			}
			return nil
		})
		s.mu.Lock()
		for k, v := range s.pending {
			if v != nil && strings.HasPrefix(k, prefix) {
				s.pending[k] = nil
			}
		}
		s.mu.Unlock()
	}
}

func (s *store) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	for i, f := range pk.Filters {
		if i < len(codes) && codes[i] >= 0x80 {
			continue
		}
		s.set(subKey(cl.ID, f.Filter), &storage.Subscription{
			ID: subKey(cl.ID, f.Filter), T: storage.SubscriptionKey, Client: cl.ID, Qos: codes[i],
			Filter: f.Filter, Identifier: f.Identifier, NoLocal: f.NoLocal,
			RetainHandling: f.RetainHandling, RetainAsPublished: f.RetainAsPublished,
		})
	}
}

func (s *store) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	for _, f := range pk.Filters {
		s.del(subKey(cl.ID, f.Filter))
	}
}

func messageRecord(id, typ, client string, pk packets.Packet, sent int64) *storage.Message {
	props := pk.Properties.Copy(false)
	return &storage.Message{
		ID: id, T: typ, Client: client, Origin: pk.Origin, FixedHeader: pk.FixedHeader, TopicName: pk.TopicName,
		Payload: pk.Payload, Sent: sent, Created: pk.Created, PacketID: pk.PacketID,
		Properties: storage.MessageProperties{
			PayloadFormat: props.PayloadFormat, MessageExpiryInterval: props.MessageExpiryInterval,
			ContentType: props.ContentType, ResponseTopic: props.ResponseTopic, CorrelationData: props.CorrelationData,
			SubscriptionIdentifier: props.SubscriptionIdentifier, TopicAlias: props.TopicAlias, User: props.User,
		},
	}
}

func (s *store) OnRetainMessage(cl *mqtt.Client, pk packets.Packet, r int64) {
	if r == -1 {
		s.del(retainedKey(pk.TopicName))
		return
	}
	s.set(retainedKey(pk.TopicName), messageRecord(retainedKey(pk.TopicName), storage.RetainedKey, cl.ID, pk, 0))
}

func (s *store) OnRetainedExpired(topic string) { s.del(retainedKey(topic)) }

func (s *store) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, _ int) {
	k := inflightKey(cl.ID, pk)
	s.set(k, messageRecord(k, storage.InflightKey, cl.ID, pk, sent))
}

func (s *store) OnQosComplete(cl *mqtt.Client, pk packets.Packet) { s.del(inflightKey(cl.ID, pk)) }
func (s *store) OnQosDropped(cl *mqtt.Client, pk packets.Packet)  { s.del(inflightKey(cl.ID, pk)) }

func (s *store) iter(prefix string, fn func([]byte) error) error {
	return s.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketName).Cursor()
		p := []byte(prefix)
		for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
			if err := fn(v); err != nil {
				s.log.Warn("broker: skipping unreadable stored record", "file", s.path, "key", string(k), "err", err)
			}
		}
		return nil
	})
}

func (s *store) StoredClients() (v []storage.Client, err error) {
	err = s.iter(storage.ClientKey+"_", func(b []byte) error {
		var o storage.Client
		if err := o.UnmarshalBinary(b); err != nil {
			return err
		}
		v = append(v, o)
		return nil
	})
	return v, err
}

func (s *store) StoredSubscriptions() (v []storage.Subscription, err error) {
	err = s.iter(storage.SubscriptionKey+"_", func(b []byte) error {
		var o storage.Subscription
		if err := o.UnmarshalBinary(b); err != nil {
			return err
		}
		v = append(v, o)
		return nil
	})
	return v, err
}

func (s *store) storedMessages(prefix string) (v []storage.Message, err error) {
	err = s.iter(prefix, func(b []byte) error {
		var o storage.Message
		if err := o.UnmarshalBinary(b); err != nil {
			return err
		}
		v = append(v, o)
		return nil
	})
	return v, err
}

// StoredRetainedMessages returns the retained messages, leaving out (and
// deleting) any stored under a topic with wildcards: older versions let a
// will retain such a message, which no client could ever delete.
func (s *store) StoredRetainedMessages() ([]storage.Message, error) {
	all, err := s.storedMessages(storage.RetainedKey + "_")
	out := all[:0]
	for _, m := range all {
		if strings.ContainsAny(m.TopicName, "+#") {
			s.log.Warn("broker: deleting a stored retained message with a wildcard topic", "file", s.path, "topic", m.TopicName)
			s.del(retainedKey(m.TopicName))
			continue
		}
		out = append(out, m)
	}
	return out, err
}

func (s *store) StoredInflightMessages() ([]storage.Message, error) {
	return s.storedMessages(storage.InflightKey + "_")
}
