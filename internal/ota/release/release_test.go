package release

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/outpost-edge/outpost/internal/ota"
	"github.com/outpost-edge/outpost/internal/ota/delta"
	"github.com/outpost-edge/outpost/internal/ota/tuf"
)

func TestAddStageSign(t *testing.T) {
	d := t.TempDir()
	r, err := tuf.InitRepo(filepath.Join(d, "repo"), filepath.Join(d, "keys"), true, nil)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 1))
	v1 := make([]byte, 200_000)
	for i := range v1 {
		v1[i] = byte(rng.IntN(256))
	}
	v2 := append(append([]byte{}, v1[:100_000]...), append([]byte("patch release"), v1[100_000:]...)...)
	b1, b2 := filepath.Join(d, "v1"), filepath.Join(d, "v2")
	os.WriteFile(b1, v1, 0o755)
	os.WriteFile(b2, v2, 0o755)
	if _, err := Add(r, b1, "1.0.0", "linux/arm64", 3); err != nil {
		t.Fatal(err)
	}
	if err := Sign(r); err != nil {
		t.Fatal(err)
	}
	if _, err := Add(r, b1, "1.0.0", "linux/arm64", 3); err == nil {
		t.Fatal("adding a version twice succeeded")
	}
	res, err := Add(r, b2, "1.1.0", "linux/arm64", 3)
	if err != nil {
		t.Fatal(err)
	}
	name := ota.DeltaTargetName("linux/arm64", "1.0.0", "1.1.0")
	if _, ok := res.Deltas[name]; !ok {
		t.Fatalf("no delta: %+v", res)
	}
	// Staged, not signed: a reopened repository still sees it, clients not.
	if err := SaveStaged(r); err != nil {
		t.Fatal(err)
	}
	r2, err := Open(r.Dir, r.KeyDir)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := r2.Targets.Targets[name]; !ok {
		t.Fatal("staged target lost on reopen")
	}
	if signed, _ := tuf.OpenRepo(r.Dir, r.KeyDir); len(signed.Targets.Targets) != 1 {
		t.Fatalf("signed targets %d, want 1 before sign", len(signed.Targets.Targets))
	}
	if err := Sign(r2); err != nil {
		t.Fatal(err)
	}
	signed, err := tuf.OpenRepo(r.Dir, r.KeyDir)
	if err != nil || len(signed.Targets.Targets) != 3 {
		t.Fatalf("after sign: %v, %d targets", err, len(signed.Targets.Targets))
	}
	// The delta turns v1 into v2 and its custom data says so.
	c, err := ota.ParseCustom(signed.Targets.Targets[name])
	if err != nil || c.Kind != "delta" || c.From != "1.0.0" || c.Size != int64(len(v2)) {
		t.Fatalf("custom %+v %v", c, err)
	}
	pf, _ := os.Open(signed.TargetFilePath(name))
	defer pf.Close()
	st, _ := pf.Stat()
	var out bytes.Buffer
	if err := delta.Patch(bytes.NewReader(v1), int64(len(v1)), pf, st.Size(), &out); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), v2) {
		t.Fatal("delta does not produce v2")
	}
	full, err := readFull(signed.TargetFilePath(ota.FullTargetName("linux/arm64", "1.1.0")))
	if err != nil || !bytes.Equal(full, v2) {
		t.Fatalf("full target does not decompress to v2: %v", err)
	}
}

// `release serve` serves files, never directory listings.
func TestHandlerNoDirectoryListing(t *testing.T) {
	d := t.TempDir()
	r, err := tuf.InitRepo(filepath.Join(d, "repo"), filepath.Join(d, "keys"), true, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(Handler(r.Dir))
	defer srv.Close()
	for path, want := range map[string]int{
		"/": 404, "/metadata/": 404, "/metadata": 404, "/targets/": 404, "/targets": 404,
		"/metadata/root.json": 200, "/metadata/1.root.json": 200, "/metadata/nope.json": 404,
	} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s: %d, want %d\n%s", path, resp.StatusCode, want, b)
		}
		if want == 404 && bytes.Contains(b, []byte("<a href")) {
			t.Errorf("GET %s lists a directory", path)
		}
	}
}

// Versions have one spelling: v-prefixed, build metadata and leading
// zeros are refused, and so is a version already present under another
// spelling.
func TestAddRefusesNonCanonicalAndDuplicateVersions(t *testing.T) {
	d := t.TempDir()
	r, err := tuf.InitRepo(filepath.Join(d, "repo"), filepath.Join(d, "keys"), true, nil)
	if err != nil {
		t.Fatal(err)
	}
	b := filepath.Join(d, "bin")
	os.WriteFile(b, bytes.Repeat([]byte("outpost"), 1000), 0o755)
	for _, v := range []string{"v1.2.0", "1.2.0+evil", "01.2.0", "1.2", "1.2.0-", "1.2.0-01", "1.2.0-a..b"} {
		if _, err := Add(r, b, v, "linux/arm64", 3); err == nil {
			t.Errorf("version %q accepted", v)
		}
	}
	for _, v := range []string{"1.2.0", "1.3.0-rc.1", "1.3.0-0.3.7", "1.3.0-x-y.1"} {
		if _, err := Add(r, b, v, "linux/arm64", 0); err != nil {
			t.Errorf("version %q refused: %v", v, err)
		}
	}
	// An older repository holding "v1.4.0" (published before the check).
	src := filepath.Join(d, "v140")
	os.WriteFile(src, []byte("x"), 0o644)
	if _, err := r.AddTarget(ota.FullTargetName("linux/arm64", "v1.4.0"), src, ota.Custom{Kind: "full", Version: "v1.4.0", Platform: "linux/arm64", SHA256: strings.Repeat("ab", 32), Size: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := Add(r, b, "1.4.0", "linux/arm64", 0); err == nil || !strings.Contains(err.Error(), "already") {
		t.Fatalf("duplicate of v1.4.0 accepted: %v", err)
	}
}
