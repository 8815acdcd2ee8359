package yamlstrict

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

type inner struct {
	Port int `yaml:"port"`
}

type doc struct {
	Name  string            `yaml:"name"`
	Inner inner             `yaml:"inner"`
	List  []string          `yaml:"list"`
	Tags  map[string]string `yaml:"tags"`
}

func decode(t testing.TB, src string) (*Decoder, Problems) {
	t.Helper()
	var n yaml.Node
	if err := yaml.Unmarshal([]byte(src), &n); err != nil {
		t.Fatalf("yaml: %v", err)
	}
	var v doc
	d := NewDecoder("f.yaml", nil)
	return d, d.Decode(&n, reflect.ValueOf(&v).Elem(), "")
}

func TestDecodeProblems(t *testing.T) {
	for _, c := range []struct {
		name, src string
		sentinel  error
		want      string
	}{
		{"ok", "name: a\ninner: {port: 1}\nlist: x\n", nil, ""},
		{"unknown with hint", "nmae: a\n", ErrUnknownKey, `f.yaml:1:1: unknown key "nmae" (did you mean "name"?)`},
		{"duplicate", "name: a\nname: b\n", nil, "f.yaml:2:1: name: duplicate key"},
		{"merge key", "<<: {name: a}\n", nil, "f.yaml:1:1: merge keys (<<) are not supported"},
		{"wrong type nested", "inner:\n  port: x\n", ErrWrongType, `f.yaml:2:9: inner.port: wrong type: expected an integer, got "x"`},
		{"two problems", "a: 1\nb: 2\n", ErrUnknownKey, "f.yaml:1:1: unknown key \"a\"\nf.yaml:2:1: unknown key \"b\""},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, ps := decode(t, c.src)
			got := ""
			if len(ps) > 0 {
				got = ps.Error()
			}
			if got != c.want {
				t.Fatalf("got %q, want %q", got, c.want)
			}
			if c.sentinel != nil && !errors.Is(ps[0], c.sentinel) {
				t.Fatalf("%v does not wrap %v", ps[0], c.sentinel)
			}
		})
	}
}

func TestLocate(t *testing.T) {
	d, ps := decode(t, "name: a\ninner:\n  port: 3\n")
	if len(ps) > 0 {
		t.Fatal(ps)
	}
	for path, want := range map[string]string{"inner.port": "f.yaml:3:9", "inner.port.x": "f.yaml:3:9", "nope": "f.yaml"} {
		if got := d.Locate(path).String(); got != want {
			t.Errorf("Locate(%q) = %s, want %s", path, got, want)
		}
	}
}

func TestKeys(t *testing.T) {
	var n yaml.Node
	if err := yaml.Unmarshal([]byte("a: 1\n[x]: 2\nzz: 3\na: 4\nb: 5\n"), &n); err != nil {
		t.Fatal(err)
	}
	var log []string
	Keys(n.Content[0], func(k string) bool { return k != "zz" }, func(k, v *yaml.Node) {
		log = append(log, "ok "+k.Value+"="+v.Value)
	}, func(k *yaml.Node, p KeyProblem) {
		log = append(log, map[KeyProblem]string{KeyNotString: "notstring", KeyUnknown: "unknown", KeyDuplicate: "dup"}[p]+" "+k.Value)
	})
	want := "ok a=1,notstring ,unknown zz,dup a,ok b=5"
	if got := strings.Join(log, ","); got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

func TestErrLine(t *testing.T) {
	var n yaml.Node
	err := yaml.Unmarshal([]byte("a: 1\nb: [\n"), &n)
	if err == nil {
		t.Fatal("no syntax error")
	}
	if got := ErrLine(err); got == 0 {
		t.Fatalf("no line in %v", err)
	}
	if got := ErrLine(errors.New("no position")); got != 0 {
		t.Fatalf("ErrLine = %d", got)
	}
}

// FuzzDecode: any input decodes or reports problems, each with a position.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{"name: a\n", "inner: {port: 1}\nlist: [a, b]\n", "<<: *x\n", "a: &x 1\nb: *x\n", "tags: {a: b}\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		var n yaml.Node
		if yaml.Unmarshal([]byte(src), &n) != nil || n.Kind == 0 {
			return
		}
		var v doc
		for _, p := range NewDecoder("f.yaml", nil).Decode(&n, reflect.ValueOf(&v).Elem(), "") {
			if p.Pos.File != "f.yaml" || p.Err == nil {
				t.Fatalf("problem without file or error: %+v", p)
			}
		}
	})
}
