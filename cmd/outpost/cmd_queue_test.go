package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/queue"
)

func TestQueueCommands(t *testing.T) {
	root := t.TempDir()
	for _, lane := range []string{"alarms", "telemetry"} {
		q, err := queue.Open(queue.Config{Dir: filepath.Join(root, lane)}, queue.Options{Name: lane})
		if err != nil {
			t.Fatal(err)
		}
		for range 3 {
			m := &message.Message{Topic: "dev/1/" + lane, QoS: 1, Payload: []byte(`{"v":1}`), Received: time.Now()}
			if _, err := q.Append(context.Background(), message.Encode(m)); err != nil {
				t.Fatal(err)
			}
		}
		q.Close()
	}
	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{"queue", "status", "--offline", "--dir", root}, exitOK},
		{[]string{"queue", "status", "--offline", "--dir", root, "--json"}, exitOK},
		{[]string{"queue", "inspect", "--dir", filepath.Join(root, "alarms"), "-n", "2"}, exitOK},
		{[]string{"queue", "verify", "--dir", root}, exitOK},
		{[]string{"queue", "verify"}, exitUsage},
		{[]string{"queue", "frobnicate", "--dir", root}, exitUsage},
		{[]string{"queue", "status", "--offline", "--dir", t.TempDir()}, exitUsage},
	} {
		if got := dispatch(tc.args, io.Discard, io.Discard); got != tc.code {
			t.Errorf("%v: exit %d, want %d", tc.args, got, tc.code)
		}
	}
	// Damage a record: verify exits 1.
	seg := filepath.Join(root, "alarms", "00000000000000000001.seg")
	f, err := os.OpenFile(seg, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{0xff}, 16+24+5)
	f.Close()
	if got := dispatch([]string{"queue", "verify", "--dir", root}, io.Discard, io.Discard); got != exitFailure {
		t.Fatalf("verify on damaged queue: exit %d", got)
	}
}
