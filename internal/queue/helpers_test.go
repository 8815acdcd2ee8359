package queue

import (
	"context"
	"errors"
	"github.com/outpost-edge/outpost/internal/config"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// checkFor polls f until it returns nil or the deadline passes.
func checkFor(t *testing.T, total time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %v: %v", total, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func openT(t *testing.T, cfg Config, opts Options) *Disk {
	t.Helper()
	q, err := Open(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return q
}

// drain reads every available record (waiting up to idle for more).
func drain(t *testing.T, q Queue, idle time.Duration, ack bool) []Record {
	t.Helper()
	var out []Record
	for {
		ctx, cancel := context.WithTimeout(context.Background(), idle)
		r, err := q.Next(ctx)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			return out
		}
		if err != nil {
			t.Fatalf("next: %v", err)
		}
		out = append(out, r)
		if ack {
			if err := q.Ack(r.Seq); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func segFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*"+segSuffix))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func fileSize(t *testing.T, p string) int64 {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

func ConfigDuration(d time.Duration) config.Duration { return config.Duration(d) }

func newTestLogger(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }
