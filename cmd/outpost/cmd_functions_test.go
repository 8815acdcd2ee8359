//go:build functions

package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/ota/tuf"
)

// tagModule is a hand-written function module (internal/function's
// tagGuest(1)): it emits its input to out/v1 and returns 1 from call.
const tagModule = "0061736d0100000001220660017f017f60027f7f017f60027f7f0060047f7f7f7f017f60037f7f7f00600000025205076f7574706f737406726573756c740002076f7574706f7374046661696c0002076f7574706f73740973746174655f7075740003076f7574706f737404656d69740003076f7574706f7374036c6f6700040304030001010503010001073e04066d656d6f727902000d6f7574706f73745f616c6c6f630005126f7574706f73745f6f6e5f6d65737361676500060c6f7574706f73745f63616c6c00070a220305004180080b0f00410041062000200110031a41000b0a0041104109100041000b0b1f010041000b196f75742f76310000000000000000000002000000000000f03f"

func TestFunctionsCommand(t *testing.T) {
	dir := t.TempDir()
	fdir := filepath.Join(dir, "functions", "tag")
	if err := os.MkdirAll(fdir, 0o755); err != nil {
		t.Fatal(err)
	}
	wasm, _ := hex.DecodeString(tagModule)
	manifest := "name: tag\nversion: 1\nmodule: tag.wasm\nentry: {callable: true}\ntriggers: [{from: [in/#], to: [republish]}]\n"
	_ = os.WriteFile(filepath.Join(fdir, "tag.wasm"), wasm, 0o644)
	_ = os.WriteFile(filepath.Join(fdir, "function.yaml"), []byte(manifest), 0o644)
	// Release keys and a root whose targets role is the targets key.
	keys := filepath.Join(dir, "keys")
	targetsKey, rootKey := tuf.GenerateKey(), tuf.GenerateKey()
	if err := tuf.WriteKey(filepath.Join(keys, "targets.key"), targetsKey, nil); err != nil {
		t.Fatal(err)
	}
	rk, tk := tuf.NewKey(rootKey.Public().(ed25519.PublicKey)), tuf.NewKey(targetsKey.Public().(ed25519.PublicKey))
	root := &tuf.Root{Common: tuf.Common{Type: tuf.RoleRoot, SpecVersion: tuf.SpecVersion, Version: 1, Expires: time.Now().Add(time.Hour)},
		Keys: map[string]*tuf.Key{rk.ID(): rk, tk.ID(): tk},
		Roles: map[string]*tuf.RoleKeys{tuf.RoleRoot: {KeyIDs: []string{rk.ID()}, Threshold: 1}, tuf.RoleTargets: {KeyIDs: []string{tk.ID()}, Threshold: 1},
			tuf.RoleSnapshot: {KeyIDs: []string{rk.ID()}, Threshold: 1}, tuf.RoleTimestamp: {KeyIDs: []string{rk.ID()}, Threshold: 1}}}
	raw, _ := tuf.Sign(root, rootKey)
	rootPath := filepath.Join(dir, "root.json")
	_ = os.WriteFile(rootPath, raw, 0o644)

	run := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := functionsMain(context.Background(), args, &out, &errb)
		return code, out.String(), errb.String()
	}
	if code, out, _ := run("--help"); code != exitOK || !strings.Contains(out, "Examples:") {
		t.Fatalf("--help: %d %s", code, out)
	}
	if code, _, _ := run("bogus"); code != exitUsage {
		t.Fatalf("unknown subcommand: %d", code)
	}
	if code, _, errs := run("inspect", fdir, "--root", rootPath); code != exitUsage || !strings.Contains(errs, "unsigned") {
		t.Fatalf("unsigned: %d %s", code, errs)
	}
	if code, out, errs := run("sign", fdir, "--keys", keys); code != exitOK {
		t.Fatalf("sign: %d %s %s", code, out, errs)
	}
	code, out, errs := run("inspect", fdir, "--root", rootPath)
	if code != exitOK || !strings.Contains(out, "signature:  valid") || !strings.Contains(out, "function:   tag version 1") {
		t.Fatalf("inspect: %d\n%s\n%s", code, out, errs)
	}
	if code, out, _ := run("list", "--dir", filepath.Dir(fdir), "--root", rootPath); code != exitOK || !strings.Contains(out, "tag   1        valid      all      ok") {
		t.Fatalf("list: %d\n%s", code, out)
	}
	// A manifest error is reported with its position; tampering is refused.
	_ = os.WriteFile(filepath.Join(fdir, "function.yaml"), []byte(manifest+"limits: {memroy: 1MiB}\n"), 0o644)
	if code, _, errs := run("inspect", fdir); code != exitUsage || !strings.Contains(errs, "function.yaml:6:10: limits: unknown key \"memroy\"") {
		t.Fatalf("bad manifest: %d %s", code, errs)
	}
	_ = os.WriteFile(filepath.Join(fdir, "function.yaml"), []byte(manifest), 0o644)
	_ = os.WriteFile(filepath.Join(fdir, "tag.wasm"), append(wasm, 0), 0o644)
	if code, _, errs := run("inspect", fdir, "--root", rootPath); code != exitUsage || !strings.Contains(errs, "does not match its signed metadata") {
		t.Fatalf("tampered: %d %s", code, errs)
	}
}

