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
