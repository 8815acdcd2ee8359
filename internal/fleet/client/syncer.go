package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/proto"
	"github.com/outpost-edge/outpost/internal/fleet/twin"
)

// Applier applies desired objects through the agent's own reload paths.
// Apply must validate first and change nothing when it returns an error;
// the error text is reported verbatim (say file, line:column where there
// is one). Remove undoes a slot that is no longer desired.
type Applier interface {
	Apply(ctx context.Context, d proto.Desired) error
	Remove(ctx context.Context, kind, name string) error
}

// Measurer is an optional extension of Applier: run-time figures of an
// applied slot, polled with the Observer. errors counts the slot's
// run-time errors since it was applied; queue is the gateway's uplink
// backlog now and queueStart the backlog when the slot was applied (-1:
// not known to this process; the reported value stays).
type Measurer interface {
	Measure(kind, name string) (errors, queue, queueStart int64, ok bool)
}

// ErrRetry marks an Apply error worth trying again later by itself (a
// download from the server that failed, an artifact not published yet):
// wrap it (fmt.Errorf("...: %w", ..., ErrRetry) or errors.Join). The
// Syncer applies the slot again after 2 s, doubling to 5 min, until it is
// applied or the slot changes; other errors wait for a new version of the
// slot.
var ErrRetry = errors.New("will retry")

const (
	retryMin = 2 * time.Second
	retryMax = 5 * time.Minute
)

type retryState struct {
	at   time.Time
	wait time.Duration
	hash string // the content that failed
}

// Reapplier is an optional extension of Applier whose applied state of
// some kinds does not outlive the process (the agent's config fragments
// are merged over the config file in memory): the offline start applies
// those kinds again even where the cache says they are applied.
type Reapplier interface {
	ReapplyAtStart(kind string) bool
}

// Observer is an optional extension of Applier: the live state of an
// applied slot (a component's supervisor state and restarts). The Syncer
// polls it every Options.ObserveEvery and reports the status again when it
// changed. ok=false: nothing to observe for this slot.
type Observer interface {
	Observe(kind, name string) (state string, restarts int, reason string, ok bool)
}

// Options configure a Syncer.
type Options struct {
	Dir    string // fleet directory (identity + cache)
	Server string // overrides the enrolled server URL
	// Servers are more replicas of the same fleet (one database), tried
	// in turn after Server (or the enrolled URL) when a session ends with
	// an error: a replica that dies is left for the next one at once.
	Servers []string
	Applier Applier
	Logger  *slog.Logger
	// Facts are reported with every status (arch, version, hostname...).
	Facts func() map[string]string
	// ReconnectMax caps the reconnect backoff (default 30s; it starts at
	// 500ms and has jitter).
	ReconnectMax time.Duration
	// IdleTimeout ends a watch with no bytes for this long (default 100s;
	// the server sends keepalives every 30s).
	IdleTimeout time.Duration
	// ObserveEvery is how often an Observer Applier is polled (default 5s).
	ObserveEvery time.Duration
	// Live returns the gateway's live figures (message rate, uplink
	// backlog), reported as facts too; polled every LiveEvery (default
	// 30s), and a change sends the status again. Round the values, or a
	// busy gateway reports on every poll.
	Live      func() map[string]string
	LiveEvery time.Duration
	// LocalAddr is the source IP of the connections to the server
	// (default: the system's choice). Load tests spread many gateways
	// over 127.0.0.2, 127.0.0.3... beyond one address's ephemeral ports.
	LocalAddr string
}

// cacheFile is cache.json.
type cacheFile struct {
	ResourceVersion int64                    `json:"resourceVersion"`
	Desired         map[string]proto.Desired `json:"desired"` // by slot key
	Applied         map[string]string        `json:"applied"` // slot key -> content hash applied
	Conditions      map[string]proto.Condition
	StatusSent      bool `json:"statusSent"`
}

