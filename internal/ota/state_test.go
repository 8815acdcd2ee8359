package ota

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/outpost-edge/outpost/internal/ota/tuf"
)

var sha = strings.Repeat("ab", 32)

func TestStateRoundTrip(t *testing.T) {
	p := filepath.Join(t.TempDir(), "state.json")
	st, err := LoadState(p)
	if err != nil || st.Phase != PhaseIdle {
		t.Fatalf("missing file: %+v %v", st, err)
	}
	in := &State{Phase: PhaseTrial, Attempts: 2, Bad: []string{"1.2.0"}, Target: &Pending{
		Version: "1.1.0", FromVersion: "1.0.0", FromSHA256: sha, SHA256: sha, Size: 10,
		Target: "linux/amd64/outpost-1.1.0.zst", Kind: "full", File: tuf.TargetFile{Length: 5, Hashes: tuf.Hashes{"sha256": sha}},
	}}
	if err := SaveState(p, in); err != nil {
		t.Fatal(err)
	}
	out, err := LoadState(p)
	if err != nil {
		t.Fatal(err)
	}
	if out.Phase != PhaseTrial || out.Attempts != 2 || out.Target.Version != "1.1.0" || !out.isBad("1.2.0") {
		t.Fatalf("round trip: %+v", out)
	}
}

func TestParseStateRejects(t *testing.T) {
	for name, doc := range map[string]string{
		"syntax":         `{"phase":`,
		"unknown field":  `{"phase":"idle","extra":1}`,
		"unknown phase":  `{"phase":"flying"}`,
		"trial no tgt":   `{"phase":"trial"}`,
		"bad sha":        `{"phase":"trial","target":{"sha256":"xyz","kind":"full"}}`,
		"bad kind":       `{"phase":"trial","target":{"sha256":"` + sha + `","kind":"zip"}}`,
		"negative tries": `{"phase":"idle","attempts":-1}`,
		"trailing":       `{"phase":"idle"} {}`,
	} {
		if _, err := ParseState([]byte(doc)); !errors.Is(err, ErrBadState) {
			t.Errorf("%s: err = %v, want ErrBadState", name, err)
		}
	}
}

func TestCompareVersions(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want int
	}{
		{"1.0.0", "1.0.1", -1}, {"1.10.0", "1.9.9", 1}, {"v2.0.0", "2.0.0", 0},
		{"1.0.0-rc.1", "1.0.0", -1}, {"1.0.0-rc.2", "1.0.0-rc.10", -1}, {"1.0.0-alpha", "1.0.0-1", 1},
		{"dev", "0.0.1", -1}, {"1.0.0+build5", "1.0.0", 0}, {"1.0", "1.0.0", -1},
	} {
		if got := CompareVersions(c.a, c.b); got != c.want {
			t.Errorf("CompareVersions(%q, %q) = %d, want %d", c.a, c.b, got, c.want)
		}
		if got := CompareVersions(c.b, c.a); got != -c.want {
			t.Errorf("CompareVersions(%q, %q) = %d, want %d", c.b, c.a, got, -c.want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	var c Config
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("disabled config: %v", err)
	}
	c.Enabled, c.URL, c.Restart, c.MaxAttempts = true, "ftp://x", "reboot", 0
	err := c.Validate()
	for _, want := range []string{"url:", "root:", "restart:", "max_attempts:"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want a %s error", err, want)
		}
	}
	root := filepath.Join(t.TempDir(), "root.json")
	os.WriteFile(root, []byte("{}"), 0o644)
	c = Config{Enabled: true, URL: "https://updates.example.com/outpost", Root: root}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

func FuzzParseState(f *testing.F) {
	f.Add([]byte(`{"phase":"idle"}`))
	f.Add([]byte(`{"phase":"trial","attempts":1,"target":{"version":"1.1.0","sha256":"` + sha + `","kind":"delta","from_sha256":"` + sha + `","file":{"length":3,"hashes":{"sha256":"` + sha + `"}}}}`))
	f.Add([]byte(`{"phase":"rolling_back","reason":"x","bad":["1.0.0"],"target":{"sha256":"` + sha + `","kind":"full"}}`))
	f.Add([]byte(`{"last":{"version":"1","result":"committed","time":"2026-01-01T00:00:00Z"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := ParseState(data)
		if err != nil {
			return
		}
		// A parsed state survives a save/load round trip unchanged.
		p := filepath.Join(t.TempDir(), "s.json")
		if err := SaveState(p, st); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadState(p); err != nil {
			t.Fatalf("re-load of a saved state failed: %v", err)
		}
	})
}
