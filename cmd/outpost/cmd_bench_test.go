//go:build !nobench

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/outpost-edge/outpost/internal/testutil/mochi"
)

// benchBroker starts an in-process mochi broker with one user and returns
// its tcp:// URL.
func benchBroker(t *testing.T) string {
	return mochi.Start(t, map[string]string{"bench": "secret"})
}

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
