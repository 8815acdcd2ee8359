package rules

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/outpost-edge/outpost/internal/module"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/message"
)

// checkFor polls cond until it is true or the deadline passes.
func checkFor(t *testing.T, d time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func ruleVersions(e *Engine) string {
	var s []string
	for _, r := range e.Rules() {
		s = append(s, ruleID(r))
	}
	return strings.Join(s, ",")
}

func TestStoreWatchesDirectory(t *testing.T) {
	dir := t.TempDir()
	write := func(name, src string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("a.sql", `CREATE RULE a AS SELECT x FROM 'a' DO REPUBLISH 'oa';`)
	write("notes.txt", `not a rule`)
	env := NewMemEnv()
	e := New(Options{Env: env})
	s := NewStore(e, dir, 10*time.Millisecond, nil)
	var mu sync.Mutex
	var lat []time.Duration
	s.OnReload = func(ri ReloadInfo) { mu.Lock(); lat = append(lat, ri.SinceLastEvent); mu.Unlock() }
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if err := s.Watch(); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want := func(w string) func() error {
		return func() error {
			if got := ruleVersions(e); got != w {
				return fmt.Errorf("rules %q, want %q", got, w)
			}
			return nil
		}
	}
	checkFor(t, 2*time.Second, want("a@1"))

	// new file
	write("b.sql", `CREATE RULE b AS SELECT x FROM 'b' DO REPUBLISH 'ob';`)
	checkFor(t, 2*time.Second, want("a@1,b@1"))

	// editor-style save: write a temp file and rename it over the original
	tmp := filepath.Join(dir, ".a.sql.swp")
	os.WriteFile(tmp, []byte(`CREATE RULE a VERSION 2 AS SELECT x FROM 'a' DO REPUBLISH 'oa';`), 0o644)
	if err := os.Rename(tmp, filepath.Join(dir, "a.sql")); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 2*time.Second, want("a@2,b@1"))

	// a bad edit is rejected alone: b keeps its old version, a is untouched
	write("b.sql", `CREATE RULE b VERSION 2 AS SELECT x FROM 'b' WHERE DO REPUBLISH 'ob';`)
	checkFor(t, 2*time.Second, func() error {
		if s.Rejected() != 1 {
			return fmt.Errorf("rejected %d", s.Rejected())
		}
		return nil
	})
	if got := ruleVersions(e); got != "a@2,b@1" {
		t.Fatalf("after bad edit: %s", got)
	}
	st := s.Status()
	if len(st) != 2 || len(st[1].Errors) != 1 || !strings.Contains(st[1].Errors[0], "b.sql:1:52: rule b: unexpected DO, expected expression") {
		t.Fatalf("status %+v", st)
	}
	// fixed again
	write("b.sql", `CREATE RULE b VERSION 3 AS SELECT x FROM 'b' DO REPUBLISH 'ob';`)
	checkFor(t, 2*time.Second, want("a@2,b@3"))

	// delete
	os.Remove(filepath.Join(dir, "a.sql"))
	checkFor(t, 2*time.Second, want("b@3"))

	// a duplicate version in another file is rejected
	write("c.sql", `CREATE RULE b VERSION 3 AS SELECT y FROM 'b' DO REPUBLISH 'ob';`)
	checkFor(t, 2*time.Second, func() error {
		if s.Rejected() != 1 {
			return fmt.Errorf("rejected %d", s.Rejected())
		}
		return nil
	})
	if got := ruleVersions(e); got != "b@3" {
		t.Fatalf("after duplicate: %s", got)
	}
	mu.Lock()
	t.Logf("watch reload latency (last event to switch): %s", distribution(lat))
	mu.Unlock()
}

func TestStorePartialFileKeepsOldVersionOfBadRule(t *testing.T) {
	e, _ := newTestEngine(t, "")
	s := NewStore(e, "", 0, nil)
	s.mem["x.sql"] = `CREATE RULE p AS SELECT 1 AS v FROM 'p' DO REPUBLISH 'o';
CREATE RULE q AS SELECT 1 AS v FROM 'q' DO REPUBLISH 'o';`
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	s.mem["x.sql"] = `CREATE RULE p VERSION 2 AS SELECT 2 AS v FROM 'p' DO REPUBLISH 'o';
CREATE RULE q VERSION 2 AS SELECT nosuch() AS v FROM 'q' DO REPUBLISH 'o';`
	if err := s.Reload(); err == nil {
		t.Fatal("no error")
	}
	if got := ruleVersions(e); got != "p@2,q@1" {
		t.Fatalf("rules %s, want p@2,q@1", got)
	}
}

func TestHTTPAPI(t *testing.T) {
	dir := t.TempDir()
	env := NewMemEnv()
	e := New(Options{Env: env})
	s := NewStore(e, dir, 0, nil)
	mux := http.NewServeMux()
	s.RegisterHTTP(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	do := func(method, path, body string) (int, map[string]any) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var m map[string]any
		json.Unmarshal(b, &m)
		return resp.StatusCode, m
	}
	code, m := do("PUT", "/api/v1/rules/hot", `CREATE RULE hot AS SELECT temp FROM 'f/+/t' WHERE temp > 80 DO REPUBLISH 'alerts';`)
	if code != 200 {
		t.Fatalf("PUT: %d %v", code, m)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "hot.sql")); err != nil || !strings.Contains(string(b), "temp > 80") {
		t.Fatalf("file not written: %v", err)
	}
	e.Process(context.Background(), &message.Message{Topic: "f/1/t", Payload: []byte(`{"temp":90}`)})
	code, m = do("GET", "/api/v1/rules", "")
	rules := m["rules"].([]any)
	if code != 200 || len(rules) != 1 || rules[0].(map[string]any)["emitted"].(float64) != 1 {
		t.Fatalf("GET list: %d %v", code, m)
	}
	code, m = do("GET", "/api/v1/rules/hot", "")
	if code != 200 || !strings.Contains(m["source"].(string), "CREATE RULE hot") {
		t.Fatalf("GET: %d %v", code, m)
	}
	code, m = do("PUT", "/api/v1/rules/hot", `CREATE RULE hot AS SELECT temp FROM 'f/+/t' WHERE temp > DO REPUBLISH 'alerts';`)
	if code != 400 || !strings.Contains(fmt.Sprint(m["errors"]), "hot.sql:1:58: rule hot: unexpected DO, expected expression") {
		t.Fatalf("bad PUT: %d %v", code, m)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "hot.sql")); !strings.Contains(string(b), "temp > 80") {
		t.Fatal("a rejected PUT changed the file")
	}
	code, m = do("PUT", "/api/v1/rules/hot", `CREATE RULE other AS SELECT 1 FROM 'x' DO REPUBLISH 'y';`)
	if code != 400 {
		t.Fatalf("mismatched name: %d %v", code, m)
	}
	code, m = do("POST", "/api/v1/rules/hot/explain", "")
	plans := m["plans"].([]any)
	if code != 200 || len(plans) != 1 || fmt.Sprint(plans[0].(map[string]any)["fields"]) != "[temp]" {
		t.Fatalf("explain: %d %v", code, m)
	}
	code, m = do("POST", "/api/v1/rules/draft/explain", `CREATE RULE draft AS SELECT avg(t) AS a FROM 'x' GROUP BY TUMBLINGWINDOW(ss, 5) DO REPUBLISH 'y';`)
	if code != 200 || !strings.Contains(fmt.Sprint(m), "TUMBLINGWINDOW(ss, 5)") {
		t.Fatalf("explain body: %d %v", code, m)
	}
	if code, _ = do("DELETE", "/api/v1/rules/hot", ""); code != 204 {
		t.Fatalf("DELETE: %d", code)
	}
	if code, _ = do("DELETE", "/api/v1/rules/hot", ""); code != 404 {
		t.Fatalf("DELETE again: %d", code)
	}
	if code, _ = do("GET", "/api/v1/rules/hot", ""); code != 404 {
		t.Fatalf("GET deleted: %d", code)
	}
	if len(e.Rules()) != 0 {
		t.Fatal("rule still active")
	}
}

