package file

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/message"
)

func TestAppendLine(t *testing.T) {
	ts := time.Date(2026, 11, 26, 10, 0, 0, 123000000, time.UTC)
	tests := []struct {
		name    string
		payload []byte
		want    string
	}{
		{"json", []byte(`{"temp": 21.5}`), `{"ts":"2026-11-26T10:00:00.123000Z","topic":"a/b","qos":1,"client_id":"c","device_id":"d","payload":{"temp": 21.5}}` + "\n"},
		{"multiline json", []byte("{\n\"a\": 1\n}"), `{"ts":"2026-11-26T10:00:00.123000Z","topic":"a/b","qos":1,"client_id":"c","device_id":"d","payload":{"a":1}}` + "\n"},
		{"text", []byte(`on "now"`), `{"ts":"2026-11-26T10:00:00.123000Z","topic":"a/b","qos":1,"client_id":"c","device_id":"d","payload":"on \"now\""}` + "\n"},
		{"binary", []byte{0xff, 0x00}, `{"ts":"2026-11-26T10:00:00.123000Z","topic":"a/b","qos":1,"client_id":"c","device_id":"d","payload_b64":"/wA="}` + "\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &message.Message{Topic: "a/b", QoS: 1, ClientID: "c", DeviceID: "d", Received: ts, Payload: tt.payload}
			got := string(AppendLine(nil, m))
			if got != tt.want {
				t.Fatalf("got  %s\nwant %s", got, tt.want)
			}
			var v map[string]any
			if err := json.Unmarshal([]byte(got), &v); err != nil {
				t.Fatalf("line is not JSON: %v", err)
			}
		})
	}
}

func TestRotationKeepsEveryLine(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "out", "data.jsonl")
	s, err := Open("archive", Config{Path: path, MaxSize: 4096, MaxFiles: 100})
	if err != nil {
		t.Fatal(err)
	}
	const n = 500
	for i := 0; i < n; i++ {
		if err := s.Deliver(context.Background(), &message.Message{Topic: "t", Payload: []byte(fmt.Sprintf(`{"seq":%d}`, i))}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(path + "*")
	if len(files) < 5 {
		t.Fatalf("expected rotation, got files %v", files)
	}
	seen := map[int]bool{}
	for _, f := range files {
		fh, _ := os.Open(f)
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			var v struct {
				Payload struct{ Seq int } `json:"payload"`
			}
			if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
				t.Fatalf("%s: bad line %q", f, sc.Text())
			}
			seen[v.Payload.Seq] = true
		}
		fh.Close()
		if st, _ := os.Stat(f); st.Size() > 4096 {
			t.Fatalf("%s is %d bytes, above max_size", f, st.Size())
		}
	}
	if len(seen) != n {
		t.Fatalf("found %d distinct lines, want %d", len(seen), n)
	}
}

func TestRotationDropsOldest(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.jsonl")
	s, err := Open("x", Config{Path: path, MaxSize: 1024, MaxFiles: 2})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 200; i++ {
		s.Deliver(context.Background(), &message.Message{Topic: "t", Payload: []byte(`{"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}`)})
	}
	s.Close()
	files, _ := filepath.Glob(path + "*")
	if len(files) != 3 {
		t.Fatalf("want the live file and 2 rotated, got %v", files)
	}
	if err := s.Deliver(context.Background(), &message.Message{Topic: "t"}); err != ErrClosed {
		t.Fatalf("deliver after close: %v", err)
	}
}
