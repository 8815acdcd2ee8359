// Package webhook is an HTTP sink: it POSTs each message's payload (JSON) to
// a URL, with a timeout per attempt and retries with jittered exponential
// backoff.
//
// # Usage
//
//	s, err := webhook.New(webhook.Config{
//		URL:     "https://hooks.example/alerts",
//		Headers: map[string]string{"Authorization": "Bearer ${env:HOOK_TOKEN}"},
//		Timeout: 2 * time.Second, Retries: 3,
//	}, logger, metricsSet)
//	err = s.Deliver(ctx, msg)
//	defer s.Close(ctx)
//
// # Behaviour
//
//   - Header values (and the URL) may reference environment variables as
//     ${env:NAME} or ${NAME}; they are expanded once, in New. Header values
//     are never logged, and URLs are logged without their query string and
//     user info (Redact).
//   - A 2xx response is success. 5xx, 408, 429, network errors and timeouts
//     are retried up to Retries times, waiting Backoff·2^n (capped at
//     MaxBackoff) with full jitter; other 4xx fail at once.
//   - With Queue = 0, Deliver is synchronous and returns the final error.
//     With Queue > 0, Deliver copies the message into a bounded queue served
//     by one worker and returns at once; a full queue returns an error
//     wrapping message.ErrRejected (counted as dropped). Close drains the
//     queue until its context ends.
//   - The message topic is sent in the X-Outpost-Topic header, the device id
//     in X-Outpost-Device.
//
// Metrics (VictoriaMetrics): outpost_webhook_requests_total{url,code},
// outpost_webhook_retries_total{url}, outpost_webhook_failed_total{url},
// outpost_webhook_dropped_total{url}.
package webhook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/outpost-edge/outpost/internal/message"
)

// Config configures a webhook sink. Zero values are replaced by SetDefaults.
type Config struct {
	URL        string            `yaml:"url"`
	Method     string            `yaml:"method"`      // default POST
	Headers    map[string]string `yaml:"headers"`     // values: ${env:NAME} expanded
	Timeout    time.Duration     `yaml:"timeout"`     // per attempt, default 5s
	Retries    int               `yaml:"retries"`     // default 3 (when RetriesSet is false)
	RetriesSet bool              `yaml:"-"`           // Retries was given explicitly (0 = no retry)
	Backoff    time.Duration     `yaml:"backoff"`     // first retry delay, default 200ms
	MaxBackoff time.Duration     `yaml:"max_backoff"` // default 10s
	Queue      int               `yaml:"queue"`       // 0 = synchronous Deliver
}

// SetDefaults fills zero values.
func (c *Config) SetDefaults() {
	if c.Method == "" {
		c.Method = http.MethodPost
	}
	if c.Timeout <= 0 {
		c.Timeout = 5 * time.Second
	}
	if c.Retries == 0 && !c.RetriesSet {
		c.Retries = 3
	}
	if c.Backoff <= 0 {
		c.Backoff = 200 * time.Millisecond
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 10 * time.Second
	}
}

// Validate reports configuration problems.
func (c Config) Validate() error {
	var errs []error
	u, err := url.Parse(c.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("url: need an http:// or https:// URL, got %q", Redact(c.URL)))
	}
	switch c.Method {
	case http.MethodPost, http.MethodPut, http.MethodPatch:
	default:
		errs = append(errs, fmt.Errorf("method: %q is not POST, PUT or PATCH", c.Method))
	}
	if c.Retries < 0 || c.Retries > 100 {
		errs = append(errs, fmt.Errorf("retries: %d is not between 0 and 100", c.Retries))
	}
	if c.Queue < 0 {
		errs = append(errs, fmt.Errorf("queue: must not be negative"))
	}
	for k := range c.Headers {
		if k == "" || strings.ContainsAny(k, " \r\n:") {
			errs = append(errs, fmt.Errorf("headers: invalid header name %q", k))
		}
	}
	return errors.Join(errs...)
}

