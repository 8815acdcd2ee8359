package loadgen

import (
	"encoding/json"
	"testing"
)

func TestPayloadRoundTrip(t *testing.T) {
	for _, kind := range []PayloadKind{PayloadBinary, PayloadJSON} {
		min := minPayloadSize(kind)
		for _, size := range []int{min, min + 1, min + 8, min + 9, min + 10, 200, 4096} {
			f := payloadFormat{kind: kind, size: size, runID: 0xdeadbeef}
			p := f.build(123)
			if len(p) != size {
				t.Fatalf("%s %d: built %d bytes", kind, size, len(p))
			}
			for _, seq := range []uint64{0, 1, 799, 123456789012} {
				ts := int64(seq*1000 + 5)
				f.stamp(p, 123, seq, ts)
				got, ok := parsePayload(p)
				if !ok || got != (stampInfo{run: 0xdeadbeef, pub: 123, seq: seq, ts: ts}) {
					t.Fatalf("%s %d seq %d: parsed %+v ok=%v from %q", kind, size, seq, got, ok, p)
				}
				if kind != PayloadJSON {
					continue
				}
				var doc struct {
					DeviceID string  `json:"device_id"`
					Run      string  `json:"run"`
					Seq      uint64  `json:"seq"`
					TS       int64   `json:"ts"`
					Temp     float64 `json:"temp"`
					Humidity float64 `json:"humidity"`
					Quality  string  `json:"quality"`
				}
				if err := json.Unmarshal(p, &doc); err != nil {
					t.Fatalf("json %d seq %d: %v in %s", size, seq, err, p)
				}
				if doc.DeviceID != "dev-000123" || doc.Run != "deadbeef" || doc.Seq != seq || doc.TS != ts ||
					doc.Temp < 20 || doc.Temp >= 28 || doc.Humidity < 40 || doc.Humidity >= 60 || doc.Quality != "good" {
					t.Errorf("json %d seq %d: %+v", size, seq, doc)
				}
			}
		}
	}
}

func TestParsePayloadForeign(t *testing.T) {
	for _, p := range []string{"", "hello", `{"device_id":"dev-00000x","run":"00000000","seq":           1,"ts":              1,"temp":20.00,"humidity":40.0,"quality":"good"}`,
		"OPB1short"} {
		if _, ok := parsePayload([]byte(p)); ok {
			t.Errorf("parsed foreign payload %q", p)
		}
	}
}

func TestPutRightAligned(t *testing.T) {
	b := make([]byte, 5)
	for v, want := range map[uint64]string{0: "    0", 42: "   42", 99999: "99999"} {
		putRightAligned(b, v)
		if string(b) != want {
			t.Errorf("%d: %q, want %q", v, b, want)
		}
	}
}
