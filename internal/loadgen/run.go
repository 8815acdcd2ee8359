package loadgen

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// ErrConnectionLost is returned (with the client and cause) together with a
// Result when a connection failed during the run; the Result still holds
// what was measured.
var ErrConnectionLost = errors.New("connection lost during the run")

// Latency histograms record nanoseconds from 1 ns to 60 s at 3 significant
// digits; larger values are clamped to 60 s.
const histMax = int64(60 * time.Second)

func newHist() *hdrhistogram.Histogram { return hdrhistogram.New(1, histMax, 3) }

func record(h *hdrhistogram.Histogram, ns int64) {
	_ = h.RecordValue(min(max(ns, 1), histMax))
}

// Buffer sizes per connection.
const (
	pubWriteBuf = 32 << 10
	pubReadBuf  = 4 << 10
	subReadBuf  = 64 << 10
	subWriteBuf = 4 << 10
)

type runner struct {
	cfg    Config
	ep     endpoint
	subEp  endpoint  // where subscribers connect (ep unless Config.SubURL)
	origin time.Time // payload timestamps are nanoseconds since origin (monotonic)
	runID  uint32
	format payloadFormat

	pubs []*publisher
	subs []*subscriber

	stopOnce sync.Once
	stopCh   chan struct{} // closed: publishers stop
	stopped  atomic.Bool
	closing  atomic.Bool // set before connections are closed on purpose

	errMu sync.Mutex
	errs  []error
}

func (r *runner) now() int64 { return int64(time.Since(r.origin)) }

func (r *runner) halt() {
	r.stopOnce.Do(func() {
		r.stopped.Store(true)
		close(r.stopCh)
	})
}

func (r *runner) fail(clientID string, err error) {
	if r.closing.Load() {
		return
	}
	r.errMu.Lock()
	r.errs = append(r.errs, fmt.Errorf("%w: %s: %w", ErrConnectionLost, clientID, err))
	r.errMu.Unlock()
}

// Run executes one benchmark and returns its result. It returns an error
// without a Result when the configuration is invalid or a client cannot
// connect or subscribe; it returns both when a connection failed mid-run
// (errors.Is(err, ErrConnectionLost)). Cancelling ctx ends the publish
// phase early; the Result then has Interrupted set.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("loadgen: invalid configuration:\n%w", err)
	}
	tc, err := tlsConfig(cfg.CAFile, cfg.CertFile, cfg.KeyFile, cfg.Insecure)
	if err != nil {
		return nil, fmt.Errorf("loadgen: %w", err)
	}
	ep, err := parseEndpoint(cfg.URL, tc)
	if err != nil {
		return nil, fmt.Errorf("loadgen: %w", err)
	}
	var idb [4]byte
	_, _ = rand.Read(idb[:])
	subEp := ep
	if cfg.SubURL != "" {
		if subEp, err = parseEndpoint(cfg.SubURL, tc); err != nil {
			return nil, fmt.Errorf("loadgen: sub-url: %w", err)
		}
	}
	r := &runner{cfg: cfg, ep: ep, subEp: subEp, origin: time.Now(), runID: binary.BigEndian.Uint32(idb[:]), stopCh: make(chan struct{})}
	r.format = payloadFormat{kind: cfg.Payload, size: cfg.PayloadSize, runID: r.runID}
	if cfg.ClientPrefix == "" {
		r.cfg.ClientPrefix = fmt.Sprintf("bench-%08x", r.runID)
	}
	defer r.closeAll()

	if err := r.connectAll(ctx); err != nil {
		return nil, err
	}
	return r.run(ctx)
}

func (r *runner) connectOptions(id string) connectOptions {
	o := connectOptions{version: byte(r.cfg.MQTTVersion), clientID: id, username: r.cfg.Username,
		password: r.cfg.Password, keepAlive: uint16(r.cfg.KeepAlive / time.Second)}
	if o.version == protoV5 {
		o.maxPacketSize = uint32(r.cfg.MaxPacketSize)
	}
	return o
}