// Syncer keeps the gateway in sync with the server.
type Syncer struct {
	opt Options
	log *slog.Logger
	id  *Identity
	hc  *http.Client
	// srvs are the server URLs (replicas); cur is the one in use (under
	// mu).
	srvs []string
	cur  int

	mu        sync.Mutex
	c         cacheFile
	connected bool
	lastErr   error
	changes   chan struct{}
	// endSession ends the current session (after a certificate renewal:
	// the next one connects with the new certificate).
	endSession context.CancelCauseFunc
	renewErr   error
	// retry holds the slots whose last Apply failed with ErrRetry.
	retry map[string]retryState
	// live is the last Options.Live figures (under mu).
	live map[string]string
	// reportMu serialises status reports (reportStatus).
	reportMu sync.Mutex
}

// server returns the URL of the replica in use.
func (s *Syncer) server() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.srvs[s.cur]
}

// nextServer moves to the next replica; it reports whether the list
// wrapped around (every replica was tried since the last move to 0).
func (s *Syncer) nextServer() (wrapped bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cur = (s.cur + 1) % len(s.srvs)
	return s.cur == 0
}

// errRenewed ends a session after the certificate was renewed.
var errRenewed = errors.New("certificate renewed; reconnecting with it")

// client is the current mTLS HTTP client (replaced on renewal).
func (s *Syncer) client() *http.Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hc
}

// New loads the identity and the cache and applies what the cache holds
// that is not applied yet (the offline start).
func New(ctx context.Context, opt Options) (*Syncer, error) {
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.ReconnectMax <= 0 {
		opt.ReconnectMax = 30 * time.Second
	}
	if opt.IdleTimeout <= 0 {
		opt.IdleTimeout = 100 * time.Second
	}
	if opt.ObserveEvery <= 0 {
		opt.ObserveEvery = 5 * time.Second
	}
	id, err := LoadIdentity(opt.Dir)
	if err != nil {
		return nil, err
	}
	if opt.LocalAddr != "" && net.ParseIP(opt.LocalAddr) == nil {
		return nil, fmt.Errorf("fleet: local address %q: want an IP address", opt.LocalAddr)
	}
	s := &Syncer{opt: opt, log: opt.Logger, id: id, changes: make(chan struct{}, 1)}
	s.hc = s.httpClient(id)
	first := id.Server
	if opt.Server != "" {
		first = opt.Server
	}
	s.srvs = []string{strings.TrimRight(first, "/")}
	for _, u := range opt.Servers {
		if u = strings.TrimRight(u, "/"); u != "" && !slices.Contains(s.srvs, u) {
			s.srvs = append(s.srvs, u)
		}
	}
	s.c = cacheFile{Desired: map[string]proto.Desired{}, Applied: map[string]string{}, Conditions: map[string]proto.Condition{}}
	if b, err := os.ReadFile(s.cachePath()); err == nil {
		if err := json.Unmarshal(b, &s.c); err != nil {
			s.log.Warn("fleet: cache unreadable; starting from a full list", "file", s.cachePath(), "err", err)
			s.c = cacheFile{Desired: map[string]proto.Desired{}, Applied: map[string]string{}, Conditions: map[string]proto.Condition{}}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("fleet: cache: %w", err)
	}
	if s.c.Conditions == nil {
		s.c.Conditions = map[string]proto.Condition{}
	}
	// Offline start: run the last desired state.
	s.mu.Lock()
	keys := sortedKeys(s.c.Desired)
	ra, _ := opt.Applier.(Reapplier)
	for _, k := range keys {
		if ra != nil && ra.ReapplyAtStart(s.c.Desired[k].Kind) {
			delete(s.c.Applied, k)
		}
		s.applyLocked(ctx, s.c.Desired[k])
	}
	s.saveLocked()
	s.mu.Unlock()
	return s, nil
}

// httpClient is id's mTLS client, dialing from Options.LocalAddr.
func (s *Syncer) httpClient(id *Identity) *http.Client {
	hc := id.HTTPClient()
	if s.opt.LocalAddr != "" {
		d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(s.opt.LocalAddr)}}
		hc.Transport.(*http.Transport).DialContext = d.DialContext
	}
	return hc
}

