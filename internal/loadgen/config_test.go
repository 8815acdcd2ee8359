package loadgen

import (
	"strings"
	"testing"
	"time"
)

func TestDefaultFilterAndExpand(t *testing.T) {
	for tmpl, want := range map[string]string{
		"bench/{client}/sensors/{n}": "bench/+/sensors/+",
		"a/b":                        "a/b",
		"site/dev{i}/x":              "site/+/x",
	} {
		if got := DefaultFilter(tmpl); got != want {
			t.Errorf("DefaultFilter(%q) = %q, want %q", tmpl, got, want)
		}
	}
	if got := expandTopic("bench/{client}/s/{n}/{i}", "c-p3", 3, 7); got != "bench/c-p3/s/7/3" {
		t.Errorf("expandTopic = %q", got)
	}
}

func TestValidate(t *testing.T) {
	c := Config{URL: "tcp://127.0.0.1:1883", Duration: time.Second}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	bad := Config{MQTTVersion: 3, Publishers: -1, QoS: 2, Topic: "a/#/{x}", Payload: "json", PayloadSize: 10, Rate: -1, Inflight: 70000}
	bad.SetDefaults()
	err := bad.Validate()
	if err == nil {
		t.Fatal("no error")
	}
	for _, field := range []string{"url:", "mqtt:", "publishers:", "qos:", "topic:", "payload-size:", "rate:", "duration:", "inflight:"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("error does not name %s\n%v", field, err)
		}
	}
}

func TestParseEndpoint(t *testing.T) {
	cases := []struct{ url, network, addr, ws string }{
		{"tcp://127.0.0.1", "tcp", "127.0.0.1:1883", ""},
		{"mqtt://localhost:1999", "tcp", "localhost:1999", ""},
		{"ssl://[::1]", "tcp", "[::1]:8883", ""},
		{"unix:///run/x.sock", "unix", "/run/x.sock", ""},
		{"unix:rel.sock", "unix", "rel.sock", ""},
		{"ws://127.0.0.1:8080/mqtt", "tcp", "127.0.0.1:8080", "ws://127.0.0.1:8080/mqtt"},
	}
	for _, c := range cases {
		e, err := parseEndpoint(c.url, nil)
		if err != nil || e.network != c.network || e.address != c.addr || e.wsURL != c.ws {
			t.Errorf("%s: %+v %v", c.url, e, err)
		}
	}
	for _, u := range []string{"http://x", "tcp://", "unix://", "::"} {
		if _, err := parseEndpoint(u, nil); err == nil {
			t.Errorf("%s: no error", u)
		}
	}
}
