package jsonpath

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

const doc = `{"device":"d1","temp":21.5,"ok":true,"nil":null,"a":{"b":[{"c":1},{"c":"x\"y"}],"e":[]},
 "esc\u0041":"k", "arr":[1, [2,3], {"z":"}]"}], "dup":1, "dup":2}`

func TestGet(t *testing.T) {
	tests := []struct {
		path string
		typ  Type
		raw  string
	}{
		{"device", String, `"d1"`},
		{"temp", Number, `21.5`},
		{"ok", True, `true`},
		{"nil", Null, `null`},
		{"a.b[0].c", Number, `1`},
		{"a.b[1].c", String, `"x\"y"`},
		{"a.b[2]", Missing, ``},
		{"a.e[0]", Missing, ``},
		{"a.e", Array, `[]`},
		{"escA", String, `"k"`},
		{"arr[1][1]", Number, `3`},
		{"arr[2].z", String, `"}]"`},
		{"dup", Number, `1`},
		{"nope", Missing, ``},
		{"temp.x", Missing, ``},
		{"", Object, ""},
	}
	for _, tt := range tests {
		r := MustCompile(tt.path).Get([]byte(doc))
		if r.Type != tt.typ {
			t.Errorf("%s: type %v, want %v", tt.path, r.Type, tt.typ)
		}
		if tt.raw != "" && string(r.Raw) != tt.raw {
			t.Errorf("%s: raw %q, want %q", tt.path, r.Raw, tt.raw)
		}
	}
	s, ok := MustCompile("a.b[1].c").Get([]byte(doc)).StringView()
	if !ok || s != `x"y` {
		t.Errorf("StringView = %q %v", s, ok)
	}
}

func TestCompileErrors(t *testing.T) {
	for _, p := range []string{".a", "a.", "a[", "a[x]", "a..b", `"a`, `a"b"`, "a]"} {
		if _, err := Compile(p); err == nil && p != "a]" {
			t.Errorf("Compile(%q): no error", p)
		}
	}
	p := MustCompile(`"a.b".c`)
	if r := p.Get([]byte(`{"a.b":{"c":5}}`)); string(r.Raw) != "5" {
		t.Errorf("quoted key: %q", r.Raw)
	}
}

func TestForEach(t *testing.T) {
	r := MustCompile("").Get([]byte(`{"a":1,"b":[1,2,3]}`))
	var keys []string
	r.ForEach(func(k string, _ int, v Result) bool {
		keys = append(keys, k+"="+string(v.Raw))
		return true
	})
	if strings.Join(keys, ",") != "a=1,b=[1,2,3]" {
		t.Errorf("keys %v", keys)
	}
	n := 0
	MustCompile("b").Get([]byte(`{"a":1,"b":[1,2,3]}`)).ForEach(func(_ string, i int, v Result) bool { n += i; return true })
	if n != 3 {
		t.Errorf("sum of indexes %d", n)
	}
}

func TestGetNoAlloc(t *testing.T) {
	p := MustCompile("a.b[1].c")
	q := MustCompile("temp")
	d := []byte(doc)
	allocs := testing.AllocsPerRun(100, func() {
		p.Get(d).StringView()
		q.Get(d).Float()
	})
	// a.b[1].c has an escape, so StringView allocates once.
	if allocs > 1 {
		t.Errorf("allocs = %v", allocs)
	}
}

// oracle finds the first value at steps using encoding/json's tokenizer.
func oracle(data []byte, p Path) (json.RawMessage, bool) {
	var cur json.RawMessage = bytes.TrimSpace(data)
	for _, st := range p.steps {
		if st.isIdx {
			var arr []json.RawMessage
			if json.Unmarshal(cur, &arr) != nil || st.idx >= len(arr) {
				return nil, false
			}
			cur = arr[st.idx]
			continue
		}
		dec := json.NewDecoder(bytes.NewReader(cur))
		tok, err := dec.Token()
		if err != nil || tok != json.Delim('{') {
			return nil, false
		}
		found := false
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return nil, false
			}
			var v json.RawMessage
			if err := dec.Decode(&v); err != nil {
				return nil, false
			}
			if kt.(string) == st.key {
				cur, found = v, true
				break
			}
		}
		if !found {
			return nil, false
		}
	}
	return cur, true
}

