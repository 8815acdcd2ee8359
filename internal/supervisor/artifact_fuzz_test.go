package supervisor

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func zipOf(files map[string]string) []byte {
	var b bytes.Buffer
	w := zip.NewWriter(&b)
	for n, c := range files {
		f, _ := w.Create(n)
		f.Write([]byte(c))
	}
	w.Close()
	return b.Bytes()
}

func tgzOf(entries ...tar.Header) []byte {
	var b bytes.Buffer
	gz := gzip.NewWriter(&b)
	tw := tar.NewWriter(gz)
	for _, h := range entries {
		h := h
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(h.Name))
		}
		tw.WriteHeader(&h)
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte(h.Name))
		}
	}
	tw.Close()
	gz.Close()
	return b.Bytes()
}

func TestUnpackRefusesEscapes(t *testing.T) {
	for name, c := range map[string]struct {
		kind string
		data []byte
	}{
		"zip dotdot":      {"zip", zipOf(map[string]string{"../evil": "x"})},
		"zip absolute":    {"zip", zipOf(map[string]string{"/etc/evil": "x"})},
		"tar dotdot":      {"tar.gz", tgzOf(tar.Header{Name: "a/../../evil", Typeflag: tar.TypeReg, Mode: 0o644})},
		"tar symlink out": {"tar.gz", tgzOf(tar.Header{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "../../"})},
		"tar through link": {"tar.gz", tgzOf(tar.Header{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "sub"},
			tar.Header{Name: "sub", Typeflag: tar.TypeDir, Mode: 0o755}, tar.Header{Name: "l", Typeflag: tar.TypeReg, Mode: 0o644})},
		"tar device": {"tar.gz", tgzOf(tar.Header{Name: "dev", Typeflag: tar.TypeChar})},
	} {
		t.Run(name, func(t *testing.T) {
			if err := unpackBytes(t, c.kind, c.data); err == nil {
				t.Fatal("accepted")
			}
		})
	}
	if err := unpackBytes(t, "tar.gz", tgzOf(tar.Header{Name: "ok/a.txt", Typeflag: tar.TypeReg, Mode: 0o644})); err != nil {
		t.Fatal(err)
	}
}

func unpackBytes(t *testing.T, kind string, data []byte) error {
	root := t.TempDir()
	dir := filepath.Join(root, "art")
	os.MkdirAll(dir, 0o755)
	in := filepath.Join(root, "in")
	os.WriteFile(in, data, 0o644)
	f, err := os.Open(in)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	err = unpack(f, kind, dir)
	// Nothing may appear next to the artifacts directory.
	ents, _ := os.ReadDir(root)
	for _, e := range ents {
		if e.Name() != "art" && e.Name() != "in" {
			t.Fatalf("unpack wrote outside its directory: %s", e.Name())
		}
	}
	return err
}

// FuzzUnpack feeds arbitrary archives to unpack: it must not panic and must
// never write outside the artifacts directory.
func FuzzUnpack(f *testing.F) {
	f.Add(true, zipOf(map[string]string{"a/b.txt": "x", "c": "y"}))
	f.Add(false, tgzOf(tar.Header{Name: "a/b", Typeflag: tar.TypeReg, Mode: 0o644}, tar.Header{Name: "d", Typeflag: tar.TypeDir, Mode: 0o755}))
	f.Add(false, tgzOf(tar.Header{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "x/../y"}))
	f.Add(true, []byte("PK\x03\x04garbage"))
	f.Fuzz(func(t *testing.T, isZip bool, data []byte) {
		kind := "tar.gz"
		if isZip {
			kind = "zip"
		}
		err := unpackBytes(t, kind, data)
		_ = err
		if strings.Contains(t.Name(), "\x00") {
			t.Skip()
		}
	})
}