// ID is the enrolled gateway id.
func (s *Syncer) ID() string { return s.id.ID }

// Identity is the current identity (it changes on renewal).
func (s *Syncer) Identity() *Identity {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.id
}

// renewLoop renews the certificate at 2/3 of its lifetime and retries a
// failed renewal after a tenth of the time left (between 1 s and 1 h),
// until the certificate expires (then the gateway must enroll again).
func (s *Syncer) renewLoop(ctx context.Context) {
	for {
		id := s.Identity()
		wait := time.Until(id.RenewAt())
		for wait <= 0 {
			nid, err := Renew(ctx, s.opt.Dir, id, s.server())
			if ctx.Err() != nil {
				return
			}
			if err == nil {
				s.mu.Lock()
				old := s.hc
				s.id, s.hc, s.renewErr = nid, s.httpClient(nid), nil
				end := s.endSession
				s.mu.Unlock()
				s.log.Info("fleet: certificate renewed", "gateway", nid.ID, "expires", nid.NotAfter().UTC())
				if end != nil {
					end(errRenewed)
				}
				old.CloseIdleConnections()
				break
			}
			s.mu.Lock()
			s.renewErr = err
			s.mu.Unlock()
			left := time.Until(id.NotAfter())
			retry := min(max(left/10, time.Second), time.Hour)
			s.log.Warn("fleet: certificate renewal failed; will retry", "err", err, "expires_in", left.Round(time.Second), "retry_in", retry)
			select {
			case <-ctx.Done():
				return
			case <-time.After(retry):
			}
		}
		id = s.Identity()
		wait = time.Until(id.RenewAt())
		if wait <= 0 {
			continue
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

func (s *Syncer) cachePath() string { return filepath.Join(s.opt.Dir, "cache.json") }

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func (s *Syncer) saveLocked() {
	b, _ := json.Marshal(s.c)
	if err := writeFile(s.cachePath(), b); err != nil {
		s.log.Error("fleet: cache not saved", "err", err)
	}
}

// applyLocked applies d unless its content was applied already, and
// records its condition.
func (s *Syncer) applyLocked(ctx context.Context, d proto.Desired) {
	key, h := d.Key(), d.Hash()
	cond := proto.Condition{Kind: d.Kind, Name: d.Name, ResourceVersion: d.ResourceVersion, Applied: true}
	if s.c.Applied[key] != h {
		if err := s.opt.Applier.Apply(ctx, d); err != nil {
			cond.Applied, cond.Error = false, err.Error()
			if errors.Is(err, ErrRetry) {
				r := s.retry[key]
				if r.hash != h {
					r = retryState{hash: h}
				}
				r.wait = min(max(r.wait*2, retryMin), retryMax)
				r.at = time.Now().Add(r.wait)
				if s.retry == nil {
					s.retry = map[string]retryState{}
				}
				s.retry[key] = r
				s.log.Warn("fleet: desired object not applied; the running state stays", "object", key, "rv", d.ResourceVersion, "err", err, "retry_in", r.wait)
			} else {
				delete(s.retry, key)
				s.log.Warn("fleet: desired object not applied; the running state stays", "object", key, "rv", d.ResourceVersion, "err", err)
			}
		} else {
			s.c.Applied[key] = h
			delete(s.retry, key)
			s.log.Info("fleet: applied", "object", key, "rv", d.ResourceVersion)
		}
	}
	if old, ok := s.c.Conditions[key]; ok && old.Applied && cond.Applied && s.c.Applied[key] == h {
		cond.QueueStart = old.QueueStart // kept when this process does not know it
	}
	s.observeLocked(&cond)
	if old, ok := s.c.Conditions[key]; !ok || old != cond {
		s.c.Conditions[key] = cond
		s.c.StatusSent = false
	}
}

// observeLocked fills the live state of an applied slot.
func (s *Syncer) observeLocked(c *proto.Condition) {
	c.State, c.Restarts, c.Reason = "", 0, ""
	if o, ok := s.opt.Applier.(Observer); ok && c.Applied {
		if st, n, reason, ok := o.Observe(c.Kind, c.Name); ok {
			c.State, c.Restarts, c.Reason = st, n, reason
		}
	}
	if !c.Applied {
		c.Errors, c.Queue, c.QueueStart = 0, 0, 0
		return
	}
	if m, ok := s.opt.Applier.(Measurer); ok {
		if errs, q, q0, ok := m.Measure(c.Kind, c.Name); ok {
			c.Errors, c.Queue = errs, roundQueue(q)
			if q0 >= 0 {
				c.QueueStart = roundQueue(q0)
			}
		}
	}
}

// roundQueue keeps a backlog exact up to 100 and to two significant
// digits above, so a busy lane does not change the status (and send it)
// on every poll.
func roundQueue(n int64) int64 {
	if n <= 100 {
		return n
	}
	p := int64(1)
	for n/p >= 100 {
		p *= 10
	}
	return (n + p/2) / p * p
}

// observeLoop polls the Observer and reports a changed live state.
func (s *Syncer) observeLoop(ctx context.Context) {
	_, obs := s.opt.Applier.(Observer)
	_, meas := s.opt.Applier.(Measurer)
	if !obs && !meas {
		return
	}
	every(ctx, s.opt.ObserveEvery, func() {
		s.mu.Lock()
		changed := false
		for _, k := range sortedKeys(s.c.Conditions) {
			c := s.c.Conditions[k]
			s.observeLocked(&c)
			if c != s.c.Conditions[k] {
				s.c.Conditions[k] = c
				changed = true
			}
		}
		if changed {
			s.c.StatusSent = false
			s.saveLocked()
		}
		// A status not sent yet (this change, or an earlier report that
		// failed) goes now.
		report := s.connected && !s.c.StatusSent
		s.mu.Unlock()
		if changed {
			s.notify()
		}
		if report {
			if err := s.reportStatus(ctx); err != nil {
				s.log.Warn("fleet: status not reported; will retry", "err", err)
			}
		}
	})
}

// liveLoop polls Options.Live and reports the status when it changed.
func (s *Syncer) liveLoop(ctx context.Context) {
	if s.opt.Live == nil {
		return
	}
	period := s.opt.LiveEvery
	if period <= 0 {
		period = 30 * time.Second
	}
	every(ctx, period, func() {
		live := s.opt.Live()
		s.mu.Lock()
		changed := !maps.Equal(live, s.live)
		if changed {
			s.live = live
			s.c.StatusSent = false
		}
		// A status not sent yet (this change, or an earlier report that
		// failed) goes now.
		report := s.connected && !s.c.StatusSent
		s.mu.Unlock()
		if report {
			if err := s.reportStatus(ctx); err != nil {
				s.log.Warn("fleet: status not reported; will retry", "err", err)
			}
		}
	})
}

// retryLoop applies again the slots that failed with ErrRetry once their
// backoff has passed, and reports their new condition.
func (s *Syncer) retryLoop(ctx context.Context) {
	every(ctx, 500*time.Millisecond, func() {
		s.mu.Lock()
		now, tried := time.Now(), false
		for _, key := range sortedKeys(s.retry) {
			r := s.retry[key]
			d, ok := s.c.Desired[key]
			if !ok || d.Hash() != r.hash {
				delete(s.retry, key) // gone or changed: applied on its own
				continue
			}
			if now.Before(r.at) {
				continue
			}
			s.applyLocked(ctx, d)
			tried = true
		}
		if tried {
			s.saveLocked()
		}
		report := tried && !s.c.StatusSent && s.connected
		s.mu.Unlock()
		if tried {
			s.notify()
		}
		if report {
			if err := s.reportStatus(ctx); err != nil {
				s.log.Warn("fleet: status not reported; will retry", "err", err)
			}
		}
	})
}

// every calls f every period until ctx ends.
func every(ctx context.Context, period time.Duration, f func()) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		f()
	}
}

func (s *Syncer) removeLocked(ctx context.Context, kind, name string) {
	key := kind + "/" + name
	delete(s.c.Desired, key)
	if _, ok := s.c.Applied[key]; ok {
		if err := s.opt.Applier.Remove(ctx, kind, name); err != nil {
			s.log.Warn("fleet: removing an object failed", "object", key, "err", err)
			s.c.Conditions[key] = proto.Condition{Kind: kind, Name: name, Error: "remove: " + err.Error()}
			s.c.StatusSent = false
			return
		}
		delete(s.c.Applied, key)
		s.log.Info("fleet: removed", "object", key)
	}
	if _, ok := s.c.Conditions[key]; ok {
		delete(s.c.Conditions, key)
		s.c.StatusSent = false
	}
}

// Status is the syncer's state for health checks.
type Status struct {
	Connected       bool
	ResourceVersion int64
	Err             error
	// RenewErr is the last failed certificate renewal (nil after success).
	RenewErr error
}

// State returns the current sync state.
func (s *Syncer) State() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Status{Connected: s.connected, ResourceVersion: s.c.ResourceVersion, Err: s.lastErr, RenewErr: s.renewErr}
}

