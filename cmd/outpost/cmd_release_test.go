package main

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// targetFiles lists the regular files under dir/targets.
func targetFiles(t *testing.T, repo string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(filepath.Join(repo, "targets"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// Issue 9: `release add` printed "added" before failing on a wrong
// passphrase and left the stored target behind. Nothing may be printed or
// left before success. Issue 10: non-canonical and duplicate versions are
// refused.
func TestReleaseAddFailsCleanly(t *testing.T) {
	d := t.TempDir()
	repo, keys := filepath.Join(d, "repo"), filepath.Join(d, "keys")
	good, bad := filepath.Join(d, "pass"), filepath.Join(d, "wrong")
	os.WriteFile(good, []byte("correct horse\n"), 0o600)
	os.WriteFile(bad, []byte("battery staple\n"), 0o600)
	bin := filepath.Join(d, "bin")
	os.WriteFile(bin, []byte(strings.Repeat("\x7fELF outpost ", 4000)), 0o755)
	if out, errOut, code := outpost(t, "release", "keygen", "--repo", repo, "--keys", keys, "--passphrase-file", good); code != 0 {
		t.Fatalf("keygen: %d\n%s%s", code, out, errOut)
	}
	add := func(pass, version string) (string, string, int) {
		return outpost(t, "release", "add", "--repo", repo, "--keys", keys, "--passphrase-file", pass,
			"--binary", bin, "--version", version, "--platform", "linux/arm64")
	}
	out, errOut, code := add(bad, "1.2.0")
	if code == 0 || out != "" || !strings.Contains(errOut, "wrong passphrase") {
		t.Fatalf("wrong passphrase: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if f := targetFiles(t, repo); len(f) != 0 {
		t.Fatalf("files left behind by a failed add: %v", f)
	}
	if _, err := os.Stat(filepath.Join(repo, "staged-targets.json")); err == nil {
		t.Fatal("staged targets left behind by a failed add")
	}
	if out, errOut, code := add(good, "1.2.0"); code != 0 || !strings.Contains(out, "added linux/arm64/outpost-1.2.0.zst") {
		t.Fatalf("add: exit %d\n%s%s", code, out, errOut)
	}
	for _, v := range []string{"v1.2.0", "1.2.0+evil", "1.2.0", "01.2.0", "1.2", "1.3.0-", "1.3.0-01"} {
		out, errOut, code := add(good, v)
		if code == 0 || out != "" {
			t.Fatalf("version %q accepted: exit %d\n%s%s", v, code, out, errOut)
		}
		t.Logf("%s: %s", v, strings.TrimSpace(errOut))
	}
	if f := targetFiles(t, repo); len(f) != 1 {
		t.Fatalf("targets after refused adds: %v", f)
	}
}
