package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/outpost-edge/outpost/internal/rules"
)

func TestRulesCheck(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.sql")
	bad := filepath.Join(dir, "bad.sql")
	os.WriteFile(good, []byte(`CREATE RULE g AS SELECT a FROM 'x' DO UPLINK LANE 'alarms' TOPIC 't';`), 0o644)
	os.WriteFile(bad, []byte("CREATE RULE b AS SELECT a FROM 'x'\nWHERE a > DO REPUBLISH 'y';"), 0o644)
	var out, errb bytes.Buffer
	if code := rulesMain(context.Background(), []string{"check", good}, &out, &errb); code != exitOK {
		t.Fatalf("good: exit %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "rule g version 1 ok") {
		t.Errorf("stdout %q", out.String())
	}
	out.Reset()
	errb.Reset()
	code := rulesMain(context.Background(), []string{"check", "--lanes", "bulk", good, bad}, &out, &errb)
	if code != exitUsage {
		t.Fatalf("bad: exit %d", code)
	}
	want := []string{
		good + ":1:51: rule g: unknown lane 'alarms' (lanes: bulk)",
		bad + ":2:11: rule b: unexpected DO, expected expression",
	}
	for _, w := range want {
		if !strings.Contains(errb.String(), w) {
			t.Errorf("stderr %q\nmissing %q", errb.String(), w)
		}
	}
}

func TestRulesTestExample(t *testing.T) {
	var out, errb bytes.Buffer
	code := rulesMain(context.Background(), []string{"test", "../../examples/rules/overheat.sql", "--input", "../../examples/rules/overheat.samples.jsonl", "--stats"}, &out, &errb)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	want := `uplink:alarms alerts/overheat {"device_id":"press-2","avg_temp":90,"min_temp":90,"max_temp":90,"n":1}
republish local/alerts/press-2 {"device_id":"press-2","avg_temp":90,"min_temp":90,"max_temp":90,"n":1}
uplink:alarms alerts/overheat {"device_id":"press-1","avg_temp":85,"max_temp":86,"n":2}
republish local/alerts/press-1 {"device_id":"press-1","avg_temp":85,"max_temp":86,"n":2}
# rule overheat v4: matched=1 emitted=2
# rule overheat v3: matched=4 emitted=2
`
	if out.String() != want {
		t.Errorf("got\n%s\nwant\n%s", out.String(), want)
	}
}

func TestRulesCheckExamples(t *testing.T) {
	files, _ := filepath.Glob("../../examples/rules/*.sql")
	if len(files) < 3 {
		t.Fatalf("examples: %v", files)
	}
	var out, errb bytes.Buffer
	if code := rulesMain(context.Background(), append([]string{"check"}, files...), &out, &errb); code != exitOK {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
}

func TestRulesUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if code := rulesMain(context.Background(), nil, &out, &errb); code != exitUsage {
		t.Errorf("no args: %d", code)
	}
	if code := rulesMain(context.Background(), []string{"test", "x.sql"}, &out, &errb); code != exitUsage {
		t.Errorf("test without input: %d", code)
	}
	if code := rulesMain(context.Background(), []string{"--help"}, &out, &errb); code != exitOK || !strings.Contains(out.String(), "outpost rules check") {
		t.Errorf("help: %d %q", code, out.String())
	}
}

func TestRulesCheckLoopAcrossFiles(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a.sql")
	b := filepath.Join(dir, "b.sql")
	os.WriteFile(a, []byte(`CREATE RULE a AS SELECT v FROM 'in/+' DO REPUBLISH 'mid/${v}';`), 0o644)
	os.WriteFile(b, []byte(`CREATE RULE b AS SELECT v FROM 'mid/#' DO REPUBLISH 'in/x';`), 0o644)
	var out, errb bytes.Buffer
	if code := rulesMain(context.Background(), []string{"check", a}, &out, &errb); code != exitOK {
		t.Fatalf("a alone: exit %d: %s", code, errb.String())
	}
	out.Reset()
	if code := rulesMain(context.Background(), []string{"check", a, b}, &out, &errb); code != exitUsage {
		t.Fatalf("a and b: exit %d", code)
	}
	// as the agent loads its directory: a.sql first, b.sql closes the loop
	want := b + ":1:53: rule b: REPUBLISH closes a loop: rule b REPUBLISH 'in/x' → rule a (FROM 'in/+') REPUBLISH 'mid/${v}' → rule b (FROM 'mid/#')"
	if !strings.Contains(errb.String(), want) {
		t.Errorf("stderr %q\nmissing %q", errb.String(), want)
	}
	if !strings.Contains(out.String(), "rule a version 1 ok") || strings.Contains(out.String(), "rule b version 1 ok") {
		t.Errorf("stdout %q", out.String())
	}
}

// TestRulesCheckAgreesWithAgent: check accepts and rejects exactly what the
// agent's rule store does with the same files in its directory: a rule
// name and version defined in two files (the later file in name order is
// rejected), a version defined twice in one file, a loop across files.
func TestRulesCheckAgreesWithAgent(t *testing.T) {
	cases := []struct {
		name  string
		files map[string]string
	}{
		{"same version in two files", map[string]string{
			"a.sql": `CREATE RULE n VERSION 2 AS SELECT t FROM 'x' DO REPUBLISH 'y';`,
			"b.sql": `CREATE RULE n VERSION 2 AS SELECT t, 1 AS one FROM 'x' DO REPUBLISH 'y';
CREATE RULE other AS SELECT t FROM 'z' DO REPUBLISH 'w';`,
		}},
		{"versions split over files", map[string]string{
			"n.sql":        `CREATE RULE n VERSION 3 AS SELECT t FROM 'x' DO REPUBLISH 'y';`,
			"n-canary.sql": `CREATE RULE n VERSION 4 FOR DEVICES WHERE labels.canary = 'true' AS SELECT t FROM 'x' DO REPUBLISH 'y';`,
		}},
		{"same version twice in one file", map[string]string{
			"a.sql": `CREATE RULE n AS SELECT t FROM 'x' DO REPUBLISH 'y'; CREATE RULE n AS SELECT t FROM 'x' DO REPUBLISH 'q';`,
		}},
		{"loop across files", map[string]string{
			"a.sql": `CREATE RULE a AS SELECT v FROM 'in/+' DO REPUBLISH 'mid/${v}';`,
			"b.sql": `CREATE RULE b AS SELECT v FROM 'mid/#' DO REPUBLISH 'in/x';`,
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			var paths []string
			for n, src := range tc.files {
				os.WriteFile(filepath.Join(dir, n), []byte(src), 0o644)
				paths = append(paths, filepath.Join(dir, n))
			}
			// the agent's path: the store loading the directory
			eng := rules.New(rules.Options{Env: rules.NewMemEnv()})
			store := rules.NewStore(eng, dir, 0, nil)
			loadErr := store.Reload()
			var agentOK []string
			for _, r := range eng.Rules() {
				agentOK = append(agentOK, fmt.Sprintf("%s: rule %s version %d ok", filepath.Join(dir, r.File), r.Name, r.Version))
			}
			sort.Strings(agentOK)

			var out, errb bytes.Buffer
			code := rulesMain(context.Background(), append([]string{"check"}, paths...), &out, &errb)
			var checkOK []string
			for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
				if l != "" {
					checkOK = append(checkOK, l)
				}
			}
			sort.Strings(checkOK)
			if strings.Join(checkOK, "\n") != strings.Join(agentOK, "\n") {
				t.Errorf("check accepts\n%s\nthe agent runs\n%s", strings.Join(checkOK, "\n"), strings.Join(agentOK, "\n"))
			}
			if (loadErr != nil) != (code != exitOK) {
				t.Errorf("agent load error %v, check exit %d (stderr %s)", loadErr, code, errb.String())
			}
			// every error the agent reports, check reports too
			checkErrs := strings.ReplaceAll(errb.String(), dir+string(filepath.Separator), "")
			for _, fs := range store.Status() {
				for _, e := range fs.Errors {
					if !strings.Contains(checkErrs, e) {
						t.Errorf("agent error %q not reported by check:\n%s", e, errb.String())
					}
				}
			}
		})
	}
}
