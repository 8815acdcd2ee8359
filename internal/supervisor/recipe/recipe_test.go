package recipe

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseFull(t *testing.T) {
	data, err := os.ReadFile("testdata/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	r, err := Parse("testdata/full.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	if r.Name != "temp-sensor" || r.Version.String() != "1.2.3-rc.1+build.5" || r.Kind != "native" {
		t.Fatalf("header: %+v", r)
	}
	if len(r.DependsOn) != 3 || r.DependsOn[0].Type != Hard || r.DependsOn[1].Type != Soft || r.DependsOn[2].Name != "cache" || r.DependsOn[2].Type != Hard {
		t.Fatalf("depends_on: %+v", r.DependsOn)
	}
	if !r.DependsOn[0].Version.Allows(Version{Major: 1, Minor: 9}) || r.DependsOn[0].Version.Allows(Version{Major: 2}) {
		t.Fatal("constraint")
	}
	if got := r.Lifecycle.Run.Argv(); !reflect.DeepEqual(got, []string{"./bin/sensor", "--interval", "5s"}) {
		t.Fatalf("run argv %q", got)
	}
	if got := r.Lifecycle.Install.Argv(); !reflect.DeepEqual(got, []string{"/bin/sh", "-c", "./setup.sh"}) || r.Lifecycle.Install.Timeout != 30*time.Second {
		t.Fatalf("install %+v", r.Lifecycle.Install)
	}
	h := r.Health
	if h.Kind != HealthHTTP || h.Interval != 2*time.Second || h.Timeout != 500*time.Millisecond || h.FailureThreshold != 2 || h.StartInterval != 250*time.Millisecond || h.StartPeriod != 5*time.Second {
		t.Fatalf("health %+v", h)
	}
	rs := r.Restart
	if rs.Policy != Always || rs.InitialBackoff != 100*time.Millisecond || rs.Multiplier != 3 || rs.Jitter != 0.1 || rs.MaxRestarts != 4 || rs.Window != time.Minute {
		t.Fatalf("restart %+v", rs)
	}
	if r.Resources != (Resources{Memory: 64 << 20, CPU: 0.5, Pids: 32}) {
		t.Fatalf("resources %+v", r.Resources)
	}
	wantCfg := map[string]any{"interval": int64(5), "sensors": []any{"a", "b"}, "nested": map[string]any{"deep": true, "ratio": 0.5, "none": nil}}
	if !reflect.DeepEqual(r.Configuration, wantCfg) {
		t.Fatalf("configuration %#v", r.Configuration)
	}
	if !reflect.DeepEqual(r.Access, Access{Publish: []string{"sensors/temp/#"}, Subscribe: []string{"commands/+/temp"}}) {
		t.Fatalf("access %+v", r.Access)
	}
	if p := r.Where("health.timeout"); p != (Pos{31, 12}) {
		t.Fatalf("Where(health.timeout) = %+v", p)
	}
}

func TestParseDefaults(t *testing.T) {
	r, err := Parse("min.yaml", []byte("name: a\nversion: 0.1.0\nlifecycle:\n  run: sleep 1000\nhealth:\n  exec: [\"true\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if r.Restart.Policy != OnFailure || r.Restart.InitialBackoff != DefaultInitialBackoff || r.Restart.MaxBackoff != DefaultMaxBackoff ||
		r.Restart.Jitter != DefaultJitter || r.Restart.MaxRestarts != DefaultMaxRestarts || r.Restart.Window != DefaultRestartWindow {
		t.Fatalf("restart defaults %+v", r.Restart)
	}
	if r.Health.Interval != DefaultHealthInterval || r.Health.Timeout != DefaultHealthTimeout || r.Health.FailureThreshold != 3 ||
		r.Health.StartPeriod != DefaultHealthStartPeriod || r.Health.StartInterval != DefaultHealthStartInterval {
		t.Fatalf("health defaults %+v", r.Health)
	}
}

func TestParseErrors(t *testing.T) {
	const head = "name: a\nversion: 1.0.0\nlifecycle:\n  run: x\n"
	cases := []struct {
		name, src string
		sentinel  error
		want      string // substring, including file:line:col
	}{
		{"unknown key", head + "colour: red\n", ErrUnknownField, "r.yaml:5:1: colour: unknown field"},
		{"unknown nested key", head + "health:\n  exec: [x]\n  intervl: 1s\n", ErrUnknownField, "r.yaml:7:3: health.intervl"},
		{"bad semver", "name: a\nversion: 1.02.0\nlifecycle:\n  run: x\n", ErrVersion, "r.yaml:2:10: version"},
		{"semver two parts", "name: a\nversion: \"1.2\"\nlifecycle:\n  run: x\n", ErrVersion, "not semver"},
		{"missing version", "name: a\nlifecycle:\n  run: x\n", ErrVersion, "version is required"},
		{"missing name", "version: 1.0.0\nlifecycle:\n  run: x\n", ErrInvalid, "name is required"},
		{"bad name", "name: a/b\nversion: 1.0.0\nlifecycle:\n  run: x\n", ErrInvalid, "r.yaml:1:7: name"},
		{"no run", "name: a\nversion: 1.0.0\n", ErrInvalid, "needs run"},
		{"run and startup", head + "  startup: y\n", ErrInvalid, "not both"},
		{"wrong type", head + "env: [a]\n", ErrInvalid, "r.yaml:5:6: env: invalid value: expected a mapping of strings"},
		{"bad duration", head + "health:\n  exec: [x]\n  interval: soon\n", ErrInvalid, "r.yaml:7:13: health.interval"},
		{"timeout over interval", head + "health:\n  exec: [x]\n  interval: 1s\n  timeout: 2s\n", ErrInvalid, "r.yaml:8:12: health.timeout"},
		{"two checks", head + "health:\n  exec: [x]\n  http: http://127.0.0.1/\n", ErrInvalid, "exactly one"},
		{"bad policy", head + "restart:\n  policy: sometimes\n", ErrInvalid, "r.yaml:6:11: restart.policy"},
		{"bad dep type", head + "depends_on:\n  - name: b\n    type: firm\n", ErrInvalid, "r.yaml:7:11: depends_on[0].type"},
		{"bad constraint", head + "depends_on:\n  - name: b\n    version: \">=x\"\n", ErrVersion, "depends_on[0].version"},
		{"self dep", head + "depends_on: [a]\n", ErrInvalid, "itself"},
		{"url without hash", head + "artifacts:\n  - url: https://h/x.bin\n", ErrInvalid, "sha256 is required"},
		{"bad hash", head + "artifacts:\n  - path: x\n    sha256: abc\n", ErrInvalid, "64 hex"},
		{"unpack non archive", head + "artifacts:\n  - path: x.bin\n    unpack: true\n", ErrInvalid, "unpack needs"},
		{"duplicate key", head + "user: a\nuser: b\n", ErrInvalid, "r.yaml:6:1: user: invalid value: duplicate key"},
		{"alias", head + "user: &a x\ngroup: *a\n", ErrInvalid, "anchors"},
		{"reserved env", head + "env:\n  OUTPOST_MQTT_URL: x\n", ErrInvalid, "reserved"},
		{"bad filter", head + "access:\n  publish: [\"a/#/b\"]\n", ErrInvalid, "r.yaml:6:13: access.publish[0]"},
		{"memory", head + "resources:\n  memory: lots\n", ErrInvalid, "resources.memory"},
		{"syntax", "name: [a\n", ErrSyntax, "r.yaml:"},
		{"two docs", head + "---\nname: b\n", ErrInvalid, "one YAML document"},
		{"not a mapping", "- a\n", ErrInvalid, "expected a mapping"},
		{"kind", head + "kind: wasm\n", ErrInvalid, "not supported"},
		{"mqtt wildcard", head + "health:\n  mqtt: a/+\n", ErrInvalid, "without wildcards"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("r.yaml", []byte(c.src))
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, c.sentinel) {
				t.Errorf("error %v is not %v", err, c.sentinel)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not contain %q", err, c.want)
			}
			var re *Error
			if !errors.As(err, &re) || re.File != "r.yaml" || (c.sentinel != ErrSyntax && re.Line == 0) {
				t.Errorf("error %#v is not a located *Error", err)
			}
		})
	}
}

func TestParseReportsAllErrors(t *testing.T) {
	_, err := Parse("r.yaml", []byte("name: a\nversion: 1.0.0\nlifecycle:\n  run: x\nfoo: 1\nbar: 2\n"))
	if err == nil || !strings.Contains(err.Error(), "foo") || !strings.Contains(err.Error(), "bar") {
		t.Fatalf("want both unknown keys reported, got %v", err)
	}
}

func TestCheckArtifacts(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "app"), []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	const good = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824" // sha256("hello")
	write := func(body string) string {
		p := filepath.Join(dir, "r.yaml")
		if err := os.WriteFile(p, []byte("name: a\nversion: 1.0.0\nlifecycle:\n  run: x\nartifacts:\n"+body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if _, err := LoadFile(write("  - path: app\n    sha256: " + good + "\n")); err != nil {
		t.Fatal(err)
	}
	_, err := LoadFile(write("  - path: app\n    sha256: " + strings.Repeat("0", 64) + "\n"))
	if !errors.Is(err, ErrHashMismatch) || !strings.Contains(err.Error(), "r.yaml:6:5") {
		t.Fatalf("hash mismatch: %v", err)
	}
	_, err = LoadFile(write("  - path: missing\n"))
	if !errors.Is(err, ErrArtifact) || !strings.Contains(err.Error(), "r.yaml:6:5: artifacts[0]") {
		t.Fatalf("missing: %v", err)
	}
}

func mk(t *testing.T, name, deps string) *Recipe {
	t.Helper()
	src := "name: " + name + "\nversion: 1.0.0\nlifecycle:\n  run: x\n"
	if deps != "" {
		src += "depends_on:\n" + deps
	}
	r, err := Parse(name+".yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestResolve(t *testing.T) {
	rs := []*Recipe{
		mk(t, "app", "  - db\n  - name: log\n    type: soft\n"),
		mk(t, "db", "  - disk\n"),
		mk(t, "disk", ""),
		mk(t, "log", ""),
		mk(t, "x", "  - y\n"),
		mk(t, "y", "  - z\n"),
		mk(t, "z", "  - x\n"),
		mk(t, "needs-x", "  - x\n"),
		mk(t, "orphan", "  - ghost\n"),
		mk(t, "picky", "  - name: disk\n    version: \">=2\"\n"),
	}
	g, rejected := Resolve(rs)
	if got := g.Order(); !reflect.DeepEqual(got, []string{"disk", "db", "log", "app"}) {
		t.Fatalf("order %v", got)
	}
	for _, n := range []string{"x", "y", "z"} {
		if !errors.Is(rejected[n], ErrCycle) || !strings.Contains(rejected[n].Error(), "x -> y -> z -> x") {
			t.Errorf("%s: %v", n, rejected[n])
		}
	}
	if e := rejected["x"].Error(); !strings.HasPrefix(e, "x.yaml:6:5: depends_on[0]") {
		t.Errorf("cycle error not located: %s", e)
	}
	if !errors.Is(rejected["needs-x"], ErrUnknownDependency) || !strings.Contains(rejected["needs-x"].Error(), "rejected") {
		t.Errorf("needs-x: %v", rejected["needs-x"])
	}
	if !errors.Is(rejected["orphan"], ErrUnknownDependency) {
		t.Errorf("orphan: %v", rejected["orphan"])
	}
	if !errors.Is(rejected["picky"], ErrDependencyVersion) {
		t.Errorf("picky: %v", rejected["picky"])
	}
	if got := g.StopLevels(); !reflect.DeepEqual(got, [][]string{{"app"}, {"db", "log"}, {"disk"}}) {
		t.Errorf("stop levels %v", got)
	}
	if got := g.HardDependentsClosure("disk"); !reflect.DeepEqual(got, []string{"db", "app"}) {
		t.Errorf("closure %v", got)
	}
	if got := g.HardDependentsClosure("log"); len(got) != 0 {
		t.Errorf("soft closure %v", got)
	}
	dup := mk(t, "disk", "")
	dup.File = "other.yaml"
	_, rej := Resolve([]*Recipe{mk(t, "disk", ""), dup})
	if !errors.Is(rej["other.yaml"], ErrDuplicate) {
		t.Errorf("duplicate: %v", rej)
	}
}

func TestSemver(t *testing.T) {
	order := []string{"0.9.9", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.10.0", "2.0.0"}
	for i := range order {
		for j := range order {
			a, err := ParseVersion(order[i])
			if err != nil {
				t.Fatal(err)
			}
			b, _ := ParseVersion(order[j])
			want := 0
			if i < j {
				want = -1
			} else if i > j {
				want = 1
			}
			if got := a.Compare(b); got != want {
				t.Errorf("%s vs %s = %d, want %d", order[i], order[j], got, want)
			}
		}
	}
	for _, bad := range []string{"", "1", "1.2", "v1.2.3", "01.2.3", "1.2.3-", "1.2.3-01", "1.2.3+", "1.2.3-a..b", "1.2.3-é", "1.2.3.4", "99999999999999999999.0.0"} {
		if _, err := ParseVersion(bad); err == nil {
			t.Errorf("ParseVersion(%q) accepted", bad)
		}
	}
	cs := []struct {
		c, v string
		ok   bool
	}{
		{"^1.2", "1.9.0", true}, {"^1.2", "2.0.0", false}, {"^0.2.1", "0.2.9", true}, {"^0.2.1", "0.3.0", false},
		{"~1.2.3", "1.2.9", true}, {"~1.2.3", "1.3.0", false}, {">=1.0.0, <2", "1.5.0", true}, {"!=1.0.0", "1.0.0", false},
		{"1.0.0", "1.0.0+meta", true}, {">1.0.0", "1.0.0", false}, {"<=1.0.0", "1.0.0", true},
	}
	for _, c := range cs {
		con, err := ParseConstraint(c.c)
		if err != nil {
			t.Fatal(err)
		}
		v, _ := ParseVersion(c.v)
		if got := con.Allows(v); got != c.ok {
			t.Errorf("%q allows %s = %v", c.c, c.v, got)
		}
	}
}
