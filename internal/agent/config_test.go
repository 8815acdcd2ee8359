package agent

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/outpost-edge/outpost/examples"
	"github.com/outpost-edge/outpost/internal/config"
)

var update = flag.Bool("update", false, "rewrite golden files")

// TestInvalidConfigs: every file in testdata/invalid is rejected with the
// problems in its .golden file (file:line:column: path: reason), one subtest
// per file. Regenerate with -update after an intended message change.
func TestInvalidConfigs(t *testing.T) {
	files, _ := filepath.Glob("testdata/invalid/*.yaml")
	if len(files) == 0 {
		t.Fatal("no test files")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			_, err := Load(f)
			if err == nil {
				t.Fatal("accepted an invalid config")
			}
			var ps config.Problems
			if !errors.As(err, &ps) {
				t.Fatalf("error is not config.Problems: %v", err)
			}
			got := err.Error() + "\n"
			golden := strings.TrimSuffix(f, ".yaml") + ".golden"
			if *update {
				os.WriteFile(golden, []byte(got), 0o644)
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create)", err)
			}
			if got != string(want) {
				t.Fatalf("problems differ from %s:\n--- got\n%s--- want\n%s", golden, got, want)
			}
			for _, p := range ps {
				if p.Pos.File != f {
					t.Errorf("problem without the file name: %v", p)
				}
			}
		})
	}
}

// TestExamplesAreValid keeps every shipped example config loadable.
func TestExamplesAreValid(t *testing.T) {
	entries, _ := examples.Files.ReadDir(".")
	n := 0
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".yaml") {
			continue
		}
		n++
		t.Run(e.Name(), func(t *testing.T) {
			b, _ := examples.Read(e.Name())
			if _, err := Parse("examples/"+e.Name(), b, []string{}); err != nil {
				t.Fatal(err)
			}
		})
	}
	if n < 2 {
		t.Fatalf("found %d example configs", n)
	}
}

func TestEnvironmentOverrides(t *testing.T) {
	src := []byte("broker:\n  users:\n    - username: a\n      password_hash: x\n      acl: [{topic: '#', access: all}]\n")
	hash := "$2a$10$lUXQ5GfslcyKjacNYRFDtusm1fblTMSlJxHTKeCkJl9eEt.cdezra"
	c, err := Parse("t.yaml", src, []string{
		"OUTPOST_BROKER__USERS__0__PASSWORD_HASH=" + hash,
		"OUTPOST_TELEMETRY__TOKEN=s3cret",
		"OUTPOST_BROKER__LIMITS__MAX_CONNECTIONS=7",
		"OUTPOST_NODE_ID=gw-env",
		"OUTPOST_MQTT_URL=unix:///ignored", // component env, not an override
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.Broker.Users[0].PasswordHash != hash || c.Telemetry.Token != "s3cret" || c.Broker.Limits.MaxConnections != 7 || c.NodeID != "gw-env" {
		t.Fatalf("overrides not applied: %+v", c)
	}
	if _, err := Parse("t.yaml", src, []string{"OUTPOST_BROKER__USERS__3__PASSWORD_HASH=x"}); err == nil ||
		!strings.Contains(err.Error(), "OUTPOST_BROKER__USERS__3__PASSWORD_HASH") {
		t.Fatalf("bad index override: %v", err)
	}
}

func TestRedactedHidesSecrets(t *testing.T) {
	c, err := Parse("t.yaml", []byte(`
telemetry: {token: tok-123}
broker:
  users:
    - {username: alice, password_hash: "$2a$10$lUXQ5GfslcyKjacNYRFDtusm1fblTMSlJxHTKeCkJl9eEt.cdezra", acl: [{topic: "#", access: all}]}
`), []string{})
	if err != nil {
		t.Fatal(err)
	}
	s := strings.ToLower(fmtAny(Redacted(c)))
	for _, secret := range []string{"tok-123", "$2a$10$"} {
		if strings.Contains(s, strings.ToLower(secret)) {
			t.Errorf("redacted config still contains %q", secret)
		}
	}
	if !strings.Contains(s, "alice") || !strings.Contains(s, "redacted") {
		t.Errorf("redaction removed too much or nothing: %s", s)
	}
}

func fmtAny(v any) string { return fmt.Sprintf("%v", v) }

// Relative paths resolve against the config file's directory, not the
// working directory: starting the agent from $HOME must not write ~/data.
func TestRelativePathsResolveAgainstConfigDir(t *testing.T) {
	dir := t.TempDir()
	cfgDir := filepath.Join(dir, "etc")
	if err := os.MkdirAll(cfgDir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(cfgDir, "outpost.yaml")
	text := "data_dir: data\ntelemetry: {address: off}\nrules: {dir: rules}\n" +
		"broker:\n  listeners: [{type: tcp, address: \"127.0.0.1:0\"}, {type: unix, path: run/mqtt.sock}]\n"
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Chdir(t.TempDir())
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	for name, got := range map[string]string{
		"data_dir":         c.DataDir,
		"rules.dir":        c.Rules.Dir,
		"rules.state_dir":  c.Rules.StateDir,
		"unix socket path": c.Broker.Listeners[1].Path,
	} {
		if !strings.HasPrefix(got, cfgDir+string(filepath.Separator)) {
			t.Errorf("%s = %q, want it under %s", name, got, cfgDir)
		}
	}
	if c.DataDir != filepath.Join(cfgDir, "data") {
		t.Errorf("data_dir = %q", c.DataDir)
	}
}
