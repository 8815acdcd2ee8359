package rules

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files (and the output blocks of docs/rules.md)")

const docPath = "../../docs/rules.md"

// docExample is one `<!-- example: NAME [stats] -->` section of
// docs/rules.md: the next ```sql, ```jsonl and ```text blocks are the rule,
// its input and its expected output.
type docExample struct {
	name       string
	stats      bool
	sql, input string
	output     string
	outStart   int // byte offsets of the output block body in the doc
	outEnd     int
}

var exampleMarker = regexp.MustCompile("(?m)^<!-- example: ([a-z0-9-]+)( stats)? -->$")

func parseDocExamples(t *testing.T, doc string) []docExample {
	t.Helper()
	var out []docExample
	locs := exampleMarker.FindAllStringSubmatchIndex(doc, -1)
	for i, l := range locs {
		end := len(doc)
		if i+1 < len(locs) {
			end = locs[i+1][0]
		}
		ex := docExample{name: doc[l[2]:l[3]], stats: l[4] >= 0}
		pos := l[1]
		block := func(lang string) (string, int, int) {
			open := "```" + lang + "\n"
			s := strings.Index(doc[pos:end], open)
			if s < 0 {
				t.Fatalf("example %s: no ```%s block", ex.name, lang)
			}
			bs := pos + s + len(open)
			e := strings.Index(doc[bs:end], "```")
			if e < 0 {
				t.Fatalf("example %s: unterminated ```%s block", ex.name, lang)
			}
			pos = bs + e + 3
			return doc[bs : bs+e], bs, bs + e
		}
		ex.sql, _, _ = block("sql")
		ex.input, _, _ = block("jsonl")
		ex.output, ex.outStart, ex.outEnd = block("text")
		out = append(out, ex)
	}
	return out
}

// TestDocExamples runs every example of docs/rules.md and compares its
// output with testdata/examples/NAME.txt and with the doc's own output
// block. Run with -update to regenerate both after a deliberate change.
func TestDocExamples(t *testing.T) {
	b, err := os.ReadFile(docPath)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	examples := parseDocExamples(t, doc)
	if len(examples) < 20 {
		t.Fatalf("only %d examples found in %s", len(examples), docPath)
	}
	seen := map[string]bool{}
	results := make([]string, len(examples))
	for i, ex := range examples {
		if seen[ex.name] {
			t.Fatalf("example name %s used twice", ex.name)
		}
		seen[ex.name] = true
		t.Run(ex.name, func(t *testing.T) {
			var out bytes.Buffer
			env := &MemEnv{Open: true}
			err := RunTest(context.Background(), ex.name+".sql", ex.sql, strings.NewReader(ex.input), &out, TestOptions{Env: env, Stats: ex.stats})
			if err != nil {
				out.WriteString(err.Error() + "\n")
			}
			got := out.String()
			results[i] = got
			golden := filepath.Join("testdata", "examples", ex.name+".txt")
			if *update {
				os.MkdirAll(filepath.Dir(golden), 0o755)
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -run TestDocExamples -update)", err)
			}
			if got != string(want) {
				t.Errorf("output differs from %s:\n--- got\n%s--- want\n%s", golden, got, want)
			}
			if got != ex.output {
				t.Errorf("docs/rules.md output block of %s is stale:\n--- actual\n%s--- doc\n%s", ex.name, got, ex.output)
			}
		})
	}
	if *update {
		var nb strings.Builder
		last := 0
		for i, ex := range examples {
			nb.WriteString(doc[last:ex.outStart])
			nb.WriteString(results[i])
			last = ex.outEnd
		}
		nb.WriteString(doc[last:])
		if err := os.WriteFile(docPath, []byte(nb.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
