package rules

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/VictoriaMetrics/metrics"
	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/telemetry"
)

// TestRemovedRuleMetricsUnregistered serves the engine's metrics on the
// real telemetry endpoint and checks that removed versions (and actions
// dropped from a version) leave /metrics, while kept ones stay.
func TestRemovedRuleMetricsUnregistered(t *testing.T) {
	set := metrics.NewSet()
	srv := telemetry.New(telemetry.Options{Metrics: set})
	if err := srv.Init(context.Background(), &telemetry.Config{Address: "127.0.0.1:0"}); err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer srv.Stop(context.Background())
	scrape := func() string {
		t.Helper()
		resp, err := http.Get("http://" + srv.Addr() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	env := NewMemEnv()
	env.LaneNames = []string{"default"}
	e := New(Options{Env: env, Metrics: set})
	apply := func(src string) {
		t.Helper()
		rs, err := e.Compile("m.sql", src)
		if err != nil {
			t.Fatal(err)
		}
		e.Apply(rs)
		e.Process(context.Background(), &message.Message{Topic: "m", DeviceID: "d", Payload: []byte(`{"v":1}`)})
	}
	apply(`CREATE RULE gone AS SELECT v FROM 'm' DO REPUBLISH 'x';
CREATE RULE kept VERSION 1 AS SELECT v FROM 'm' DO REPUBLISH 'y', UPLINK TOPIC 'u';
CREATE RULE kept VERSION 2 FOR DEVICES WHERE deviceid() = 'canary' AS SELECT v FROM 'm' DO REPUBLISH 'y';`)
	body := scrape()
	for _, s := range []string{`outpost_rules_matched_total{rule="gone",version="1"} 1`, `rule="kept",version="2"`,
		`outpost_rules_action_sent_total{rule="kept",version="1",action="UPLINK"} 1`} {
		if !strings.Contains(body, s) {
			t.Fatalf("before: /metrics lacks %s", s)
		}
	}
	// gone removed, kept v2 rolled back, kept v1 drops its UPLINK action
	apply(`CREATE RULE kept VERSION 1 AS SELECT v FROM 'm' DO REPUBLISH 'y';`)
	body = scrape()
	for _, s := range []string{`rule="gone"`, `rule="kept",version="2"`, `action="UPLINK"`} {
		if strings.Contains(body, s) {
			t.Errorf("after removal /metrics still lists %s", s)
		}
	}
	// the kept version keeps counting from where it was
	if !strings.Contains(body, `outpost_rules_matched_total{rule="kept",version="1"} 2`) ||
		!strings.Contains(body, `outpost_rules_action_sent_total{rule="kept",version="1",action="REPUBLISH"} 2`) {
		t.Errorf("kept version's series lost:\n%s", grepLines(body, "outpost_rules_"))
	}
	// everything removed
	e.Apply(nil)
	if body = scrape(); strings.Contains(body, `rule="`) {
		t.Errorf("empty rule set, /metrics still lists:\n%s", grepLines(body, `rule="`))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