// Changed receives (coalesced) after each applied batch (tests, status).
func (s *Syncer) Changed() <-chan struct{} { return s.changes }

// Run lists, watches and reconnects until ctx ends; it renews the
// certificate at 2/3 of its lifetime.
func (s *Syncer) Run(ctx context.Context) {
	go s.renewLoop(ctx)
	go s.observeLoop(ctx)
	go s.retryLoop(ctx)
	go s.liveLoop(ctx)
	backoff := 500 * time.Millisecond
	for ctx.Err() == nil {
		t0 := time.Now()
		sctx, end := context.WithCancelCause(ctx)
		s.mu.Lock()
		s.endSession = end
		s.mu.Unlock()
		err := s.session(sctx)
		renewed := errors.Is(context.Cause(sctx), errRenewed)
		end(nil)
		s.mu.Lock()
		s.connected = false
		s.lastErr = err
		s.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		if renewed {
			s.log.Info("fleet: certificate renewed; reconnecting with it", "server", s.server())
			continue
		}
		if time.Since(t0) > time.Minute {
			backoff = 500 * time.Millisecond
		}
		failed := s.server()
		if len(s.srvs) > 1 && !s.nextServer() {
			// Another replica: try it at once (still after a short
			// jittered pause, so that a fleet does not stampede it).
			s.log.Warn("fleet: disconnected; trying the next replica", "server", failed, "next", s.server(), "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(rand.N(250 * time.Millisecond)):
			}
			continue
		}
		s.log.Warn("fleet: disconnected; running from the local cache", "server", failed, "err", err, "retry_in", backoff)
		wait := backoff/2 + rand.N(backoff/2+1)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		backoff = min(backoff*2, s.opt.ReconnectMax)
	}
}

