package twin

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

// FuzzSplitObject: the fast object splitter agrees with encoding/json
// whenever it does not fall back, and joinObject with json.Marshal.
func FuzzSplitObject(f *testing.F) {
	for _, s := range []string{`{}`, ` { "a" : 1 , "b":[1,{"c":"}"}],"d":"x\"y","e":null,"f":true,"g":-1.5e3} `, `{"a":1,}`, `{"a":tru}`,
		`{"a\u0062":1}`, `{"a":1}x`, `{"a":"é"}`, `{"a":1,"a":2}`, `[]`, `{"a":{"b":{"c":[]}}}`, `{"a":1 2}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := splitObject(b)
		if err != nil {
			return
		}
		var want map[string]json.RawMessage
		if err := json.Unmarshal(b, &want); err != nil {
			t.Fatalf("splitObject accepted %q, encoding/json: %v", b, err)
		}
		if len(want) != len(m) {
			t.Fatalf("%q: %d keys, encoding/json %d", b, len(m), len(want))
		}
		for k, v := range want {
			var x, y bytes.Buffer
			json.Compact(&x, v)
			json.Compact(&y, m[k])
			if !bytes.Equal(x.Bytes(), y.Bytes()) {
				t.Fatalf("%q: key %q = %s, encoding/json %s", b, k, m[k], v)
			}
		}
		// Same document (encoding/json also escapes <>& as \u003c...).
		std, _ := json.Marshal(want)
		got := joinObject(m)
		var g, w any
		if json.Unmarshal(got, &g) != nil || json.Unmarshal(std, &w) != nil || !reflect.DeepEqual(g, w) {
			t.Fatalf("%q: joinObject = %s, json.Marshal = %s", b, got, std)
		}
	})
}

func TestMetaJSON(t *testing.T) {
	for _, m := range []map[string]int64{nil, {}, {"b": 2, "a": -1, "é\"": 1796336329085}} {
		std, _ := json.Marshal(m)
		if got := MetaJSON(m); got != string(std) {
			t.Errorf("MetaJSON(%v) = %s, want %s", m, got, std)
		}
	}
}