// Key identifies a configuration (header values are hashed in, not shown).
func (c Config) Key() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s t=%s r=%d b=%s/%s q=%d", c.Method, c.URL, c.Timeout, c.Retries, c.Backoff, c.MaxBackoff, c.Queue)
	keys := make([]string, 0, len(c.Headers))
	for k := range c.Headers {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%s", k, c.Headers[k])
	}
	return b.String()
}

// ErrStatus is wrapped by Deliver errors caused by a non-2xx response.
var ErrStatus = errors.New("webhook: unexpected status")

// ErrClosed is returned by Deliver after Close.
var ErrClosed = errors.New("webhook: closed")

// Sink is a webhook. It implements message.Sink.
type Sink struct {
	cfg     Config
	url     string
	redact  string
	headers http.Header
	client  *http.Client
	log     *slog.Logger

	set      *metrics.Set
	label    string // the url label of this sink's series
	requests func(code int) *metrics.Counter
	retries  *metrics.Counter
	failed   *metrics.Counter
	dropped  *metrics.Counter

	mu     sync.Mutex
	closed bool
	queue  chan *message.Message
	done   chan struct{}
	stop   context.CancelFunc
	ctx    context.Context
	sleep  func(ctx context.Context, d time.Duration) error
}

var _ message.Sink = (*Sink)(nil)

