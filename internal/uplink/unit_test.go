package uplink

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/outpost-edge/outpost/internal/config"
	"github.com/outpost-edge/outpost/internal/message"
	"gopkg.in/yaml.v3"
)

func TestParseTemplate(t *testing.T) {
	vars := TopicVars{NodeID: "gw-1", Topic: "factory/l1/t", Lane: "alarms", DeviceID: "dev/+#7", ClientID: ""}
	tests := []struct {
		tpl, want, err string
	}{
		{tpl: DefaultTopicTemplate, want: "outpost/gw-1/factory/l1/t"},
		{tpl: "{node_id}/{lane}/{topic}", want: "gw-1/alarms/factory/l1/t"},
		{tpl: "d/{device_id}/c/{client_id}/{topic}", want: "d/dev___7/c/_/factory/l1/t"},
		{tpl: "fixed", want: "fixed"},
		{tpl: "ünï/{topic}", want: "ünï/factory/l1/t"},
		{tpl: "", err: "empty template"},
		{tpl: "a/{nod_id}/b", err: "column 3: unknown placeholder {nod_id}"},
		{tpl: "a/{topic", err: "column 3: unterminated '{'"},
		{tpl: "a}/b", err: "column 2: '}' without '{'"},
		{tpl: "a/+/{topic}", err: "column 3: wildcard '+'"},
		{tpl: "ü/#", err: "column 3: wildcard '#'"},
		{tpl: "a\x00", err: "column 2: NUL"},
		{tpl: "a\xff", err: "UTF-8"},
	}
	for _, tt := range tests {
		tpl, err := ParseTemplate(tt.tpl)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseTemplate(%q) err = %v, want %q", tt.tpl, err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseTemplate(%q): %v", tt.tpl, err)
			continue
		}
		got, err := tpl.Render(vars)
		if err != nil || got != tt.want {
			t.Errorf("Render(%q) = %q, %v; want %q", tt.tpl, got, err, tt.want)
		}
	}
	// A local topic that would make an invalid cloud topic is refused.
	tpl, _ := ParseTemplate("{topic}")
	for _, bad := range []string{"", "a/+", "a/#", "a\x00b", "\xff"} {
		if _, err := tpl.Render(TopicVars{Topic: bad}); !errors.Is(err, ErrBadTopic) {
			t.Errorf("Render topic %q: err = %v, want ErrBadTopic", bad, err)
		}
	}
	if _, err := tpl.Render(TopicVars{Topic: strings.Repeat("a", 65536)}); !errors.Is(err, ErrBadTopic) {
		t.Errorf("65536-byte topic: err = %v", err)
	}
}

func FuzzTopicTemplate(f *testing.F) {
	for _, s := range []string{DefaultTopicTemplate, "{node_id}/{lane}/{device_id}/{client_id}/{topic}", "a/{", "}", "{}", "x/+/#", "é{topic}é"} {
		f.Add(s, "factory/l1/t", "dev-1")
	}
	f.Fuzz(func(t *testing.T, tplSrc, topic, dev string) {
		tpl, err := ParseTemplate(tplSrc)
		if err != nil {
			return
		}
		got, err := tpl.Render(TopicVars{NodeID: "gw", Topic: topic, Lane: "l", DeviceID: dev, ClientID: dev})
		if err != nil {
			if !errors.Is(err, ErrBadTopic) {
				t.Fatalf("error not ErrBadTopic: %v", err)
			}
			return
		}
		// Whatever renders is a valid MQTT topic name.
		if got == "" || strings.ContainsAny(got, "+#\x00") || len(got) > 65535 {
			t.Fatalf("invalid topic rendered: %q", got)
		}
		// Sanitised placeholders never add topic levels.
		if tpl2, _ := ParseTemplate("{device_id}"); tpl2 != nil {
			if d, err := tpl2.Render(TopicVars{DeviceID: dev}); err == nil && strings.Contains(d, "/") {
				t.Fatalf("device id %q spans levels: %q", dev, d)
			}
		}
	})
}

func validConfig() Config {
	return Config{Enabled: true, Broker: "mqtt://127.0.0.1:1883", NodeID: "gw-1"}
}

