package ota_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/outpost-edge/outpost/internal/ota"
)

// `outpost update bad` and `outpost update forget-bad VERSION|--all` list
// and clear the bad-version list through the agent's API; the state file
// on disk is rewritten (and stays valid), the rest of it untouched.
func TestForgetBadCLI(t *testing.T) {
	r := newTestRepo(t)
	srv := newServer(t, r.Dir)
	g := newGateway(t, "1.0.0", srv.URL, r.root)
	g.cfg.Interval = 1e12
	st := &ota.State{Phase: ota.PhaseIdle, Bad: []string{"1.2.0", "1.3.0", "1.4.0"}, NoDelta: []string{"1.3.0"},
		Last: &ota.Outcome{Version: "1.4.0", Result: "rolled_back", Reason: "crashed"}}
	os.MkdirAll(g.cfg.StagingDir, 0o755)
	if err := ota.SaveState(g.cfg.StateFile, st); err != nil {
		t.Fatal(err)
	}
	ip := g.inproc(t, "1.0.0")
	mux := http.NewServeMux()
	ip.Register(mux)
	api := httptest.NewServer(mux)
	defer api.Close()
	run := func(wantOK bool, args ...string) string {
		t.Helper()
		b, err := exec.Command(fixture.outpost, append([]string{"update"}, append(args, "--api", api.URL)...)...).CombinedOutput()
		if (err == nil) != wantOK {
			t.Fatalf("outpost update %s: err %v\n%s", strings.Join(args, " "), err, b)
		}
		return string(b)
	}
	if out := run(true, "bad"); !strings.Contains(out, "bad:       1.2.0, 1.3.0, 1.4.0") {
		t.Fatalf("bad:\n%s", out)
	}
	if out := run(false, "forget-bad", "9.9.9"); !strings.Contains(out, "not marked bad") {
		t.Fatalf("forget-bad of a good version:\n%s", out)
	}
	if out := run(false, "forget-bad"); !strings.Contains(out, "give one or more versions, or --all") {
		t.Fatalf("forget-bad without arguments:\n%s", out)
	}
	out := run(true, "forget-bad", "1.3.0")
	t.Logf("outpost update forget-bad 1.3.0:\n%s", out)
	if !strings.Contains(out, "forgotten: 1.3.0") || !strings.Contains(out, "bad:       1.2.0, 1.4.0") {
		t.Fatalf("forget-bad 1.3.0:\n%s", out)
	}
	got := g.state(t)
	if !slices.Equal(got.Bad, []string{"1.2.0", "1.4.0"}) || !slices.Equal(got.NoDelta, []string{"1.3.0"}) || got.Last == nil || got.Last.Reason != "crashed" {
		t.Fatalf("state after forget-bad 1.3.0: %+v", got)
	}
	var l ota.BadList
	if err := json.Unmarshal([]byte(run(true, "forget-bad", "--all", "--json")), &l); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(l.Forgotten, []string{"1.2.0", "1.4.0"}) || len(l.Bad) != 0 {
		t.Fatalf("forget-bad --all: %+v", l)
	}
	if got := g.state(t); len(got.Bad) != 0 {
		t.Fatalf("state after --all: %+v", got)
	}
	if out := run(true, "bad"); !strings.Contains(out, "bad:       none") {
		t.Fatalf("bad after --all:\n%s", out)
	}
	if s := ip.Status(); len(s.Bad) != 0 {
		t.Fatalf("status bad %v", s.Bad)
	}
	if out := run(true, "forget-bad", "--help"); !strings.Contains(out, "outpost update forget-bad 1.2.0") {
		t.Fatalf("help has no example:\n%s", out)
	}
}
