package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/testutil/mochi"
)

func TestMochiQoS0(t *testing.T) {
	m := mochi.New(t, nil)
	url := m.TCP(nil)
	m.Serve()
	var progress bytes.Buffer
	res := runBench(t, Config{URL: url, Publishers: 3, Subscribers: 2, Rate: 600, Count: 300,
		Progress: &progress, ProgressInterval: 100 * time.Millisecond})
	checkComplete(t, res, 300)
	if res.OutOfOrder != 0 {
		t.Errorf("out of order %d", res.OutOfOrder)
	}
	if !strings.Contains(progress.String(), "sent") || len(res.Intervals) == 0 {
		t.Errorf("no progress lines: %q", progress.String())
	}
	// The JSON form parses back.
	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back["sent"].(float64) != 300 || back["latency"].(map[string]any)["p99_us"].(float64) <= 0 {
		t.Errorf("json: %s", b)
	}
	var text bytes.Buffer
	res.WriteText(&text)
	for _, want := range []string{"sent", "received", "lost", "p99.9", "loadgen"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, text.String())
		}
	}
}

func TestMochiQoS1MQTT5JSON(t *testing.T) {
	m := mochi.New(t, nil)
	url := m.TCP(nil)
	m.Serve()
	res := runBench(t, Config{URL: url, MQTTVersion: 5, QoS: 1, Publishers: 2, Subscribers: 1, Rate: 1000, Count: 400,
		Payload: PayloadJSON, PayloadSize: 256, Topics: 4, Inflight: 16})
	checkComplete(t, res, 400)
	if res.Acked != 400 || res.Rejected != 0 || res.BadAcks != 0 {
		t.Errorf("acked %d rejected %d bad %d", res.Acked, res.Rejected, res.BadAcks)
	}
	if res.PubackLatency == nil || res.PubackLatency.Count != 400 || res.PubackLatency.P50 <= 0 {
		t.Errorf("puback latency %+v", res.PubackLatency)
	}
	if res.Inflight != 16 {
		t.Errorf("window %d, want 16", res.Inflight)
	}
}

// At max rate with a count, QoS 1 through mochi must still account for
// every message: acked == sent, and whatever was not received is counted.
func TestMochiQoS1MaxRateAccounting(t *testing.T) {
	m := mochi.New(t, nil)
	url := m.TCP(nil)
	m.Serve()
	res := runBench(t, Config{URL: url, QoS: 1, Publishers: 4, Subscribers: 1, Count: 20_000})
	if res.Sent != 20_000 || res.Acked != 20_000 {
		t.Errorf("sent %d acked %d", res.Sent, res.Acked)
	}
	if res.Unique+res.Lost != res.Expected {
		t.Errorf("unique %d + lost %d != expected %d", res.Unique, res.Lost, res.Expected)
	}
}

func TestMochiUnixSocket(t *testing.T) {
	m := mochi.New(t, nil)
	url := m.Unix()
	m.Serve()
	res := runBench(t, Config{URL: url, Publishers: 2, Subscribers: 1, Rate: 1000, Count: 200, QoS: 1})
	checkComplete(t, res, 200)
}

func TestMochiTLS(t *testing.T) {
	m := mochi.New(t, nil)
	tc, ca := selfSigned(t)
	url := m.TCP(tc)
	m.Serve()
	res := runBench(t, Config{URL: url, CAFile: ca, Publishers: 1, Subscribers: 1, Rate: 1000, Count: 100})
	checkComplete(t, res, 100)

	// Without the CA the handshake fails with a clear error.
	_, err := Run(context.Background(), Config{URL: url, Count: 10, ConnectTimeout: 2 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "TLS handshake") {
		t.Errorf("untrusted certificate: %v", err)
	}
}

func TestMochiWebSocket(t *testing.T) {
	m := mochi.New(t, nil)
	url := m.WS()
	m.Serve()
	waitDial(t, "tcp", strings.TrimSuffix(strings.TrimPrefix(url, "ws://"), "/"), 5*time.Second)
	res := runBench(t, Config{URL: url, MQTTVersion: 5, Publishers: 2, Subscribers: 1, Rate: 1000, Count: 200})
	checkComplete(t, res, 200)
}

func TestMochiAuth(t *testing.T) {
	m := mochi.New(t, map[string]string{"bench": "secret"})
	url := m.TCP(nil)
	m.Serve()
	res := runBench(t, Config{URL: url, Username: "bench", Password: "secret", Subscribers: 1, Count: 50, Rate: 500})
	checkComplete(t, res, 50)
	for _, v := range []int{4, 5} {
		_, err := Run(context.Background(), Config{URL: url, MQTTVersion: v, Username: "bench", Password: "wrong", Count: 10})
		if !errors.Is(err, ErrNotAuthorized) {
			t.Fatalf("MQTT %d wrong password: %v", v, err)
		}
		var ce *ConnackError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), "publisher bench-") || !strings.Contains(err.Error(), "connect to "+url) {
			t.Errorf("error does not say who and where: %v", err)
		}
	}
}

func TestRunDurationAndCancel(t *testing.T) {
	m := mochi.New(t, nil)
	url := m.TCP(nil)
	m.Serve()
	res := runBench(t, Config{URL: url, Publishers: 2, Subscribers: 1, Rate: 500, Duration: 300 * time.Millisecond})
	if res.Sent < 50 || res.Sent > 300 || res.PublishSeconds < 0.25 || res.PublishSeconds > 2 {
		t.Errorf("duration run: sent %d in %.2fs", res.Sent, res.PublishSeconds)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	res, err := Run(ctx, Config{URL: url, Rate: 200, Duration: time.Minute, Drain: time.Second})
	if err != nil || !res.Interrupted || res.PublishSeconds > 5 {
		t.Errorf("cancelled run: %+v %v", res, err)
	}
}

func TestConnectRefused(t *testing.T) {
	url := "tcp://" + freeAddr(t)
	_, err := Run(context.Background(), Config{URL: url, Count: 10, ConnectTimeout: time.Second})
	if err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("no broker: %v", err)
	}
}
