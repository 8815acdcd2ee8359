package uplink

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/eclipse/paho.golang/paho"
	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/module"
	"github.com/outpost-edge/outpost/internal/queue"
)

// Queue is the consumer side of a lane's queue (internal/queue satisfies
// it). Next blocks until a record is available; Ack may be called from
// another goroutine than Next, concurrently, and out of order; Rewind is
// only called while no Next is running. A record's Data must stay valid
// until the record is acknowledged or Rewind is called.
type Queue interface {
	Next(ctx context.Context) (queue.Record, error)
	Ack(seq uint64) error
	Rewind()
}

// Backlogger is optionally implemented by a Queue to report what it still
// holds (unacknowledged records and their bytes). Without it, a queue with
// `Stats() queue.Stats` (queue.Disk, queue.Mem) reports Depth and Bytes, a
// queue with `Len() int` records only; otherwise the backlog is unknown
// (-1) and no ETA is computed.
type Backlogger interface {
	Backlog() (records, bytes int64)
}

// Downlink receives cloud → gateway commands, topic already mapped to the
// local form (prefix stripped). A nil error means the command was accepted;
// the uplink then acknowledges it to the cloud broker. m is only valid
// during the call (Clone it to keep it).
type Downlink interface {
	Deliver(ctx context.Context, m *message.Message) error
}

// DeadLetter optionally receives the records the uplink gives up on (see
// the package doc). It is called before the record is acknowledged in its
// lane; it must not block for long.
type DeadLetter interface {
	DeadLetter(lane string, rec queue.Record, reason string)
}

// Sentinel errors.
var (
	// ErrNotAuthorized is returned (wrapped in a *ConnectError) when the
	// broker refuses the credentials: CONNACK 0x86 bad user name or
	// password, 0x87 not authorized, 0x8C bad authentication method.
	ErrNotAuthorized = errors.New("uplink: not authorized by the broker")
	// ErrTLS is returned (wrapped) when the TLS handshake fails, e.g. an
	// untrusted server certificate or a wrong server name.
	ErrTLS = errors.New("uplink: TLS handshake failed")
	// ErrNoQueue is returned by Init when Options.Queues is nil or returns
	// no queue for a lane.
	ErrNoQueue = errors.New("uplink: no queue for lane")
)

// ConnectError is a CONNACK refusal, with the broker's reason code.
type ConnectError struct {
	Broker string
	Code   byte
	Reason string // the broker's reason string, if any
}

func (e *ConnectError) Error() string {
	s := fmt.Sprintf("uplink: broker %s refused the connection: %s (reason code 0x%02X)", e.Broker, reasonName(e.Code), e.Code)
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	return s
}

// Unwrap lets errors.Is(err, ErrNotAuthorized) match credential refusals.
func (e *ConnectError) Unwrap() error {
	switch e.Code {
	case 0x86, 0x87, 0x8C:
		return ErrNotAuthorized
	}
	return nil
}

func reasonName(code byte) string {
	switch code {
	case 0x80:
		return "unspecified error"
	case 0x81:
		return "malformed packet"
	case 0x82:
		return "protocol error"
	case 0x83:
		return "implementation specific error"
	case 0x84:
		return "unsupported protocol version"
	case 0x85:
		return "client identifier not valid"
	case 0x86:
		return "bad user name or password"
	case 0x87:
		return "not authorized"
	case 0x88:
		return "server unavailable"
	case 0x89:
		return "server busy"
	case 0x8A:
		return "banned"
	case 0x8C:
		return "bad authentication method"
	case 0x90:
		return "topic name invalid"
	case 0x95:
		return "packet too large"
	case 0x97:
		return "quota exceeded"
	case 0x99:
		return "payload format invalid"
	case 0x9F:
		return "connection rate exceeded"
	}
	return "error"
}

// Options are the uplink's dependencies, wired by the integrator.
type Options struct {
	Logger  *slog.Logger // nil = discard
	Metrics *metrics.Set // nil = a private set
	// Queues returns the queue of a lane; called by Init for every
	// configured lane. The uplink never closes queues.
	Queues func(lane LaneConfig) (Queue, error)
	// Downlink receives cloud commands; nil = no subscription.
	Downlink Downlink
	// DeadLetter, if set, receives records the uplink gives up on.
	DeadLetter DeadLetter
}

// Uplink is the cloud uplink module (module.Typed, name "uplink").
type Uplink struct {
	opts Options
	log  *slog.Logger
	set  *metrics.Set

	// set by Init
	cfg      Config
	tmpl     *Template
	broker   brokerURL
	tlsCfg   *tls.Config
	password string
	dlPrefix string
	dlFilter string
	lanes    []*lane // sorted by priority, highest first
	sess     *session
	bucket   *bucket // global bandwidth cap, nil = none
	m        *upMetrics

	ready chan struct{} // signalled (cap 1) by lane readers and the ack path

	// sender scratch
	topicBuf, propBuf []byte
	served            uint64

	mu             sync.Mutex
	state          module.State
	lastErr        error
	connectedSince time.Time
	nextRetry      time.Time
	attempts       int // failed attempts since the last connection
	reconnects     uint64
	connectedOnce  bool
	dlErr          error
	progress       progressState
	stopDeadline   time.Time
	cancel         context.CancelFunc
	done           chan struct{}
	runCtx         context.Context
}

var _ module.Typed[Config] = (*Uplink)(nil)

// New returns an uplink; Init configures it.
func New(o Options) *Uplink {
	lg := o.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	set := o.Metrics
	if set == nil {
		set = metrics.NewSet()
	}
	return &Uplink{opts: o, log: lg.With("module", "uplink"), set: set, state: module.StateStopped}
}

// Name implements module.Typed.
func (u *Uplink) Name() string { return "uplink" }

// Init loads TLS files and opens the lanes' queues through
// Options.Queues; pc is defaulted and validated (module.Of). It must not be
// called while started.
func (u *Uplink) Init(_ context.Context, pc *Config) error {
	c := *pc
	u.cfg = c
	u.state = module.StateStopped
	if !c.Enabled {
		return nil
	}
	var err error
	if u.tmpl, err = ParseTemplate(c.TopicTemplate); err != nil {
		return fmt.Errorf("uplink: topic_template: %w", err)
	}
	u.broker, _ = parseBroker(c.Broker)
	if u.broker.tls {
		if u.tlsCfg, err = c.tlsConfig(u.broker.host); err != nil {
			return fmt.Errorf("uplink: tls: %w", err)
		}
	}
	if u.password, err = c.password(); err != nil {
		return fmt.Errorf("uplink: %w", err)
	}
	u.dlPrefix = strings.ReplaceAll(c.Downlink.Prefix, "{node_id}", c.NodeID)
	u.dlFilter = u.dlPrefix + c.Downlink.Filter
	u.m = newUpMetrics(u.set)
	u.lanes = nil
	totalShare := 0
	for _, lc := range c.Lanes {
		totalShare += lc.Share
	}
	for i, lc := range c.Lanes {
		if u.opts.Queues == nil {
			return fmt.Errorf("%w %q: Options.Queues is nil", ErrNoQueue, lc.Name)
		}
		q, err := u.opts.Queues(lc)
		if err != nil {
			return fmt.Errorf("uplink: lanes[%d] %q: open queue: %w", i, lc.Name, err)
		}
		if q == nil {
			return fmt.Errorf("%w %q", ErrNoQueue, lc.Name)
		}
		l := newLane(lc, q, u.set)
		if c.Bandwidth > 0 && lc.Share > 0 {
			rate := float64(c.Bandwidth) * float64(lc.Share) / float64(totalShare)
			l.share = newBucket(rate, max(rate/10, 1), time.Now())
		}
		u.lanes = append(u.lanes, l)
	}
	sort.SliceStable(u.lanes, func(i, j int) bool { return u.lanes[i].cfg.Priority > u.lanes[j].cfg.Priority })
	for i, l := range u.lanes {
		l.idx = i
		l.higher = l.cfg.Priority < u.lanes[0].cfg.Priority // a higher lane exists
	}
	u.bucket = nil
	if c.Bandwidth > 0 {
		u.bucket = newBucket(float64(c.Bandwidth), max(float64(c.Bandwidth)/10, 1), time.Now())
	}
	u.sess = newSession(u.log, c.InFlight, u.onAck)
	u.ready = make(chan struct{}, 1)
	u.progress = progressState{}
	return nil
}