func TestModuleLifecycle(t *testing.T) {
	dir, state := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(dir, "w.sql"), []byte(`CREATE RULE w AS SELECT count(*) AS n FROM 't' GROUP BY TUMBLINGWINDOW(hh, 1) DO REPUBLISH 'o';`), 0o644)
	os.WriteFile(filepath.Join(dir, "bad.sql"), []byte(`CREATE RULE bad AS SELECT FROM`), 0o644)
	cfg := &Config{Dir: dir, StateDir: state, Devices: []Device{{ID: "d1", Labels: map[string]string{"site": "x"}}}}
	env := NewMemEnv()
	ctx := context.Background()
	m := NewModule(env, nil, nil)
	if err := module.Of[Config](m).Init(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if h := m.Health(); h.Detail != "rejected rule files: bad.sql" {
		t.Errorf("health %+v", h)
	}
	if got := m.Engine().env.Labels("d1")["site"]; got != "x" {
		t.Errorf("config labels: %q", got)
	}
	for i := 0; i < 3; i++ {
		m.Engine().Process(ctx, &message.Message{Topic: "t", DeviceID: "d1", Payload: []byte(`{}`)})
	}
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(state, "rules-state.json")); err != nil {
		t.Fatal(err)
	}
	m2 := NewModule(env, nil, nil)
	module.Of[Config](m2).Init(ctx, cfg)
	if err := m2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	m2.Engine().Process(ctx, &message.Message{Topic: "t", DeviceID: "d1", Payload: []byte(`{}`)})
	m2.Engine().Flush(ctx)
	m2.Stop(ctx)
	ms := env.Sink("republish").Messages()
	if len(ms) != 1 || string(ms[0].Payload) != `{"n":4}` {
		t.Fatalf("window after restart: %v", ms)
	}
	if err := module.Of[Config](m).Init(ctx, &Config{Partitions: -1}); err == nil {
		t.Error("Init accepted a bad config")
	}
}