func TestConfigDefaultsAndValidate(t *testing.T) {
	c := validConfig()
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.ClientID != "outpost-gw-1" || c.TopicTemplate != DefaultTopicTemplate || c.InFlight != DefaultInFlight ||
		len(c.Lanes) != 1 || c.Lanes[0].Priority != PriorityNormal || *c.Downlink.QoS != 1 {
		t.Fatalf("defaults: %+v", c)
	}
	bad := []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.Broker = "" }, "broker: required"},
		{func(c *Config) { c.Broker = "http://x" }, "broker: \"http://x\": scheme must be"},
		{func(c *Config) { c.Broker = "mqtt://u:p@x" }, "broker: "},
		{func(c *Config) { c.Broker = "mqtts://x:99999" }, "invalid port"},
		{func(c *Config) { c.NodeID = "" }, "node_id: required"},
		{func(c *Config) { c.NodeID = "a/b" }, "node_id: \"a/b\""},
		{func(c *Config) { c.Password, c.PasswordEnv = "x", "Y" }, "password_env: set together with password"},
		{func(c *Config) { c.TLS.CAFile = "/x" }, "tls: set, but broker"},
		{func(c *Config) { c.Broker = "mqtts://x"; c.TLS.CertFile = "/c" }, "tls: cert_file and key_file go together"},
		{func(c *Config) { c.Broker = "mqtts://x"; c.TLS.CAFile = "/nonexistent/ca.pem" }, "tls: ca_file: open /nonexistent/ca.pem"},
		{func(c *Config) { c.TopicTemplate = "a/{x}" }, "topic_template: column 3: unknown placeholder {x}"},
		{func(c *Config) { c.Reconnect.Max = config.Duration(time.Millisecond) }, "reconnect.max"},
		{func(c *Config) { c.InFlight = 70000 }, "in_flight: 70000 out of range"},
		{func(c *Config) { c.Lanes = []LaneConfig{{Name: "a"}, {Name: "a"}} }, "lanes[1].name: \"a\" already used by lanes[0]"},
		{func(c *Config) { c.Lanes = []LaneConfig{{Name: "A b"}} }, "lanes[0].name"},
		{func(c *Config) { c.Lanes = []LaneConfig{{Name: "a", Share: -1}} }, "lanes[0].share"},
		{func(c *Config) { c.Downlink.Prefix = "x" }, "downlink.prefix"},
		{func(c *Config) { c.Downlink.Filter = "a/#/b" }, "downlink.filter"},
		{func(c *Config) { c.KeepAlive = config.Duration(24 * time.Hour) }, "keepalive"},
	}
	for _, b := range bad {
		c := validConfig()
		c.SetDefaults()
		b.mod(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("want error containing %q, got %v", b.want, err)
		}
	}
	// Disabled: nothing is required.
	var off Config
	off.SetDefaults()
	if err := off.Validate(); err != nil {
		t.Fatalf("disabled config: %v", err)
	}
}

func TestConfigYAML(t *testing.T) {
	src := `
enabled: true
broker: mqtts://cloud.example.com
node_id: gw-7
password: hunter2
session_expiry: 1h
bandwidth: 64KiB
lanes:
  - {name: alarms, priority: high, share: 1}
  - {name: telemetry, priority: 25}
  - name: bulk
    priority: low
    queue: {max_bytes: 1GiB, on_full: drop_oldest}
`
	var c Config
	dec := yaml.NewDecoder(strings.NewReader(src))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		t.Fatal(err)
	}
	c.SetDefaults()
	if c.Lanes[0].Priority != PriorityHigh || c.Lanes[1].Priority != 25 || c.Lanes[2].Priority != PriorityLow ||
		c.Bandwidth != 64<<10 || c.SessionExpiry.D() != time.Hour {
		t.Fatalf("decoded %+v", c)
	}
	if q := c.Lanes[2].Queue; q.OnFull != "drop_oldest" {
		t.Fatalf("lane queue config: %+v", q)
	}
	// The password never prints.
	for _, s := range []string{c.Password.String(), strings.Join(strings.Fields(strings.ReplaceAll(fmtV(c), "\n", " ")), " ")} {
		if strings.Contains(s, "hunter2") {
			t.Fatalf("password printed: %s", s)
		}
	}
	if err := yaml.Unmarshal([]byte("priority: urgent"), &struct{ Priority Priority }{}); err == nil {
		t.Fatal("bad priority accepted")
	}
}

func TestBackoff(t *testing.T) {
	b := newBackoff(100*time.Millisecond, time.Second, func() float64 { return 0.999999 })
	var got []time.Duration
	for range 6 {
		got = append(got, b.Next().Round(time.Millisecond))
	}
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Fatalf("backoff (max jitter) = %v, want %v ms", got, want)
		}
	}
	b = newBackoff(100*time.Millisecond, time.Second, func() float64 { return 0 })
	if d := b.Next(); d != 50*time.Millisecond {
		t.Fatalf("min jitter first delay %v, want 50ms", d)
	}
	b.Reset()
	if d := b.Next(); d != 50*time.Millisecond {
		t.Fatalf("after reset %v", d)
	}
}

