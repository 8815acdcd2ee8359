//go:build netpol

package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A bad load_balancers entry is refused with file:line:col and the field.
func TestLBConfigErrorsNamePosition(t *testing.T) {
	p := filepath.Join(t.TempDir(), "outpost.yaml")
	y := `data_dir: data
netpol:
  load_balancers:
    - name: api
      vip: 10.96.0.10:80
      algorithm: fastest
      backends:
        - address: 127.0.0.1:8080
`
	if err := os.WriteFile(p, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(p)
	if err == nil || !strings.Contains(err.Error(), p+":6:18") || !strings.Contains(err.Error(), "algorithm") {
		t.Fatalf("want %s:6:18 naming algorithm, got %v", p, err)
	}
	y = strings.Replace(y, "fastest", "maglev", 1) + "      bogus: 1\n"
	os.WriteFile(p, []byte(y), 0o600)
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Fatalf("unknown field accepted: %v", err)
	}
}