// Start begins connecting in the background and returns at once: the
// gateway works offline, records wait in their lanes.
func (u *Uplink) Start(context.Context) error {
	if !u.cfg.Enabled {
		u.setState(module.StateReady, nil)
		return nil
	}
	if u.sess == nil {
		return errors.New("uplink: Start before Init")
	}
	ctx, cancel := context.WithCancel(context.Background())
	u.mu.Lock()
	u.cancel, u.done, u.runCtx = cancel, make(chan struct{}), ctx
	u.state, u.lastErr, u.attempts, u.stopDeadline = module.StateStarting, nil, 0, time.Time{}
	u.mu.Unlock()
	if u.tlsCfg != nil && u.tlsCfg.InsecureSkipVerify {
		u.log.Warn("uplink: tls.insecure_skip_verify is set: the broker's certificate is NOT verified")
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); u.run(ctx) }()
	go func() { defer wg.Done(); u.progressLoop(ctx) }()
	go func() { wg.Wait(); close(u.done) }()
	return nil
}

// Stop stops sending, waits briefly for in-flight publishes to be
// acknowledged (fewer duplicates next time), disconnects and returns.
// Unacknowledged records stay in their lanes. Idempotent.
func (u *Uplink) Stop(ctx context.Context) error {
	u.mu.Lock()
	cancel, done := u.cancel, u.done
	u.cancel = nil
	if dl, ok := ctx.Deadline(); ok {
		u.stopDeadline = dl
	}
	u.mu.Unlock()
	if cancel == nil {
		u.setState(module.StateStopped, nil)
		return nil
	}
	cancel()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("uplink: stop: %w", ctx.Err())
	}
	u.setState(module.StateStopped, nil)
	return nil
}

// Health implements module.Typed: ready while connected, degraded with
// the reason while disconnected.
func (u *Uplink) Health() module.Status {
	u.mu.Lock()
	defer u.mu.Unlock()
	switch {
	case !u.cfg.Enabled:
		return module.Status{State: module.StateReady, Detail: "disabled"}
	case u.state == module.StateReady:
		d := "connected to " + u.cfg.Broker
		if u.dlErr != nil {
			d += "; downlink: " + u.dlErr.Error()
			return module.Status{State: module.StateDegraded, Detail: d}
		}
		return module.Status{State: module.StateReady, Detail: d}
	case u.state == module.StateDegraded:
		d := "disconnected from " + u.cfg.Broker
		if u.lastErr != nil {
			d += ": " + u.lastErr.Error()
		}
		if !u.nextRetry.IsZero() {
			d += fmt.Sprintf("; retry %d in %v", u.attempts+1, time.Until(u.nextRetry).Round(time.Millisecond))
		}
		return module.Status{State: module.StateDegraded, Detail: d}
	}
	return module.Status{State: u.state}
}

// LastError returns the last connection error (nil once connected).
func (u *Uplink) LastError() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.lastErr
}

func (u *Uplink) setState(s module.State, err error) {
	u.mu.Lock()
	u.state, u.lastErr = s, err
	u.mu.Unlock()
}

