package recipe

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Issue 9: recipes in subdirectories (DIR/NAME/recipe.yaml, the layout of
// examples/components) were silently ignored: 0 valid components.
func TestLoadDirSubdirectories(t *testing.T) {
	dir := t.TempDir()
	write := func(rel, body string) {
		p := filepath.Join(dir, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	recipe := func(name string) string {
		return "name: " + name + "\nversion: 1.0.0\nlifecycle:\n  run: 'sleep 1000'\n"
	}
	write("top.yaml", recipe("top"))
	write("alpha/recipe.yaml", recipe("alpha"))
	write("beta/recipe.yml", recipe("beta"))
	write("gamma/component.yaml", recipe("gamma")) // misnamed: reported
	write("bin/tool", "#!/bin/sh\n")               // artifacts only: ignored
	write(".hidden/recipe.yaml", recipe("hidden"))
	write("alpha/nested/recipe.yaml", recipe("nested")) // one level only
	recipes, errs, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range recipes {
		names = append(names, r.Name)
	}
	if got := strings.Join(names, ","); got != "alpha,beta,top" {
		t.Fatalf("loaded %s, want alpha,beta,top", got)
	}
	if len(errs) != 1 {
		t.Fatalf("errors %v, want one for gamma", errs)
	}
	for f, e := range errs {
		if !strings.Contains(f, "gamma") || !strings.Contains(e.Error(), "recipe.yaml") {
			t.Fatalf("error %s: %v", f, e)
		}
	}
	// The examples' layout loads.
	ex, _, err := LoadDir("../../../examples/components")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range ex {
		found = found || r.Name == "hello-py"
	}
	if !found {
		t.Fatal("examples/components/hello-py/recipe.yaml not loaded")
	}
}
