package sink

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/sink/file"
	"github.com/outpost-edge/outpost/internal/sink/republish"
	"github.com/outpost-edge/outpost/internal/sink/webhook"
)

type pubs struct {
	mu  sync.Mutex
	got []string
}

func (p *pubs) PublishMessage(m *message.Message) error {
	p.mu.Lock()
	p.got = append(p.got, m.Topic)
	p.mu.Unlock()
	return nil
}

type named string

func (n named) Name() string                                    { return string(n) }
func (n named) Deliver(context.Context, *message.Message) error { return nil }

// References resolve by kind ("kind" or "kind:name"), the name part going
// to the kind's resolver; unknown kinds are ErrUnknown naming the
// reference and the kinds there are.
func TestResolve(t *testing.T) {
	p := &pubs{}
	r := New(Options{Publisher: p})
	r.Provide(KindUplink, func(lane string) (message.Sink, error) {
		if lane == "" || lane == "telemetry" {
			return named("uplink:telemetry"), nil
		}
		return nil, ErrUnknown
	})
	r.Provide(KindRules, func(string) (message.Sink, error) { return named("rules"), nil })
	tests := []struct {
		ref, want string
		err       error
	}{
		{"republish", "republish", nil},
		{"uplink:telemetry", "uplink:telemetry", nil},
		{"uplink:", "uplink:telemetry", nil},
		{"rules", "rules", nil},
		{"uplink:bulk", "", ErrUnknown},
		{"file:archive", "", ErrUnknown},
		{"nope", "", ErrUnknown},
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			s, err := r.Resolve(tt.ref)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("err %v, want %v", err, tt.err)
				}
				return
			}
			if err != nil || s.Name() != tt.want {
				t.Fatalf("got %v %v, want %s", s, err, tt.want)
			}
		})
	}
	_, err := r.Resolve("file:archive")
	if !strings.Contains(err.Error(), `"file:archive" (kinds: republish, rules, uplink)`) {
		t.Fatalf("error %q does not name the reference and the kinds", err)
	}
	s, _ := r.Resolve("republish")
	if err := s.Deliver(context.Background(), &message.Message{Topic: "a/b"}); err != nil || len(p.got) != 1 {
		t.Fatalf("republish: %v %v", err, p.got)
	}
}

// The configured sinks are built here for every producer: republish needs
// the broker, file and webhook sinks are the real ones.
func TestBuild(t *testing.T) {
	if _, err := New(Options{}).Republish("r", republish.Config{}); !errors.Is(err, ErrNoPublisher) {
		t.Fatalf("republish without a broker: %v", err)
	}
	if k := New(Options{}).Kinds(); len(k) != 0 {
		t.Fatalf("a registry without a broker has kinds %v", k)
	}
	r := New(Options{Publisher: &pubs{}})
	if s, err := r.Republish("r", republish.Config{Topic: "x/{topic}"}); err != nil || s.Name() != "r" {
		t.Fatalf("republish %v %v", s, err)
	}
	fc := file.Config{Path: filepath.Join(t.TempDir(), "out.jsonl")}
	fc.SetDefaults()
	fs, err := r.File("archive", fc)
	if err != nil {
		t.Fatal(err)
	}
	if err := fs.Deliver(context.Background(), &message.Message{Topic: "a", Payload: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	fs.Close()
	var hits sync.WaitGroup
	hits.Add(1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { hits.Done() }))
	defer srv.Close()
	ws, err := r.Webhook(webhook.Config{URL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	if err := ws.Deliver(context.Background(), &message.Message{Topic: "a", Payload: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	hits.Wait()
	if _, err := r.Webhook(webhook.Config{URL: "::bad"}); err == nil {
		t.Fatal("a bad webhook URL was accepted")
	}
}
