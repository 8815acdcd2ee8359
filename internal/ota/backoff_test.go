package ota

import (
	"testing"
	"time"
)

// TestRetryBackoff: 100 ms after an attempt that made progress, then 500 ms
// doubling up to 30 s (internal/backoff).
func TestRetryBackoff(t *testing.T) {
	for fails, want := range map[int]time.Duration{
		0: 100 * time.Millisecond, 1: 500 * time.Millisecond, 2: time.Second,
		6: 16 * time.Second, 7: 30 * time.Second, 1000: 30 * time.Second,
	} {
		if got := backoff(fails); got != want {
			t.Errorf("backoff(%d) = %s, want %s", fails, got, want)
		}
	}
}