// session: report pending status, list if needed, then watch.
func (s *Syncer) session(ctx context.Context) error {
	s.mu.Lock()
	rv := s.c.ResourceVersion
	s.mu.Unlock()
	if err := s.reportStatus(ctx); err != nil {
		return err
	}
	if rv == 0 {
		if err := s.list(ctx); err != nil {
			return err
		}
	}
	err := s.watch(ctx)
	var se *StatusError
	if errors.As(err, &se) && se.Code == http.StatusGone {
		s.log.Info("fleet: resume point compacted; listing again")
		if err := s.list(ctx); err != nil {
			return err
		}
		return s.watch(ctx)
	}
	return err
}

func (s *Syncer) get(ctx context.Context, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.server()+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := s.client().Do(req)
	if err != nil {
		return nil, err
	}
	if err := httpError(resp); err != nil {
		resp.Body.Close()
		return nil, err
	}
	return resp, nil
}

// list replaces the desired state with the server's document.
func (s *Syncer) list(ctx context.Context) error {
	resp, err := s.get(ctx, "/api/v1/agent/desired")
	if err != nil {
		return fmt.Errorf("list: %w", err)
	}
	defer resp.Body.Close()
	var doc proto.Document
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		return fmt.Errorf("list: %w", err)
	}
	s.mu.Lock()
	want := map[string]bool{}
	for _, d := range doc.Objects {
		want[d.Key()] = true
		s.c.Desired[d.Key()] = d
		s.applyLocked(ctx, d)
	}
	for _, k := range sortedKeys(s.c.Desired) {
		if !want[k] {
			d := s.c.Desired[k]
			s.removeLocked(ctx, d.Kind, d.Name)
		}
	}
	for _, k := range sortedKeys(s.c.Applied) {
		if !want[k] {
			kind, name, _ := cut(k)
			s.removeLocked(ctx, kind, name)
		}
	}
	s.c.ResourceVersion = doc.ResourceVersion
	s.saveLocked()
	s.mu.Unlock()
	s.notify()
	return s.reportStatus(ctx)
}

func cut(k string) (string, string, bool) {
	for i := 0; i < len(k); i++ {
		if k[i] == '/' {
			return k[:i], k[i+1:], true
		}
	}
	return k, "", false
}

func (s *Syncer) notify() {
	select {
	case s.changes <- struct{}{}:
	default:
	}
}

// watch follows the stream until it ends; a read idle for IdleTimeout
// ends it (a dead NAT mapping or a silently cut connection).
func (s *Syncer) watch(ctx context.Context) error {
	s.mu.Lock()
	rv := s.c.ResourceVersion
	s.mu.Unlock()
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	resp, err := s.get(wctx, "/api/v1/agent/watch?resourceVersion="+strconv.FormatInt(rv, 10))
	if err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	defer resp.Body.Close()
	s.mu.Lock()
	s.connected, s.lastErr = true, nil
	s.mu.Unlock()
	s.log.Info("fleet: watching", "server", s.server(), "gateway", s.id.ID, "from", rv)
	idle := time.AfterFunc(s.opt.IdleTimeout, func() { cancel(errors.New("no data from the server within the idle timeout")) })
	defer idle.Stop()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	var batch []proto.Event
	for sc.Scan() {
		idle.Reset(s.opt.IdleTimeout)
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var e proto.Event
		if err := json.Unmarshal(line, &e); err != nil {
			return fmt.Errorf("watch: bad event: %w", err)
		}
		switch e.Type {
		case proto.EventModified, proto.EventDeleted:
			if e.Object == nil {
				return fmt.Errorf("watch: %s event without object", e.Type)
			}
			batch = append(batch, e)
		case proto.EventBookmark:
			s.applyBatch(ctx, batch, e.ResourceVersion)
			batch = batch[:0]
			if err := s.reportStatus(ctx); err != nil {
				s.log.Warn("fleet: status not reported; will retry", "err", err)
			}
		case proto.EventError:
			return &StatusError{Code: e.Code, Msg: e.Message}
		}
	}
	if err := context.Cause(wctx); err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	return errors.New("watch: the server ended the stream")
}