// connectAll connects and subscribes every subscriber, then connects every
// publisher, at most 16 handshakes at a time.
func (r *runner) connectAll(ctx context.Context) error {
	cfg := &r.cfg
	r.subs = make([]*subscriber, cfg.Subscribers)
	r.pubs = make([]*publisher, cfg.Publishers)
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	setErr := func(err error) {
		mu.Lock()
		if first == nil {
			first = err
		}
		mu.Unlock()
	}
	failed := func() bool { mu.Lock(); defer mu.Unlock(); return first != nil }
	for i := range r.subs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if failed() {
				return
			}
			id := fmt.Sprintf("%s-s%d", cfg.ClientPrefix, i)
			o := r.connectOptions(id)
			subURL := cfg.URL
			if cfg.SubURL != "" {
				subURL = cfg.SubURL
				if cfg.SubUsername != "" {
					o.username, o.password = cfg.SubUsername, cfg.SubPassword
				}
			}
			c, err := connect(ctx, r.subEp, o, cfg.ConnectTimeout, subReadBuf, subWriteBuf, cfg.MaxPacketSize)
			if err != nil {
				setErr(fmt.Errorf("loadgen: subscriber %s: connect to %s: %w", id, subURL, err))
				return
			}
			s := &subscriber{r: r, index: i, c: c, trackers: make([]seqTracker, cfg.Publishers),
				hist: newHist(), done: make(chan struct{})}
			r.subs[i] = s
			if _, err := c.subscribe(cfg.SubTopic, byte(cfg.QoS), cfg.ConnectTimeout); err != nil {
				setErr(fmt.Errorf("loadgen: subscriber %s: subscribe %q on %s: %w", id, cfg.SubTopic, cfg.URL, err))
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return first
	}
	for i := range r.pubs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if failed() {
				return
			}
			id := fmt.Sprintf("%s-p%d", cfg.ClientPrefix, i)
			c, err := connect(ctx, r.ep, r.connectOptions(id), cfg.ConnectTimeout, pubReadBuf, pubWriteBuf, cfg.MaxPacketSize)
			if err != nil {
				setErr(fmt.Errorf("loadgen: publisher %s: connect to %s: %w", id, cfg.URL, err))
				return
			}
			r.pubs[i] = newPublisher(r, i, c)
		}()
	}
	wg.Wait()
	return first
}

// closeAll closes every connection that is still open (idempotent).
func (r *runner) closeAll() {
	r.closing.Store(true)
	r.halt()
	for _, p := range r.pubs {
		if p != nil {
			p.c.nc.Close()
		}
	}
	for _, s := range r.subs {
		if s != nil {
			s.c.nc.Close()
		}
	}
}

