package delta

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
)

// TestMeasure compares patch formats on two real binaries:
//
//	OUTPOST_DELTA_OLD=old OUTPOST_DELTA_NEW=new go test -run TestMeasure -v ./internal/ota/delta/
//
// For each codec it reports patch size (and its ratio to the zstd-compressed
// full binary), diff time, apply time and the peak RSS of a child process
// that applies the patch (and nothing else). Skipped without the variables.
func TestMeasure(t *testing.T) {
	oldPath, newPath := os.Getenv("OUTPOST_DELTA_OLD"), os.Getenv("OUTPOST_DELTA_NEW")
	if oldPath == "" || newPath == "" {
		t.Skip("set OUTPOST_DELTA_OLD and OUTPOST_DELTA_NEW to two binaries")
	}
	old, err := os.ReadFile(oldPath)
	if err != nil {
		t.Fatal(err)
	}
	nw, err := os.ReadFile(newPath)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	t0 := time.Now()
	full := zstdFull(nw)
	fullTime := time.Since(t0)
	os.WriteFile(filepath.Join(dir, "full"), full, 0o644)
	t.Logf("old %d bytes, new %d bytes, full zstd-19 %d bytes (%.1f%%) in %v",
		len(old), len(nw), len(full), 100*float64(len(full))/float64(len(nw)), fullTime.Round(time.Millisecond))
	report := func(codec string, patch []byte, diffTime time.Duration) {
		pp := filepath.Join(dir, codec+".patch")
		os.WriteFile(pp, patch, 0o644)
		out := filepath.Join(dir, codec+".out")
		cmd := exec.Command(os.Args[0], "-test.run=^TestApplyChild$")
		cmd.Env = append(os.Environ(), "OUTPOST_DELTA_CHILD="+strings.Join([]string{codec, oldPath, pp, out}, ","))
		b, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s apply: %v\n%s", codec, err, b)
		}
		// VmHWM of the child's own address space (rusage maxrss would
		// include the parent's RSS copied at fork).
		var rss float64
		if i := bytes.Index(b, []byte("HWM_KB=")); i >= 0 {
			fmt.Sscanf(string(b[i+7:]), "%g", &rss)
		}
		got, _ := os.ReadFile(out)
		if !bytes.Equal(got, nw) {
			t.Fatalf("%s: applied output differs", codec)
		}
		var applyMs float64
		fmt.Sscanf(string(b[bytes.Index(b, []byte("APPLY_MS="))+9:]), "%g", &applyMs)
		t.Logf("%-10s patch %9d bytes = %5.1f%% of full zstd, diff %6v, apply %6.0f ms, apply peak RSS %5.1f MiB",
			codec, len(patch), 100*float64(len(patch))/float64(len(full)), diffTime.Round(time.Millisecond), applyMs, float64(rss)/1024)
	}
	t0 = time.Now()
	var p bytes.Buffer
	if err := Diff(old, nw, &p); err != nil {
		t.Fatal(err)
	}
	report("bsdiff", p.Bytes(), time.Since(t0))
	t0 = time.Now()
	zp := zstdDictDiff(old, nw)
	report("zstd-dict", zp, time.Since(t0))
	report("full", full, fullTime)
}

func zstdFull(b []byte) []byte {
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBestCompression), zstd.WithEncoderConcurrency(1))
	return enc.EncodeAll(b, nil)
}

func window(n int) int {
	w := 1 << 20
	for w < n {
		w <<= 1
	}
	return w
}

// zstdDictDiff is "zstd --patch-from": the old file as a raw dictionary.
func zstdDictDiff(old, nw []byte) []byte {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBestCompression),
		zstd.WithEncoderDictRaw(1, old), zstd.WithWindowSize(window(len(old))), zstd.WithEncoderConcurrency(1))
	if err != nil {
		panic(err)
	}
	return enc.EncodeAll(nw, nil)
}

// TestApplyChild is the child process of TestMeasure.
func TestApplyChild(t *testing.T) {
	spec := os.Getenv("OUTPOST_DELTA_CHILD")
	if spec == "" {
		t.Skip("child of TestMeasure")
	}
	f := strings.Split(spec, ",")
	codec, oldPath, patchPath, outPath := f[0], f[1], f[2], f[3]
	t0 := time.Now()
	out, err := os.Create(outPath)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	pf, err := os.Open(patchPath)
	if err != nil {
		t.Fatal(err)
	}
	pst, _ := pf.Stat()
	switch codec {
	case "bsdiff":
		of, err := os.Open(oldPath)
		if err != nil {
			t.Fatal(err)
		}
		ost, _ := of.Stat()
		if err := Patch(of, ost.Size(), pf, pst.Size(), out); err != nil {
			t.Fatal(err)
		}
	case "zstd-dict":
		old, err := os.ReadFile(oldPath)
		if err != nil {
			t.Fatal(err)
		}
		dec, err := zstd.NewReader(pf, zstd.WithDecoderDictRaw(1, old), zstd.WithDecoderMaxWindow(1<<30), zstd.WithDecoderConcurrency(1))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := dec.WriteTo(out); err != nil {
			t.Fatal(err)
		}
	case "full":
		dec, err := zstd.NewReader(pf, zstd.WithDecoderConcurrency(1))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := dec.WriteTo(out); err != nil {
			t.Fatal(err)
		}
	}
	if err := out.Sync(); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("APPLY_MS=%.1f\n", float64(time.Since(t0).Microseconds())/1000)
	st, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(st), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			fmt.Printf("HWM_KB=%s\n", strings.TrimSpace(strings.TrimSuffix(strings.TrimPrefix(l, "VmHWM:"), "kB")))
		}
	}
}
