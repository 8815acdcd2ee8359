//go:build !nobench

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// benchBroker starts an in-process mochi broker with one user and returns
// its tcp:// URL.
func benchBroker(t *testing.T) string {
	t.Helper()
	srv := mqtt.New(&mqtt.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := srv.AddHook(&benchAuthHook{users: map[string]string{"bench": "secret"}}, nil); err != nil {
		t.Fatal(err)
	}
	l := listeners.NewTCP(listeners.Config{ID: "t", Address: "127.0.0.1:0"})
	if err := srv.AddListener(l); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return "tcp://" + l.Address()
}

// benchAuthHook admits the given users (nil: everyone) and allows every topic;
// the hooks/auth package is not in Outpost's trimmed mochi copy.
type benchAuthHook struct {
	mqtt.HookBase
	users map[string]string
}

func (h *benchAuthHook) ID() string { return "bench-cmd-auth" }

func (h *benchAuthHook) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

func (h *benchAuthHook) OnConnectAuthenticate(_ *mqtt.Client, pk packets.Packet) bool {
	if h.users == nil {
		return true
	}
	pw, ok := h.users[string(pk.Connect.Username)]
	return ok && pw == string(pk.Connect.Password)
}

func (h *benchAuthHook) OnACLCheck(*mqtt.Client, string, bool) bool { return true }

func TestBenchCommandJSON(t *testing.T) {
	url := benchBroker(t)
	var out, errb bytes.Buffer
	t.Setenv("OUTPOST_BENCH_PASSWORD", "secret")
	code := benchMain(context.Background(), []string{"--url", url, "--username", "bench", "--publishers", "2",
		"--rate", "1000", "--count", "200", "--payload", "json", "--json"}, &out, &errb)
	if code != exitOK {
		t.Fatalf("exit %d\nstderr: %s", code, errb.String())
	}
	var res struct {
		Sent, Received, Lost uint64
		Latency              struct {
			P50 float64 `json:"p50_us"`
		}
	}
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%s", err, out.String())
	}
	if res.Sent != 200 || res.Received != 200 || res.Lost != 0 || res.Latency.P50 <= 0 {
		t.Errorf("result %+v", res)
	}
}

func TestBenchCommandErrors(t *testing.T) {
	url := benchBroker(t)
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--help"}, exitOK, "Usage:"},
		{[]string{"--qos", "2"}, exitUsage, "qos: 2"},
		{[]string{"--mqtt", "3"}, exitUsage, "want 3.1.1 or 5"},
		{[]string{"--payload", "json", "--payload-size", "20"}, exitUsage, "needs at least"},
		{[]string{"--duration", "0"}, exitUsage, "must be bounded"},
		{[]string{"--url", url, "--username", "bench", "--password", "bad", "--count", "5"}, exitFailure, "hint: check --username"},
	}
	for _, c := range cases {
		var out, errb bytes.Buffer
		code := benchMain(context.Background(), c.args, &out, &errb)
		if code != c.code || !strings.Contains(out.String()+errb.String(), c.want) {
			t.Errorf("%v: exit %d, output %q; want exit %d containing %q", c.args, code, out.String()+errb.String(), c.code, c.want)
		}
	}
}