var envRef = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)\}`) })

// Expand replaces ${env:NAME} and ${NAME} with environment variables.
func Expand(s string) string {
	return envRef().ReplaceAllStringFunc(s, func(m string) string {
		return os.Getenv(envRef().FindStringSubmatch(m)[1])
	})
}

// Redact returns u without user info and query string, for logs.
func Redact(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(invalid url)"
	}
	p.User = nil
	if p.RawQuery != "" {
		p.RawQuery = "redacted"
	}
	p.Fragment = ""
	return p.String()
}

// New validates cfg (after SetDefaults) and returns a sink. log and set may
// be nil.
func New(cfg Config, log *slog.Logger, set *metrics.Set) (*Sink, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("webhook: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if set == nil {
		set = metrics.NewSet()
	}
	s := &Sink{
		cfg:     cfg,
		url:     Expand(cfg.URL),
		redact:  Redact(cfg.URL),
		headers: http.Header{},
		client:  &http.Client{},
		log:     log.With("module", "webhook", "url", Redact(cfg.URL)),
		sleep:   sleepCtx,
	}
	for k, v := range cfg.Headers {
		s.headers.Set(k, Expand(v))
	}
	if s.headers.Get("Content-Type") == "" {
		s.headers.Set("Content-Type", "application/json")
	}
	lbl := strconv.Quote(s.redact)
	s.set, s.label = set, lbl
	holdSeries(set, lbl)
	s.requests = func(code int) *metrics.Counter {
		return set.GetOrCreateCounter(fmt.Sprintf(`outpost_webhook_requests_total{url=%s,code="%d"}`, lbl, code))
	}
	s.retries = set.GetOrCreateCounter(`outpost_webhook_retries_total{url=` + lbl + `}`)
	s.failed = set.GetOrCreateCounter(`outpost_webhook_failed_total{url=` + lbl + `}`)
	s.dropped = set.GetOrCreateCounter(`outpost_webhook_dropped_total{url=` + lbl + `}`)
	s.ctx, s.stop = context.WithCancel(context.Background())
	if cfg.Queue > 0 {
		s.queue = make(chan *message.Message, cfg.Queue)
		s.done = make(chan struct{})
		go s.worker()
	}
	return s, nil
}

// Name implements message.Sink.
func (s *Sink) Name() string { return "webhook:" + s.redact }

// Deliver sends m (synchronously, or through the queue; see package doc).
func (s *Sink) Deliver(ctx context.Context, m *message.Message) error {
	if s.queue == nil {
		return s.send(ctx, m)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	select {
	case s.queue <- m.Clone():
		return nil
	default:
		s.dropped.Inc()
		return fmt.Errorf("webhook %s: queue of %d full: %w", s.redact, s.cfg.Queue, message.ErrRejected)
	}
}

func (s *Sink) worker() {
	defer close(s.done)
	for m := range s.queue {
		if err := s.send(s.ctx, m); err != nil {
			s.log.Warn("webhook delivery failed", "topic", m.Topic, "err", err)
		}
	}
}

// Close stops accepting messages and waits for queued ones to be sent
// until ctx ends; then in-flight attempts are cancelled.
func (s *Sink) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	if s.queue != nil {
		close(s.queue)
	}
	s.mu.Unlock()
	defer releaseSeries(s.set, s.label)
	if s.done == nil {
		s.stop()
		return nil
	}
	select {
	case <-s.done:
		s.stop()
		return nil
	case <-ctx.Done():
		s.stop()
		<-s.done
		return fmt.Errorf("webhook %s: close: %w", s.redact, ctx.Err())
	}
}

func (s *Sink) send(ctx context.Context, m *message.Message) error {
	var last error
	for attempt := 0; ; attempt++ {
		retry, err := s.attempt(ctx, m)
		if err == nil {
			return nil
		}
		last = err
		if !retry || attempt >= s.cfg.Retries || ctx.Err() != nil {
			break
		}
		s.retries.Inc()
		d := s.cfg.Backoff << attempt
		if d > s.cfg.MaxBackoff || d <= 0 {
			d = s.cfg.MaxBackoff
		}
		d = time.Duration(rand.Int64N(int64(d)) + 1) // full jitter
		if err := s.sleep(ctx, d); err != nil {
			last = fmt.Errorf("%w (after: %v)", err, last)
			break
		}
	}
	s.failed.Inc()
	return fmt.Errorf("webhook %s: %w", s.redact, last)
}

// attempt makes one request; retry says whether the failure is transient.
func (s *Sink) attempt(ctx context.Context, m *message.Message) (retry bool, err error) {
	actx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(actx, s.cfg.Method, s.url, bytes.NewReader(m.Payload))
	if err != nil {
		return false, err
	}
	for k, v := range s.headers {
		req.Header[k] = v
	}
	if m.Topic != "" {
		req.Header.Set("X-Outpost-Topic", m.Topic)
	}
	if m.DeviceID != "" {
		req.Header.Set("X-Outpost-Device", m.DeviceID)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		s.requests(0).Inc()
		// url.Error carries the full URL: report only the cause
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			return true, fmt.Errorf("attempt timed out after %s", s.cfg.Timeout)
		}
		return ctx.Err() == nil, err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	s.requests(resp.StatusCode).Inc()
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return false, nil
	}
	transient := resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusRequestTimeout
	return transient, fmt.Errorf("%w %d", ErrStatus, resp.StatusCode)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Sinks with the same redacted URL share their series (the url label), so a
// closed sink unregisters them only when it was the last one holding them:
// a rule reload that drops a webhook leaves no stale series in /metrics.
var series = struct {
	sync.Mutex
	refs map[*metrics.Set]map[string]int
}{refs: map[*metrics.Set]map[string]int{}}

func holdSeries(set *metrics.Set, label string) {
	series.Lock()
	defer series.Unlock()
	if series.refs[set] == nil {
		series.refs[set] = map[string]int{}
	}
	series.refs[set][label]++
}

func releaseSeries(set *metrics.Set, label string) {
	series.Lock()
	defer series.Unlock()
	m := series.refs[set]
	if m[label]--; m[label] > 0 {
		return
	}
	delete(m, label)
	if len(m) == 0 {
		delete(series.refs, set)
	}
	for _, name := range set.ListMetricNames() {
		mine := strings.Contains(name, "{url="+label+"}") || strings.Contains(name, "{url="+label+",")
		if strings.HasPrefix(name, "outpost_webhook_") && mine {
			set.UnregisterMetric(name)
		}
	}
}