func (r *runner) run(ctx context.Context) (*Result, error) {
	cfg := &r.cfg
	for _, s := range r.subs {
		go s.read()
		if cfg.KeepAlive > 0 {
			go s.ping(cfg.KeepAlive / 2)
		}
	}
	for _, p := range r.pubs {
		go p.read()
	}

	cpu0 := processCPU()
	hostBusy0, hostTotal0, hostOK := hostCPU()
	var broker *brokerSampler
	if cfg.BrokerPID > 0 {
		broker = newBrokerSampler(cfg.BrokerPID, r.now())
	}
	pubStart := r.now()
	prog := newProgress(r, pubStart, broker)
	progDone := make(chan struct{})
	progStop := make(chan struct{})
	go func() { defer close(progDone); prog.loop(progStop) }()

	interrupted := atomic.Bool{}
	if cfg.Duration > 0 {
		t := time.AfterFunc(cfg.Duration, r.halt)
		defer t.Stop()
	}
	go func() {
		select {
		case <-ctx.Done():
			interrupted.Store(true)
			r.halt()
		case <-r.stopCh:
		}
	}()

	// Publish phase.
	var pubWG sync.WaitGroup
	for _, p := range r.pubs {
		pubWG.Add(1)
		go func() { defer pubWG.Done(); p.run() }()
	}
	pubDone := make(chan struct{})
	go func() { pubWG.Wait(); close(pubDone) }()
	// Every publisher stops by itself at its count; the duration timer or
	// ctx stop the rest. After a stop, wait at most the drain time so a
	// stalled broker cannot hang the run.
	select {
	case <-pubDone:
	case <-r.stopCh:
		select {
		case <-pubDone:
		case <-time.After(cfg.Drain + time.Second):
			for _, p := range r.pubs {
				p.c.nc.Close() // unblock writes to a stalled broker
			}
			<-pubDone
		}
	}
	r.halt()
	pubEnd := r.now()

	// Drain: wait for the subscribers to receive what was sent.
	var expected uint64
	for _, p := range r.pubs {
		expected += p.sent.Load()
	}
	expected *= uint64(len(r.subs))
	if len(r.subs) > 0 {
		r.drain(ctx, expected)
	}
	close(progStop)
	<-progDone

	// Close in order: subscribers' pingers and readers, then publishers.
	r.closing.Store(true)
	for _, s := range r.subs {
		s.c.disconnect()
	}
	for _, p := range r.pubs {
		p.c.disconnect()
	}
	for _, s := range r.subs {
		<-s.done
	}
	for _, p := range r.pubs {
		<-p.done
	}
	end := r.now()
	cpu1 := processCPU()

	res := r.result(pubStart, pubEnd, end, prog)
	res.Interrupted = interrupted.Load()
	res.Loadgen = cpuStats(cpu0, cpu1, time.Duration(end-pubStart))
	if b1, t1, ok := hostCPU(); ok && hostOK && t1 > hostTotal0 {
		res.HostBusyPercent = round1(float64(b1-hostBusy0) / float64(t1-hostTotal0) * 100)
		res.HostCores = runtime.NumCPU()
	}
	if broker != nil {
		res.Broker = broker.final(time.Duration(end - pubStart))
	}
	r.errMu.Lock()
	defer r.errMu.Unlock()
	for _, e := range r.errs {
		res.Errors = append(res.Errors, e.Error())
	}
	if len(r.errs) > 0 {
		return res, fmt.Errorf("loadgen: %w", errors.Join(r.errs...))
	}
	return res, nil
}

func (r *runner) received() uint64 {
	var n uint64
	for _, s := range r.subs {
		n += s.recv.Load()
	}
	return n
}

// drain waits until expected messages arrived, nothing arrived for a
// second or the drain time is up (at most one more second once ctx is
// cancelled).
func (r *runner) drain(ctx context.Context, expected uint64) {
	deadline := time.Now().Add(r.cfg.Drain)
	last, lastChange := r.received(), time.Now()
	cancelled := false
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		n := r.received()
		if ctx.Err() != nil && !cancelled {
			cancelled = true
			deadline = minTime(deadline, time.Now().Add(time.Second))
		}
		if n >= expected || time.Now().After(deadline) {
			return
		}
		if n != last {
			last, lastChange = n, time.Now()
		} else if time.Since(lastChange) > time.Second {
			return
		}
		<-t.C
	}
}

// publisher is one publishing connection.
type publisher struct {
	r     *runner
	index int
	c     *client
	tmpl  []publishTemplate
	limit uint64  // messages to send, 0 = until stopped
	rate  float64 // msg/s, 0 = max
	qos1  bool

	sent     atomic.Uint64
	acked    atomic.Uint64
	rejected atomic.Uint64 // PUBACK reason ≥ 0x80
	badAcks  atomic.Uint64 // PUBACK without an outstanding PUBLISH or out of order

	// QoS 1 window: a token per outstanding PUBLISH; sentAt is a ring of
	// send timestamps indexed by send order (PUBACKs arrive in order,
	// [MQTT-4.6.0-2]).
	window  chan struct{}
	sentAt  []atomic.Int64
	sendIdx uint64 // publisher goroutine only
	ackIdx  uint64 // reader goroutine only
	ackHist *hdrhistogram.Histogram

	done chan struct{} // reader exited
}