func TestBucket(t *testing.T) {
	t0 := time.Unix(1000, 0)
	b := newBucket(1000, 100, t0) // 1000 B/s, 100 B burst
	if !b.ready(t0) {
		t.Fatal("not ready at start")
	}
	b.take(300) // debt allowed: one packet may exceed the burst
	if b.ready(t0) {
		t.Fatal("ready in debt")
	}
	if w := b.wait(t0); w != 200*time.Millisecond {
		t.Fatalf("wait %v, want 200ms", w)
	}
	if !b.ready(t0.Add(200 * time.Millisecond)) {
		t.Fatal("not ready after refill")
	}
	if b.ready(t0.Add(time.Hour)); b.tokens != 100 {
		t.Fatalf("tokens %v, want capped at burst 100", b.tokens)
	}
}

func TestAppendPublishDecodesWithPaho(t *testing.T) {
	m := &message.Message{Topic: "a/b", Payload: []byte("hello"), Retain: true, Props: message.Properties{
		ContentType: "text/plain", ResponseTopic: "r/1", CorrelationData: []byte{1, 2, 3}, PayloadFormat: 1,
		User: []message.UserProperty{{Key: "k", Value: "v"}, {Key: "k2", Value: strings.Repeat("x", 300)}},
	}}
	for _, payload := range [][]byte{nil, []byte("x"), bytes.Repeat([]byte("p"), 200), bytes.Repeat([]byte("q"), 70000)} {
		m.Payload = payload
		props := appendPublishProps(nil, m, 42)
		pkt := appendPublish(nil, []byte("outpost/gw/a/b"), 513, true, true, props, payload)
		if len(pkt) != publishSize(len("outpost/gw/a/b"), len(props), len(payload)) {
			t.Fatalf("size %d != publishSize", len(pkt))
		}
		cp, err := packets.ReadPacket(bytes.NewReader(pkt))
		if err != nil {
			t.Fatal(err)
		}
		p := cp.Content.(*packets.Publish)
		if p.Topic != "outpost/gw/a/b" || p.PacketID != 513 || p.QoS != 1 || !p.Retain || !p.Duplicate || !bytes.Equal(p.Payload, payload) {
			t.Fatalf("decoded %+v", p)
		}
		pp := p.Properties
		if pp.ContentType != "text/plain" || pp.ResponseTopic != "r/1" || !bytes.Equal(pp.CorrelationData, []byte{1, 2, 3}) ||
			*pp.PayloadFormat != 1 || *pp.MessageExpiry != 42 || len(pp.User) != 2 || pp.User[1].Value != m.Props.User[1].Value {
			t.Fatalf("properties %+v", pp)
		}
	}
}

func TestLocalTopic(t *testing.T) {
	for _, tt := range []struct {
		cloud, local string
		ok           bool
	}{
		{"outpost/n1/cmd/valve/open", "cmd/valve/open", true},
		{"outpost/n1/", "", false},
		{"outpost/n2/cmd/x", "", false},
	} {
		l, ok := LocalTopic("outpost/n1/", tt.cloud)
		if l != tt.local && ok || ok != tt.ok {
			t.Errorf("LocalTopic(%q) = %q, %v", tt.cloud, l, ok)
		}
	}
}

func fmtV(c Config) string { return fmt.Sprintf("%v %+v %#v %s", c, c, c, c.Password) }

func FuzzParseBroker(f *testing.F) {
	for _, s := range []string{"mqtts://cloud.example.com:8883", "mqtt://[::1]:1883", "tcp://h", "ssl://h:0", "mqtts://u:p@h/x?y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := parseBroker(s)
		if err != nil {
			return
		}
		if b.host == "" || b.addr == "" {
			t.Fatalf("%q parsed to %+v", s, b)
		}
	})
}

// TestBackoffSameDelays checks the internal/backoff-based delay against the
// uplink's former formula (uniform in [d/2, d], d = min(max, min·2ⁿ)) to
// within a nanosecond of rounding, over attempts and random values.
func TestBackoffSameDelays(t *testing.T) {
	for _, lim := range [][2]time.Duration{{100 * time.Millisecond, time.Second}, {time.Second, time.Minute}, {333 * time.Millisecond, 7 * time.Second}} {
		for _, r := range []float64{0, 0.1, 0.25, 0.5, 0.77, 0.999999} {
			b := newBackoff(lim[0], lim[1], func() float64 { return r })
			for n := range 12 {
				d := lim[0]
				for i := 0; i < n && d < lim[1]; i++ {
					d *= 2
				}
				d = min(d, lim[1])
				half := d / 2
				want := half + time.Duration(r*float64(d-half))
				got := b.Next()
				if diff := got - want; diff < -1 || diff > 1 {
					t.Fatalf("min %v max %v rnd %g attempt %d: %v, want %v", lim[0], lim[1], r, n, got, want)
				}
			}
		}
	}
}