// run connects, serves, and reconnects with backoff until ctx ends.
func (u *Uplink) run(ctx context.Context) {
	bo := newBackoff(u.cfg.Reconnect.Min.D(), u.cfg.Reconnect.Max.D(), nil)
	// Readers always start right after a Rewind: a previous run (Stop while
	// disconnected) may have left records read ahead but never sent.
	u.rewind()
	readers := u.startReaders(ctx)
	defer func() { readers.stop() }()
	for ctx.Err() == nil {
		cli, lc, ca, err := u.connect(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			u.m.connectErrors.Inc()
			delay := bo.Next()
			u.mu.Lock()
			u.state, u.lastErr, u.nextRetry = module.StateDegraded, err, time.Now().Add(delay)
			u.attempts++
			n := u.attempts
			u.mu.Unlock()
			u.log.Warn("uplink: connect failed", "err", err, "attempt", n, "retry_in", delay.Round(time.Millisecond))
			if !sleepCtx(ctx, delay) {
				return
			}
			continue
		}
		t0 := time.Now()
		u.onConnected(ctx, cli, ca)
		err = u.serve(ctx, cli, lc)
		u.m.connected.Set(0)
		// cli.Done is closed: paho's reader has stopped, no acknowledgement
		// of this connection can arrive any more; now resend from the oldest
		// unacknowledged record of each lane.
		readers.stop()
		u.rewind()
		if ctx.Err() != nil {
			return
		}
		readers = u.startReaders(ctx)
		if time.Since(t0) > 10*time.Second {
			bo.Reset()
		}
		delay := bo.Next()
		u.mu.Lock()
		u.state, u.lastErr, u.nextRetry, u.attempts = module.StateDegraded, err, time.Now().Add(delay), 0
		u.mu.Unlock()
		u.log.Warn("uplink: connection lost", "err", err, "retry_in", delay.Round(time.Millisecond), "was_up", time.Since(t0).Round(time.Millisecond))
		if !sleepCtx(ctx, delay) {
			return
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// connErr records why paho closed the connection.
type connErr struct {
	mu  sync.Mutex
	err error
}

func (c *connErr) set(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
}

func (c *connErr) get() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

type conn struct {
	*paho.Client
	errs *connErr
}

// connect dials, does the TLS handshake and the MQTT CONNECT.
func (u *Uplink) connect(ctx context.Context) (conn, *lockedConn, *paho.Connack, error) {
	timeout := u.cfg.ConnectTimeout.D()
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	where := u.cfg.Broker
	d := net.Dialer{KeepAlive: 30 * time.Second}
	raw, err := d.DialContext(cctx, "tcp", u.broker.addr)
	if err != nil {
		return conn{}, nil, nil, fmt.Errorf("uplink: connect %s: %w", where, err)
	}
	nc := raw
	// With TLS 1.3 the server checks the client certificate after the
	// client's handshake has completed: a refusal shows up as a reset or an
	// alert on the CONNECT. Note whether the server asked for a certificate
	// so the error can say so.
	var certRequested atomic.Bool
	if u.broker.tls {
		tcfg := u.tlsCfg.Clone()
		certs := tcfg.Certificates
		tcfg.Certificates = nil
		tcfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			certRequested.Store(true)
			if len(certs) > 0 {
				return &certs[0], nil
			}
			return &tls.Certificate{}, nil
		}
		tc := tls.Client(raw, tcfg)
		if err := tc.HandshakeContext(cctx); err != nil {
			raw.Close()
			return conn{}, nil, nil, fmt.Errorf("%w: connect %s: %w", ErrTLS, where, err)
		}
		nc = tc
	}
	lc := newLockedConn(nc, timeout)
	errs := &connErr{}
	cli := paho.NewClient(paho.ClientConfig{
		ClientID:          u.cfg.ClientID,
		Conn:              lc,
		Session:           u.sess,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){u.onDownlink},
		OnClientError:     errs.set,
		OnServerDisconnect: func(d *paho.Disconnect) {
			e := fmt.Sprintf("server sent DISCONNECT: %s (reason code 0x%02X)", reasonName(d.ReasonCode), d.ReasonCode)
			if d.Properties != nil && d.Properties.ReasonString != "" {
				e += ": " + d.Properties.ReasonString
			}
			errs.set(errors.New(e))
		},
		PacketTimeout: timeout,
	})
	se := uint32(u.cfg.SessionExpiry.D() / time.Second)
	recvMax := uint16(64)
	cp := &paho.Connect{
		ClientID:   u.cfg.ClientID,
		KeepAlive:  uint16(u.cfg.KeepAlive.D() / time.Second),
		CleanStart: false, // keep the session: downlink subscription and queued commands survive outages
		Properties: &paho.ConnectProperties{SessionExpiryInterval: &se, ReceiveMaximum: &recvMax},
	}
	if u.cfg.Username != "" {
		cp.UsernameFlag, cp.Username = true, u.cfg.Username
	}
	if u.password != "" {
		cp.PasswordFlag, cp.Password = true, []byte(u.password)
	}
	ca, err := cli.Connect(cctx, cp)
	if err != nil {
		nc.Close()
		if ca != nil && ca.ReasonCode >= 0x80 {
			ce := &ConnectError{Broker: where, Code: ca.ReasonCode}
			if ca.Properties != nil {
				ce.Reason = ca.Properties.ReasonString
			}
			return conn{}, nil, nil, ce
		}
		if certRequested.Load() {
			hint := "the broker requires a client certificate and none is configured (tls.cert_file, tls.key_file)"
			if len(u.tlsCfg.Certificates) > 0 {
				hint = "the broker may have refused the client certificate (tls.cert_file)"
			}
			return conn{}, nil, nil, fmt.Errorf("%w: connect %s: %s: %w", ErrTLS, where, hint, err)
		}
		return conn{}, nil, nil, fmt.Errorf("uplink: connect %s: %w", where, err)
	}
	if _, _, _, _, maxQoS, _ := u.sess.state(); maxQoS < 1 {
		_ = cli.Disconnect(&paho.Disconnect{ReasonCode: 0x9B})
		return conn{}, nil, nil, fmt.Errorf("uplink: broker %s supports QoS 0 only: at-least-once delivery is impossible", where)
	}
	return conn{Client: cli, errs: errs}, lc, ca, nil
}

func (u *Uplink) onConnected(ctx context.Context, cli conn, ca *paho.Connack) {
	window, _, maxPkt, _, _, _ := u.sess.state()
	u.mu.Lock()
	if u.connectedOnce {
		u.reconnects++
		u.m.reconnects.Inc()
	}
	u.connectedOnce = true
	u.state, u.lastErr, u.nextRetry, u.attempts = module.StateReady, nil, time.Time{}, 0
	u.connectedSince = time.Now()
	u.dlErr = nil
	u.mu.Unlock()
	u.m.connected.Set(1)
	u.m.window.Set(float64(window))
	u.log.Info("uplink: connected", "broker", u.cfg.Broker, "client", u.cfg.ClientID,
		"session_present", ca.SessionPresent, "window", window, "max_packet", maxPkt)
	if u.opts.Downlink == nil || u.cfg.Downlink.Disabled {
		return
	}
	// Subscribe on every connection (the filter may have changed); retain
	// handling 1 avoids a replay of retained commands when the subscription
	// already exists in the session.
	sctx, cancel := context.WithTimeout(ctx, u.cfg.ConnectTimeout.D())
	defer cancel()
	sa, err := cli.Subscribe(sctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{
		Topic: u.dlFilter, QoS: byte(*u.cfg.Downlink.QoS), RetainHandling: 1,
	}}})
	if err == nil && len(sa.Reasons) > 0 && sa.Reasons[0] >= 0x80 {
		err = fmt.Errorf("subscribe %q refused: %s (reason code 0x%02X)", u.dlFilter, reasonName(sa.Reasons[0]), sa.Reasons[0])
	}
	if err != nil {
		u.log.Warn("uplink: downlink subscription failed; uplink continues", "topic", u.dlFilter, "err", err)
		u.mu.Lock()
		u.dlErr = err
		u.mu.Unlock()
	}
}

// Broker returns the configured broker URL.
func (u *Uplink) Broker() string { return u.cfg.Broker }