// TestFunctionsPublish: publish adds a checked function to a release
// repository as signed targets; inspect --repo verifies it through the
// repository's TUF chain; a module altered after publishing is refused;
// --retire-others drops the other versions from the signed targets; a
// function that does not compile is not published.
func TestFunctionsPublish(t *testing.T) {
	dir := t.TempDir()
	repo, keys := filepath.Join(dir, "repo"), filepath.Join(dir, "keys")
	if _, err := tuf.InitRepo(repo, keys, true, nil); err != nil {
		t.Fatal(err)
	}
	wasm, _ := hex.DecodeString(tagModule)
	fn := func(v int) string {
		d := filepath.Join(dir, "tag-"+string(rune('0'+v)))
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, "tag.wasm"), wasm, 0o644)
		os.WriteFile(filepath.Join(d, "function.yaml"), []byte("name: tag\nversion: "+string(rune('0'+v))+"\nmodule: tag.wasm\nentry: {callable: true}\n"), 0o644)
		return d
	}
	run := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := functionsMain(context.Background(), args, &out, &errb)
		return code, out.String(), errb.String()
	}
	root := filepath.Join(repo, "metadata", "1.root.json")
	v1, v2 := fn(1), fn(2)
	if code, _, errs := run("publish", v1, "--repo", repo); code != exitUsage || !strings.Contains(errs, "--keys") {
		t.Fatalf("publish without keys: %d %s", code, errs)
	}
	code, out, errs := run("publish", v1, "--repo", repo, "--keys", keys)
	if code != exitOK || !strings.Contains(out, "published functions/tag/1/function.yaml") || !strings.Contains(out, "published functions/tag/1/tag.wasm") {
		t.Fatalf("publish: %d %s %s", code, out, errs)
	}
	if code, out, errs := run("inspect", v1, "--root", root, "--repo", repo); code != exitOK || !strings.Contains(out, "valid (TUF chain") {
		t.Fatalf("inspect --repo: %d %s %s", code, out, errs)
	}
	if code, _, errs := run("inspect", v1, "--repo", repo); code != exitUsage || !strings.Contains(errs, "--root") {
		t.Fatalf("inspect --repo without --root: %d %s", code, errs)
	}
	// Altered after publishing: the chain refuses it.
	os.WriteFile(filepath.Join(v1, "tag.wasm"), append(wasm[:len(wasm):len(wasm)], 0), 0o644)
	if code, _, errs := run("inspect", v1, "--root", root, "--repo", repo); code != exitUsage || !strings.Contains(errs, "does not match its signed metadata") {
		t.Fatalf("altered module: %d %s", code, errs)
	}
	// Version 2 retires version 1 from the signed targets.
	code, out, errs = run("publish", v2, "--repo", repo, "--keys", keys, "--retire-others")
	if code != exitOK || !strings.Contains(out, "retired   functions/tag/1/function.yaml") {
		t.Fatalf("publish v2: %d %s %s", code, out, errs)
	}
	os.WriteFile(filepath.Join(v1, "tag.wasm"), wasm, 0o644)
	if code, _, errs := run("inspect", v1, "--root", root, "--repo", repo); code != exitUsage || !strings.Contains(errs, "functions/tag/1/function.yaml is not a target") {
		t.Fatalf("retired version 1: %d %s", code, errs)
	}
	if code, _, errs := run("inspect", v2, "--root", root, "--repo", repo); code != exitOK {
		t.Fatalf("version 2: %d %s", code, errs)
	}
	// A module that does not compile is not published.
	bad := fn(3)
	os.WriteFile(filepath.Join(bad, "tag.wasm"), []byte("not wasm"), 0o644)
	if code, _, errs := run("publish", bad, "--repo", repo, "--keys", keys); code != exitUsage || !strings.Contains(errs, "not published") {
		t.Fatalf("bad module: %d %s", code, errs)
	}
	if code, _, _ := run("inspect", bad, "--root", root, "--repo", repo); code != exitUsage {
		t.Fatal("the bad module is in the repository")
	}
}
