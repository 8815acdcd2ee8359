package message

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
	"time"
)

func TestCodecRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		m    Message
	}{
		{"minimal", Message{Topic: "a"}},
		{"full", Message{
			Topic: "factory/l1/sensors/t1", Payload: []byte(`{"temp":21.5}`), QoS: 1, Retain: true,
			ClientID: "dev-1", DeviceID: "t1", Received: time.Unix(1700000000, 123456789),
			Props: Properties{ContentType: "application/json", ResponseTopic: "r/1", CorrelationData: []byte{1, 2},
				PayloadFormat: 1, MessageExpiry: 60, User: []UserProperty{{"k", "v"}, {"k", "w"}}},
		}},
		{"binary payload", Message{Topic: "b", Payload: []byte{0, 255, 1, 0}, QoS: 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := Encode(&tt.m)
			got, err := Decode(b)
			if err != nil {
				t.Fatal(err)
			}
			want := tt.m
			if len(want.Payload) == 0 {
				want.Payload = got.Payload[:0:0]
				if len(got.Payload) != 0 {
					t.Fatalf("payload %q, want empty", got.Payload)
				}
				got.Payload = want.Payload
			}
			if !got.Received.Equal(want.Received) {
				t.Fatalf("received %v want %v", got.Received, want.Received)
			}
			got.Received, want.Received = time.Time{}, time.Time{}
			if !reflect.DeepEqual(*got, want) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", *got, want)
			}
		})
	}
}

func TestDecodeRejectsCorrupt(t *testing.T) {
	good := Encode(&Message{Topic: "x/y", Payload: []byte("p"), QoS: 1})
	cases := map[string][]byte{
		"empty":       nil,
		"bad version": append([]byte{9}, good[1:]...),
		"bad qos":     append([]byte{1, 7}, good[2:]...),
		"truncated":   good[:6],
		"huge length": {1, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f},
	}
	for name, b := range cases {
		if _, err := Decode(b); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: err = %v, want ErrCorrupt", name, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(Encode(&Message{Topic: "a/b", Payload: []byte("{}"), QoS: 1, Props: Properties{User: []UserProperty{{"a", "b"}}}}))
	f.Add([]byte{1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			return
		}
		// Whatever decodes must re-encode to bytes that decode to the same message.
		b2 := Encode(m)
		m2, err := Decode(b2)
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if m.Topic != m2.Topic || !bytes.Equal(m.Payload, m2.Payload) || len(m.Props.User) != len(m2.Props.User) {
			t.Fatalf("not stable: %+v vs %+v", m, m2)
		}
	})
}

func BenchmarkEncode(b *testing.B) {
	m := &Message{Topic: "factory/l1/sensors/t1", Payload: bytes.Repeat([]byte("x"), 200), QoS: 1, ClientID: "dev-1", Received: time.Now()}
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendEncode(buf[:0], m)
	}
}
