package outpostfn

import (
	"encoding/json"
	"testing"
)

func TestJSONNumber(t *testing.T) {
	for _, c := range []struct {
		doc, key string
		want     float64
		ok       bool
	}{
		{`{"temp":20.5,"vibration":1.1}`, "temp", 20.5, true},
		{`{"temp":20.5,"vibration":1.1}`, "vibration", 1.1, true},
		{` { "a" : {"temp": 1, "x": [1, "}", {"temp": 2}]}, "temp" : -3e2 } `, "temp", -300, true},
		{`{"temp":1,"temp":2}`, "temp", 2, true},      // last wins, as encoding/json
		{`{"temp":1,"temp":"hot"}`, "temp", 0, false}, // last is not a number
		{`{"te\u006dp":7}`, "temp", 7, true},          // escaped key
		{`{"\ud83d\ude00":1}`, "\U0001F600", 1, true}, // surrogate pair
		{`{"temp":"20"}`, "temp", 0, false},           // a string is not a number
		{`{"temp":null}`, "temp", 0, false},
		{`{"other":1}`, "temp", 0, false},
		{`{}`, "temp", 0, false},
		{`[1]`, "temp", 0, false},
		{`{"temp":01}`, "temp", 0, false}, // not JSON
		{`{"temp":1,}`, "temp", 0, false},
		{`{"temp":1} x`, "temp", 0, false},
		{`{"temp":1`, "temp", 0, false},
		{`{"temp":.5}`, "temp", 0, false},
		{`{"temp":1e}`, "temp", 0, false},
		{"{\"temp\":1,\"s\":\"a\x01\"}", "temp", 0, false}, // control byte in a string
	} {
		got, ok := JSONNumber([]byte(c.doc), c.key)
		if got != c.want || ok != c.ok {
			t.Errorf("JSONNumber(%s, %q) = %v, %v; want %v, %v", c.doc, c.key, got, ok, c.want, c.ok)
		}
	}
}

// FuzzJSONNumber checks JSONNumber against encoding/json: on a valid JSON
// object it finds exactly the numbers encoding/json finds; on anything
// encoding/json refuses it says ok=false.
func FuzzJSONNumber(f *testing.F) {
	for _, s := range []string{`{"temp":20.5,"vibration":1.1}`, `{"a":{"b":[1,2,{"c":"}"}]},"temp":-0.0e+1}`, `{"te\u006dp":1}`, `[]`, `{"x":tru}`, "{\"\xff\":1}", `{"\ud800":1}`} {
		f.Add([]byte(s), "temp")
	}
	f.Fuzz(func(t *testing.T, doc []byte, key string) {
		got, ok := JSONNumber(doc, key)
		var m map[string]any
		err := json.Unmarshal(doc, &m)
		if err != nil || m == nil {
			if ok {
				t.Fatalf("JSONNumber(%q, %q) = %v, true; encoding/json: %v", doc, key, got, err)
			}
			return
		}
		want, isNum := m[key].(float64)
		if ok != isNum || ok && got != want {
			t.Fatalf("JSONNumber(%q, %q) = %v, %v; encoding/json: %v (%T)", doc, key, got, ok, m[key], m[key])
		}
		// Two keys in one pass agree with the two single reads.
		var two [2]float64
		okTwo := JSONNumbers(doc, []string{key, "temp"}, two[:])
		want2, isNum2 := m["temp"].(float64)
		if okTwo != (isNum && isNum2) || isNum && two[0] != want || isNum2 && two[1] != want2 {
			t.Fatalf("JSONNumbers(%q, [%q temp]) = %v, %v; encoding/json: %v, %v", doc, key, two, okTwo, m[key], m["temp"])
		}
	})
}

func TestJSONNumbers(t *testing.T) {
	var v [3]float64
	if !JSONNumbers([]byte(`{"vibration":1.5,"x":"y","temp":20}`), []string{"temp", "vibration"}, v[:]) || v[0] != 20 || v[1] != 1.5 {
		t.Fatalf("got %v", v)
	}
	if JSONNumbers([]byte(`{"temp":20}`), []string{"temp", "vibration"}, v[:]) || v[0] != 20 || v[1] != 0 {
		t.Fatalf("a missing key: got %v", v)
	}
	if JSONNumbers([]byte(`{"temp":20}`), []string{"temp", "vibration"}, v[:1]) {
		t.Fatal("vals shorter than keys accepted")
	}
}

func BenchmarkJSONNumber(b *testing.B) {
	doc := []byte(`{"temp":20.5,"vibration":1.1}`)
	for b.Loop() {
		JSONNumber(doc, "temp")
		JSONNumber(doc, "vibration")
	}
}
