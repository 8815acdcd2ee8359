package webhook

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/outpost-edge/outpost/internal/message"
)

func msg(p string) *message.Message {
	return &message.Message{Topic: "alerts/x", DeviceID: "d1", Payload: []byte(p)}
}

func TestDeliverPostsJSONWithHeaders(t *testing.T) {
	t.Setenv("HOOK_TOKEN", "s3cret")
	var got http.Header
	var body []byte
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.Header.Clone()
		body, _ = io.ReadAll(r.Body)
		if r.Method != http.MethodPost {
			t.Errorf("method %s", r.Method)
		}
	}))
	defer srv.Close()
	var logs bytes.Buffer
	s, err := New(Config{URL: srv.URL + "/hook?key=abc", Headers: map[string]string{"Authorization": "Bearer ${env:HOOK_TOKEN}", "X-Site": "${HOOK_TOKEN}-2"}},
		slog.New(slog.NewTextHandler(&logs, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Deliver(context.Background(), msg(`{"a":1}`)); err != nil {
		t.Fatal(err)
	}
	if got.Get("Authorization") != "Bearer s3cret" || got.Get("X-Site") != "s3cret-2" ||
		got.Get("Content-Type") != "application/json" || got.Get("X-Outpost-Topic") != "alerts/x" || string(body) != `{"a":1}` {
		t.Fatalf("headers %v body %s", got, body)
	}
	if strings.Contains(s.Name(), "abc") || strings.Contains(logs.String(), "s3cret") {
		t.Fatalf("secret leaked: name %q logs %q", s.Name(), logs.String())
	}
}

func TestRetriesOn5xxThenSucceeds(t *testing.T) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) < 3 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
	}))
	defer srv.Close()
	s, _ := New(Config{URL: srv.URL, Retries: 3, Backoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond}, nil, nil)
	if err := s.Deliver(context.Background(), msg(`{}`)); err != nil {
		t.Fatal(err)
	}
	if n.Load() != 3 {
		t.Fatalf("%d attempts", n.Load())
	}
}

func TestNoRetryOn4xx(t *testing.T) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		w.WriteHeader(http.StatusBadRequest)
	}))
	defer srv.Close()
	s, _ := New(Config{URL: srv.URL, Retries: 3, Backoff: time.Millisecond}, nil, nil)
	err := s.Deliver(context.Background(), msg(`{}`))
	if !errors.Is(err, ErrStatus) || n.Load() != 1 {
		t.Fatalf("err %v after %d attempts", err, n.Load())
	}
}

func TestRetriesExhausted(t *testing.T) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		w.WriteHeader(http.StatusBadGateway)
	}))
	defer srv.Close()
	s, _ := New(Config{URL: srv.URL, Retries: 2, Backoff: time.Millisecond}, nil, nil)
	err := s.Deliver(context.Background(), msg(`{}`))
	if !errors.Is(err, ErrStatus) || !strings.Contains(err.Error(), "502") || n.Load() != 3 {
		t.Fatalf("err %v after %d attempts", err, n.Load())
	}
}

func TestTimeoutIsRetried(t *testing.T) {
	var n atomic.Int32
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			select { // hang past the client timeout
			case <-r.Context().Done():
			case <-release:
			}
			return
		}
	}))
	defer srv.Close()
	defer close(release)
	s, _ := New(Config{URL: srv.URL, Timeout: 50 * time.Millisecond, Retries: 2, Backoff: time.Millisecond}, nil, nil)
	t0 := time.Now()
	if err := s.Deliver(context.Background(), msg(`{}`)); err != nil {
		t.Fatal(err)
	}
	if n.Load() != 2 || time.Since(t0) < 50*time.Millisecond {
		t.Fatalf("%d attempts in %v", n.Load(), time.Since(t0))
	}
	// without retries the timeout is the error
	s2, _ := New(Config{URL: srv.URL, Timeout: 20 * time.Millisecond, RetriesSet: true}, nil, nil)
	n.Store(0)
	if err := s2.Deliver(context.Background(), msg(`{}`)); err == nil || !strings.Contains(err.Error(), "timed out") {
		t.Fatalf("err %v", err)
	}
}

func TestQueuedDeliveryAndClose(t *testing.T) {
	var mu sync.Mutex
	var bodies []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		bodies = append(bodies, string(b))
		mu.Unlock()
	}))
	defer srv.Close()
	s, _ := New(Config{URL: srv.URL, Queue: 10}, nil, nil)
	buf := []byte(`{"n":1}`)
	m := &message.Message{Topic: "t", Payload: buf}
	if err := s.Deliver(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	copy(buf, `{"n":2}`) // the caller reuses its buffer: the queue must hold a copy
	s.Deliver(context.Background(), m)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if strings.Join(bodies, ",") != `{"n":1},{"n":2}` {
		t.Fatalf("bodies %v", bodies)
	}
	if err := s.Deliver(context.Background(), m); !errors.Is(err, ErrClosed) {
		t.Fatalf("after close: %v", err)
	}
}

func TestQueueFullRejects(t *testing.T) {
	block := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-block }))
	defer srv.Close()
	s, _ := New(Config{URL: srv.URL, Queue: 1}, nil, nil)
	var rejected error
	for i := 0; i < 5 && rejected == nil; i++ {
		rejected = s.Deliver(context.Background(), msg(`{}`))
	}
	close(block)
	if !errors.Is(rejected, message.ErrRejected) {
		t.Fatalf("err %v", rejected)
	}
	s.Close(context.Background())
}

func TestConfigValidate(t *testing.T) {
	c := Config{URL: "ftp://x", Method: "GET", Retries: -1, Headers: map[string]string{"Bad Name": "v"}}
	err := c.Validate()
	for _, w := range []string{"url:", "method:", "retries:", "headers:"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("Validate: %v, want %s", err, w)
		}
	}
	if got := Redact("https://user:pw@h/p?token=1#f"); got != "https://h/p?redacted" {
		t.Errorf("Redact = %s", got)
	}
}

// A closed sink takes its series out of /metrics, but only when no other
// sink with the same URL still counts on them.
func TestCloseUnregistersSeries(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer srv.Close()
	set := metrics.NewSet()
	names := func() string {
		var b bytes.Buffer
		set.WritePrometheus(&b)
		return b.String()
	}
	a, err := New(Config{URL: srv.URL, Timeout: time.Second}, nil, set)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := New(Config{URL: srv.URL, Headers: map[string]string{"X-B": "1"}}, nil, set) // same URL, other config
	other, _ := New(Config{URL: srv.URL + "/other"}, nil, set)
	for _, s := range []*Sink{a, b, other} {
		if err := s.Deliver(context.Background(), msg(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	mine := `outpost_webhook_requests_total{url="` + srv.URL + `",code="200"}`
	if !strings.Contains(names(), mine) {
		t.Fatalf("no %s in\n%s", mine, names())
	}
	a.Close(context.Background())
	if !strings.Contains(names(), mine) {
		t.Fatalf("closing one of two sinks of a URL removed its series")
	}
	b.Close(context.Background())
	if got := names(); strings.Contains(got, `url="`+srv.URL+`"`) {
		t.Fatalf("series of a closed URL are still listed:\n%s", got)
	}
	if !strings.Contains(names(), `url="`+srv.URL+`/other"`) {
		t.Fatalf("another URL's series went too")
	}
	other.Close(context.Background())
}