func FuzzGet(f *testing.F) {
	f.Add([]byte(doc), "a.b[1].c")
	f.Add([]byte(`{"a":[[[[[[[[1]]]]]]]]}`), "a[0][0][0]")
	f.Add([]byte(`[1,{"x":"\ud83d\ude00"}]`), "[1].x")
	f.Add([]byte(`{"a":"\\","b":2}`), "b")
	f.Add([]byte(`{"a" : { "b" : [ 1 , 2 ] } }`), "a.b[1]")
	f.Fuzz(func(t *testing.T, data []byte, path string) {
		p, err := Compile(path)
		if err != nil {
			return
		}
		r := p.Get(data)
		r.Float()
		r.StringView()
		r.ForEach(func(string, int, Result) bool { return true })
		if !json.Valid(data) {
			return
		}
		want, ok := oracle(data, p)
		if ok != r.Exists() {
			t.Fatalf("path %q in %q: found=%v, encoding/json found=%v (%s)", path, data, r.Exists(), ok, want)
		}
		if !ok {
			return
		}
		var a, b any
		if json.Unmarshal(want, &a) != nil {
			return
		}
		if err := json.Unmarshal(r.Raw, &b); err != nil {
			t.Fatalf("path %q in %q: raw %q not JSON: %v", path, data, r.Raw, err)
		}
		ja, _ := json.Marshal(a)
		jb, _ := json.Marshal(b)
		if !bytes.Equal(ja, jb) {
			t.Fatalf("path %q in %q: got %s want %s", path, data, jb, ja)
		}
		if r.Type == String {
			s, ok := r.StringView()
			if !ok || s != a.(string) {
				t.Fatalf("StringView %q, want %q", s, a)
			}
		}
	})
}

func BenchmarkGet(b *testing.B) {
	d := []byte(`{"device_id":"sensor-0042","site":"plant-2","temp":81.25,"humidity":40.5,"quality":"good","ts":1732580000000,"fw":"1.4.2","tags":["a","b"],"pos":{"lat":48.1,"lon":11.5}}`)
	p1, p2, p3 := MustCompile("temp"), MustCompile("quality"), MustCompile("pos.lon")
	b.ReportAllocs()
	b.SetBytes(int64(len(d)))
	for b.Loop() {
		p1.Get(d).Float()
		p2.Get(d).StringView()
		p3.Get(d).Float()
	}
}

func TestGetAll(t *testing.T) {
	paths := []string{"temp", "a.b[1].c", "dup", "nope", "a.e", "[0]", "", "escA"}
	var ps []Path
	for _, p := range paths {
		ps = append(ps, MustCompile(p))
	}
	s := NewSet(ps)
	out := make([]Result, s.Len())
	s.GetAll([]byte(doc), out)
	for i, p := range ps {
		want := p.Get([]byte(doc))
		if out[i].Type != want.Type || string(out[i].Raw) != string(want.Raw) {
			t.Errorf("%s: %v %q, want %v %q", paths[i], out[i].Type, out[i].Raw, want.Type, want.Raw)
		}
	}
	plain := []byte(`{"x":1,"temp":2,"a":{"e":[1]}}`)
	if a := testing.AllocsPerRun(50, func() { s.GetAll(plain, out) }); a != 0 {
		t.Errorf("allocs %v", a)
	}
}

func FuzzGetAll(f *testing.F) {
	f.Add([]byte(doc), "temp", "a.b[0].c", "dup")
	f.Add([]byte(`{"a":1,"a":2,"b":{"c":[1]}}`), "a", "b.c[0]", "b")
	f.Fuzz(func(t *testing.T, data []byte, p1, p2, p3 string) {
		var ps []Path
		for _, s := range []string{p1, p2, p3} {
			p, err := Compile(s)
			if err != nil {
				return
			}
			ps = append(ps, p)
		}
		set := NewSet(ps)
		out := make([]Result, 3)
		set.GetAll(data, out)
		if !json.Valid(data) {
			return
		}
		for i, p := range ps {
			want := p.Get(data)
			if out[i].Type != want.Type || !bytes.Equal(out[i].Raw, want.Raw) {
				t.Fatalf("path %q in %q: GetAll %v %q, Get %v %q", p, data, out[i].Type, out[i].Raw, want.Type, want.Raw)
			}
		}
	})
}

func BenchmarkGetAll(b *testing.B) {
	d := []byte(`{"device_id":"sensor-0042","site":"plant-2","temp":81.25,"humidity":40.5,"quality":"good","ts":1732580000000,"fw":"1.4.2","tags":["a","b"],"pos":{"lat":48.1,"lon":11.5}}`)
	s := NewSet([]Path{MustCompile("temp"), MustCompile("quality"), MustCompile("pos.lon")})
	out := make([]Result, 3)
	b.ReportAllocs()
	b.SetBytes(int64(len(d)))
	for b.Loop() {
		s.GetAll(d, out)
	}
}
