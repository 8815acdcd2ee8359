package rules

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/sink/webhook"
)

// Sample is one line of a `rules test` input file (JSON lines).
//
//	{"topic": "factory/l1/sensors/t1", "device": "d1", "payload": {"temp": 81}}
//	{"topic": "raw/x", "payload_raw": "AQID", "time": "2024-05-01T10:00:05Z"}
//	{"device": "d1", "labels": {"canary": "true"}}      (sets labels, no message)
//
// time is RFC 3339 or Unix milliseconds; when absent it is one second after
// the previous sample (the first is 2024-01-01T00:00:00Z). The engine clock
// follows the sample times, so processing-time windows are deterministic.
type Sample struct {
	Topic      string            `json:"topic"`
	Device     string            `json:"device"`
	Client     string            `json:"client"`
	QoS        byte              `json:"qos"`
	Retain     bool              `json:"retain"`
	Time       json.RawMessage   `json:"time"`
	Payload    json.RawMessage   `json:"payload"`
	PayloadRaw *string           `json:"payload_raw"`
	Labels     map[string]string `json:"labels"`
}

// TestOptions configure RunTest.
type TestOptions struct {
	// Env resolves actions; nil: an open MemEnv (any lane, file, function).
	Env *MemEnv
	// Stats appends per-rule counters after the outputs.
	Stats bool
}

var testEpoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// RunTest compiles the rule file src, feeds it the samples and writes every
// action output, one per line: `SINK TOPIC PAYLOAD`. Webhooks are recorded,
// not sent. Time windows still open at the end of the input are flushed.
// Compile errors are returned as a parser.ErrorList; bad sample lines as an
// error naming the line.
func RunTest(ctx context.Context, file, src string, samples io.Reader, out io.Writer, opts TestOptions) error {
	env := opts.Env
	if env == nil {
		env = NewMemEnv()
	}
	labels := map[string]map[string]string{}
	for k, v := range env.DeviceLabels {
		labels[k] = v
	}
	env.DeviceLabels = labels
	now := testEpoch
	e := New(Options{Env: env, Partitions: 1, Now: func() time.Time { return now },
		Webhook: func(cfg webhook.Config) (message.Sink, error) {
			return env.Sink("webhook:" + webhook.Redact(cfg.URL)), nil
		}})
	rules, err := e.Compile(file, src)
	if err != nil {
		return err
	}
	e.Apply(rules)
	var msgs []*message.Message
	var times []time.Time
	sc := bufio.NewScanner(samples)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	line := 0
	for sc.Scan() {
		line++
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 || b[0] == '#' {
			continue
		}
		var s Sample
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&s); err != nil {
			return fmt.Errorf("samples line %d: %w", line, err)
		}
		if s.Labels != nil {
			if s.Device == "" {
				return fmt.Errorf("samples line %d: labels need a device", line)
			}
			labels[s.Device] = s.Labels
			if s.Topic == "" {
				continue
			}
		}
		if s.Topic == "" {
			return fmt.Errorf("samples line %d: missing topic", line)
		}
		t, err := sampleTime(s.Time, now, len(msgs) == 0)
		if err != nil {
			return fmt.Errorf("samples line %d: time: %w", line, err)
		}
		now = t
		m := &message.Message{Topic: s.Topic, QoS: s.QoS, Retain: s.Retain, ClientID: s.Client, DeviceID: s.Device, Received: t}
		if m.ClientID == "" {
			m.ClientID = s.Device
		}
		switch {
		case s.PayloadRaw != nil:
			m.Payload = []byte(*s.PayloadRaw)
		case s.Payload != nil:
			m.Payload = []byte(s.Payload)
		}
		msgs = append(msgs, m)
		times = append(times, t)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("samples: %w", err)
	}
	printed := 0
	flushOut := func() {
		d := env.Deliveries()
		for _, x := range d[printed:] {
			flags := ""
			if x.Msg.QoS > 0 {
				flags += fmt.Sprintf(" qos=%d", x.Msg.QoS)
			}
			if x.Msg.Retain {
				flags += " retain"
			}
			fmt.Fprintf(out, "%s %s%s %s\n", x.Sink, x.Msg.Topic, flags, x.Msg.Payload)
		}
		printed = len(d)
	}
	for i, m := range msgs {
		now = times[i]
		e.Tick(ctx)
		e.Process(ctx, m)
		flushOut()
	}
	e.Flush(ctx)
	flushOut()
	if opts.Stats {
		for _, r := range e.Rules() {
			matched, emitted := r.Counts()
			fmt.Fprintf(out, "# rule %s v%d: matched=%d emitted=%d", r.Name, r.Version, matched, emitted)
			errs := r.ErrorCounts()
			keys := make([]string, 0, len(errs))
			for k := range errs {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				fmt.Fprintf(out, " %s=%d", k, errs[k])
			}
			fmt.Fprintln(out)
		}
	}
	return nil
}

func sampleTime(raw json.RawMessage, prev time.Time, first bool) (time.Time, error) {
	if len(raw) == 0 || string(raw) == "null" {
		if first {
			return prev, nil
		}
		return prev.Add(time.Second), nil
	}
	var ms float64
	if json.Unmarshal(raw, &ms) == nil {
		return time.UnixMilli(int64(ms)).UTC(), nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return time.Time{}, err
	}
	return time.Parse(time.RFC3339Nano, strings.TrimSpace(s))
}