func (s *Syncer) applyBatch(ctx context.Context, batch []proto.Event, rv int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range batch {
		if e.Type == proto.EventDeleted {
			s.removeLocked(ctx, e.Object.Kind, e.Object.Name)
			continue
		}
		s.c.Desired[e.Object.Key()] = *e.Object
		s.applyLocked(ctx, *e.Object)
	}
	if rv > s.c.ResourceVersion || len(batch) > 0 {
		if rv > s.c.ResourceVersion {
			s.c.ResourceVersion = rv
		}
		s.saveLocked()
	}
	if len(batch) > 0 {
		s.c.StatusSent = false // the applied resourceVersion moved
		s.saveLocked()
		defer s.notify()
	}
}

// reportStatus sends the status when it changed since the last report.
func (s *Syncer) reportStatus(ctx context.Context) error {
	// One report at a time, each snapshot taken after the previous answer:
	// the session, observe, live and retry loops all report, and two
	// reports in flight at once could reach the server in the other
	// order, leaving it an older status than the one marked sent.
	s.reportMu.Lock()
	defer s.reportMu.Unlock()
	s.mu.Lock()
	if s.c.StatusSent {
		s.mu.Unlock()
		return nil
	}
	st := proto.Status{AppliedResourceVersion: s.c.ResourceVersion, Conditions: []proto.Condition{}, Health: "ok"}
	for _, k := range sortedKeys(s.c.Conditions) {
		c := s.c.Conditions[k]
		st.Conditions = append(st.Conditions, c)
		if !c.Applied || proto.Unhealthy[c.State] {
			st.Health = "degraded"
		}
	}
	live := s.live
	s.mu.Unlock()
	if s.opt.Facts != nil {
		st.Facts = s.opt.Facts()
	}
	if len(live) > 0 && st.Facts == nil {
		st.Facts = map[string]string{}
	}
	maps.Copy(st.Facts, live)
	body, _ := json.Marshal(st)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.server()+"/api/v1/agent/status", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.client().Do(req)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	defer resp.Body.Close()
	if err := httpError(resp); err != nil {
		return fmt.Errorf("status: %w", err)
	}
	s.mu.Lock()
	// Sent unless it changed meanwhile.
	if s.c.ResourceVersion == st.AppliedResourceVersion && len(s.c.Conditions) == len(st.Conditions) {
		same := maps.Equal(live, s.live)
		for _, c := range st.Conditions {
			if s.c.Conditions[c.Kind+"/"+c.Name] != c {
				same = false
			}
		}
		if same {
			s.c.StatusSent = true
			s.saveLocked()
		}
	}
	s.mu.Unlock()
	return nil
}

// ListTwins reads this gateway's twins from the server (GET
// /api/v1/agent/twins): what a gateway that lost its twin state re-seeds
// from.
func (s *Syncer) ListTwins(ctx context.Context) ([]twin.Twin, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.server()+"/api/v1/agent/twins", nil)
	if err != nil {
		return nil, err
	}
	resp, err := s.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("twins: %w", err)
	}
	defer resp.Body.Close()
	if err := httpError(resp); err != nil {
		return nil, fmt.Errorf("twins: %w", err)
	}
	var ts []twin.Twin
	if err := json.NewDecoder(io.LimitReader(resp.Body, 256<<20)).Decode(&ts); err != nil {
		return nil, fmt.Errorf("twins: answer: %w", err)
	}
	return ts, nil
}

// PostReported sends reported twin updates (oldest first, at most
// server.MaxReportedBatch) to the server over the gateway's mTLS
// connection. The server applies each once (by version), so sending again
// after an error is safe.
func (s *Syncer) PostReported(ctx context.Context, ups []twin.Reported) error {
	body, err := json.Marshal(map[string]any{"updates": ups})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.server()+"/api/v1/agent/twins", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.hc.Do(req)
	if err != nil {
		return fmt.Errorf("twins: %w", err)
	}
	defer resp.Body.Close()
	if err := httpError(resp); err != nil {
		return fmt.Errorf("twins: %w", err)
	}
	return nil
}