func newPublisher(r *runner, i int, c *client) *publisher {
	cfg := &r.cfg
	p := &publisher{r: r, index: i, c: c, qos1: cfg.QoS == 1, done: make(chan struct{})}
	payload := r.format.build(i)
	for n := 0; n < cfg.Topics; n++ {
		topic := expandTopic(cfg.Topic, c.id, i, n)
		p.tmpl = append(p.tmpl, newPublishTemplate(topic, byte(cfg.QoS), c.v5, payload))
	}
	if cfg.Count > 0 {
		per := uint64(cfg.Count) / uint64(cfg.Publishers)
		if uint64(i) < uint64(cfg.Count)%uint64(cfg.Publishers) {
			per++
		}
		p.limit = per
	}
	p.rate = cfg.Rate / float64(cfg.Publishers)
	if p.qos1 {
		w := cfg.Inflight
		if rm := int(c.ack.receiveMax); rm > 0 && rm < w {
			w = rm // [MQTT-3.3.4-7]
		}
		p.window = make(chan struct{}, w)
		p.sentAt = make([]atomic.Int64, w)
		p.ackHist = newHist()
	}
	return p
}

func pidFor(i uint64) uint16 { return uint16(i%65535) + 1 }

// run publishes until the limit, the stop signal or a write error.
func (p *publisher) run() {
	r := p.r
	w := p.c.w
	var seq uint64
	k := 0
	// Stagger publishers over one send interval so they do not burst together.
	var t0 int64
	var timer *time.Timer
	if p.rate > 0 {
		t0 = r.now() + int64(float64(p.index)/float64(r.cfg.Publishers)*1e9/p.rate)
		timer = time.NewTimer(time.Hour)
		defer timer.Stop()
	}
	kaHalf := int64(r.cfg.KeepAlive / 2)
	lastWrite := r.now()
	for !r.stopped.Load() && (p.limit == 0 || seq < p.limit) {
		now := r.now()
		if p.rate > 0 {
			due := uint64(float64(now-t0)*p.rate/1e9) + 1
			if now < t0 {
				due = 0
			}
			if seq >= due {
				if err := w.Flush(); err != nil {
					r.fail(p.c.id, err)
					return
				}
				next := t0 + int64(float64(seq)*1e9/p.rate)
				if kaHalf > 0 && next-lastWrite > kaHalf {
					next = lastWrite + kaHalf
				}
				timer.Reset(time.Duration(next - now))
				select {
				case <-timer.C:
				case <-r.stopCh:
				}
				if kaHalf > 0 && r.now()-lastWrite >= kaHalf {
					_, _ = w.Write(pingreqPacket)
					lastWrite = r.now()
				}
				continue
			}
		}
		t := &p.tmpl[k]
		if k++; k == len(p.tmpl) {
			k = 0
		}
		if p.qos1 {
			select {
			case p.window <- struct{}{}:
			default:
				if err := w.Flush(); err != nil {
					r.fail(p.c.id, err)
					return
				}
				select {
				case p.window <- struct{}{}:
				case <-r.stopCh:
					continue
				case <-p.done:
					return
				}
				now = r.now()
			}
			t.setPacketID(pidFor(p.sendIdx))
			p.sentAt[p.sendIdx%uint64(len(p.sentAt))].Store(now)
			p.sendIdx++
		}
		r.format.stamp(t.payload(), p.index, seq, now)
		if _, err := w.Write(t.buf); err != nil {
			r.fail(p.c.id, err)
			return
		}
		lastWrite = now
		seq++
		p.sent.Add(1)
	}
	if err := w.Flush(); err != nil {
		r.fail(p.c.id, err)
		return
	}
	if p.qos1 {
		// Wait for the outstanding PUBACKs, bounded by the drain time.
		deadline := time.Now().Add(r.cfg.Drain)
		for len(p.window) > 0 && time.Now().Before(deadline) {
			select {
			case <-p.done:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}
}

// read handles PUBACK, PINGRESP and DISCONNECT on a publisher connection.
func (p *publisher) read() {
	defer close(p.done)
	for {
		h, body, err := p.c.pr.next()
		if err != nil {
			p.r.fail(p.c.id, err)
			return
		}
		switch h >> 4 {
		case typePuback:
			id, code, err := parseAck("PUBACK", body, p.c.v5)
			if err != nil {
				p.r.fail(p.c.id, err)
				return
			}
			p.onAck(id, code)
		case typePingresp:
		case typePublish:
			// Not subscribed: a broker bug or a stray retained message.
		case typeDisconnect:
			code, reason, _ := parseDisconnect(body, p.c.v5)
			p.r.fail(p.c.id, fmt.Errorf("broker sent DISCONNECT (code 0x%02x) %s", code, reason))
			return
		default:
			p.r.fail(p.c.id, malformed(packetNames[h>>4], "unexpected on a publisher connection"))
			return
		}
	}
}

func (p *publisher) onAck(id uint16, code byte) {
	if !p.qos1 {
		p.badAcks.Add(1)
		return
	}
	select {
	case <-p.window:
	default:
		p.badAcks.Add(1) // nothing outstanding
		return
	}
	i := p.ackIdx
	p.ackIdx++
	if id != pidFor(i) {
		p.badAcks.Add(1)
	}
	record(p.ackHist, p.r.now()-p.sentAt[i%uint64(len(p.sentAt))].Load())
	if code >= 0x80 {
		p.rejected.Add(1)
	} else {
		p.acked.Add(1)
	}
}

// subscriber is one subscribing connection.
type subscriber struct {
	r        *runner
	index    int
	c        *client
	trackers []seqTracker // per publisher; reader goroutine only

	recv     atomic.Uint64 // this run's messages, duplicates included
	foreign  atomic.Uint64 // other payloads (another run, another client)
	lastRecv atomic.Int64

	mu   sync.Mutex
	hist *hdrhistogram.Histogram // latency since the last progress tick

	done chan struct{}
}

func (s *subscriber) read() {
	defer close(s.done)
	r := s.r
	var acks []byte
	for {
		h, body, err := s.c.pr.next()
		if err != nil {
			r.fail(s.c.id, err)
			return
		}
		switch h >> 4 {
		case typePublish:
			now := r.now()
			pk, err := parsePublish(h&0x0f, body, s.c.v5)
			if err != nil {
				r.fail(s.c.id, err)
				return
			}
			if pk.qos == 2 {
				r.fail(s.c.id, malformed("PUBLISH", "QoS 2 on a QoS %d subscription", r.cfg.QoS)) // [MQTT-3.8.4-8]
				return
			}
			if pk.qos == 1 {
				acks = appendPuback(acks, pk.packetID)
			}
			st, ok := parsePayload(pk.payload)
			if ok && st.run == r.runID && int(st.pub) < len(s.trackers) {
				s.trackers[st.pub].observe(st.seq)
				s.mu.Lock()
				record(s.hist, now-st.ts)
				s.mu.Unlock()
				s.lastRecv.Store(now)
				s.recv.Add(1)
			} else {
				s.foreign.Add(1)
			}
			if len(acks) > 0 && (s.c.pr.buffered() == 0 || len(acks) >= 2048) {
				s.c.wmu.Lock()
				_, _ = s.c.w.Write(acks)
				err := s.c.w.Flush()
				s.c.wmu.Unlock()
				acks = acks[:0]
				if err != nil {
					r.fail(s.c.id, err)
					return
				}
			}
		case typePingresp:
		case typeDisconnect:
			code, reason, _ := parseDisconnect(body, s.c.v5)
			r.fail(s.c.id, fmt.Errorf("broker sent DISCONNECT (code 0x%02x) %s", code, reason))
			return
		default:
			r.fail(s.c.id, malformed(packetNames[h>>4], "unexpected on a subscriber connection"))
			return
		}
	}
}

// ping sends PINGREQ every interval until the connection closes.
func (s *subscriber) ping(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
			s.c.wmu.Lock()
			_, _ = s.c.w.Write(pingreqPacket)
			err := s.c.w.Flush()
			s.c.wmu.Unlock()
			if err != nil {
				return
			}
		}
	}
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
