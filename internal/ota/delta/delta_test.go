package delta

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"
)

func roundTrip(t testing.TB, old, nw []byte) []byte {
	t.Helper()
	var p bytes.Buffer
	if err := Diff(old, nw, &p); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := Patch(bytes.NewReader(old), int64(len(old)), bytes.NewReader(p.Bytes()), int64(p.Len()), &out); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), nw) {
		t.Fatalf("patched output differs (len %d vs %d)", out.Len(), len(nw))
	}
	return p.Bytes()
}

func TestRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	rnd := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.IntN(256))
		}
		return b
	}
	base := rnd(300_000)
	// Simulate a code change: insertions, deletions, and a shifted region
	// with small per-byte differences (relocated addresses).
	nw := append([]byte{}, base[:1000]...)
	nw = append(nw, rnd(500)...)
	nw = append(nw, base[1000:150_000]...)
	shifted := append([]byte{}, base[160_000:290_000]...)
	for i := 0; i < len(shifted); i += 97 {
		shifted[i]++
	}
	nw = append(nw, shifted...)
	cases := []struct {
		name     string
		old, new []byte
	}{
		{"empty-both", nil, nil},
		{"empty-old", nil, rnd(1000)},
		{"empty-new", rnd(1000), nil},
		{"same", base, base},
		{"zeros", make([]byte, 100_000), make([]byte, 120_000)},
		{"edit", base, nw},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := roundTrip(t, c.old, c.new)
			t.Logf("old %d new %d patch %d", len(c.old), len(c.new), len(p))
			if c.name == "edit" && len(p) > len(nw)/5 {
				t.Errorf("patch %d bytes for a small edit of %d", len(p), len(nw))
			}
		})
	}
}

func TestCorrupt(t *testing.T) {
	old := bytes.Repeat([]byte("outpost"), 1000)
	nw := append(bytes.Repeat([]byte("outpost"), 900), "new tail"...)
	var p bytes.Buffer
	if err := Diff(old, nw, &p); err != nil {
		t.Fatal(err)
	}
	good := p.Bytes()
	for _, cut := range []int{0, 7, 31, 40, len(good) - 1} {
		bad := good[:cut]
		var out bytes.Buffer
		err := Patch(bytes.NewReader(old), int64(len(old)), bytes.NewReader(bad), int64(len(bad)), &out)
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("cut at %d: err = %v, want ErrCorrupt", cut, err)
		}
	}
}

func FuzzPatch(f *testing.F) {
	old := bytes.Repeat([]byte("outpost-edge "), 200)
	var p bytes.Buffer
	Diff(old, append(old[:1000:1000], "xyz"...), &p)
	f.Add(p.Bytes())
	f.Add([]byte(Magic))
	f.Fuzz(func(t *testing.T, patch []byte) {
		if n, err := NewSize(bytes.NewReader(patch)); err != nil || n > 1<<20 {
			return
		}
		var out bytes.Buffer
		_ = Patch(bytes.NewReader(old), int64(len(old)), bytes.NewReader(patch), int64(len(patch)), &out)
	})
}
