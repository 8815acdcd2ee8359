package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/server"
	"github.com/outpost-edge/outpost/internal/fleet/store"
)

// proxy forwards TCP to a target and can cut every open connection (a
// network cut as the agents see it: the socket closes under them).
type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
}

func startProxy(t *testing.T, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go func() { io.Copy(u, c); u.Close() }()
			go func() { io.Copy(c, u); c.Close() }()
		}
	}()
	t.Cleanup(func() { ln.Close(); p.cut() })
	return p
}

func (p *proxy) cut() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.conns)
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
	return n / 2
}

type serverProc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// startServer runs `outpost-server run`; it returns once it listens.
func startServer(t *testing.T, data, listen string, extra ...string) (*serverProc, string) {
	t.Helper()
	cmd := exec.Command(serverBin, append([]string{"run", "--data", data, "--listen", listen, "--keepalive", "1s"}, extra...)...)
	out, _ := cmd.StdoutPipe()
	logf, _ := os.OpenFile(filepath.Join(data, "..", "server.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sp := &serverProc{cmd: cmd, done: make(chan struct{})}
	tokc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if m := regexp.MustCompile(`OUTPOST_SERVER_TOKEN=(\S+)`).FindStringSubmatch(sc.Text()); m != nil {
				tokc <- m[1]
			}
		}
	}()
	go func() { cmd.Wait(); close(sp.done) }()
	t.Cleanup(func() { sp.kill() })
	waitFor(t, 15*time.Second, "the server listening", func() bool {
		c, err := net.Dial("tcp", listen)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	// The token line is printed before listening (first start only).
	select {
	case tok := <-tokc:
		return sp, tok
	case <-time.After(200 * time.Millisecond):
	}
	return sp, ""
}

func (sp *serverProc) kill() {
	sp.cmd.Process.Signal(syscall.SIGKILL)
	<-sp.done
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestFleetEndToEnd: a real outpost-server process and three real outpost
// processes. Enroll, push a rule set, see it applied and reported; kill -9
// and restart the server, cut every connection: the gateways converge each
// time; a rule that does not compile changes nothing and is reported.
func TestFleetEndToEnd(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "server")
	os.MkdirAll(data, 0o700)
	listen := freeAddr(t)
	srv, admin := startServer(t, data, listen)
	if !strings.HasPrefix(admin, "opa_") {
		b, _ := os.ReadFile(filepath.Join(dir, "server.log"))
		t.Fatalf("no admin token printed; log:\n%s", b)
	}
	px := startProxy(t, listen)
	url := "https://" + px.ln.Addr().String()
	env := []string{"OUTPOST_SERVER=https://" + listen, "OUTPOST_SERVER_CA=" + filepath.Join(data, "ca.pem"), "OUTPOST_SERVER_TOKEN=" + admin}
	cli := func(args ...string) string {
		t.Helper()
		out, errOut, code := run(t, env, serverBin, args...)
		if code != 0 {
			t.Fatalf("outpost-server %v: exit %d\n%s%s", args, code, out, errOut)
		}
		return out
	}

	const n = 3
	var agents []*exec.Cmd
	rulesDirs := make([]string, n)
	for i := range n {
		gdir := filepath.Join(dir, fmt.Sprintf("gw%d", i))
		rulesDirs[i] = filepath.Join(gdir, "rules")
		cfg := fmt.Sprintf(`node_id: gw%d
data_dir: %s/data
telemetry: {address: "127.0.0.1:0"}
broker:
  listeners: [{type: tcp, address: "127.0.0.1:0"}, {type: unix, path: %s/mqtt.sock}]
  allow_anonymous: true
  anonymous_acl: [{topic: "#", access: all}]
rules: {dir: %s}
supervisor: {recipes_dir: %s/components, state_dir: %s/cstate, log_dir: %s/clogs, cgroup: {mode: none}, grace_period: 1s}
fleet: {reconnect_max: 1s}
`, i, gdir, gdir, rulesDirs[i], gdir, gdir, gdir)
		os.MkdirAll(filepath.Join(gdir, "components"), 0o700)
		path := filepath.Join(gdir, "outpost.yaml")
		os.WriteFile(path, []byte(cfg), 0o600)
		site := "plant1"
		if i > 0 {
			site = "plant2"
		}
		tok := strings.TrimSpace(cli("token", "create", "--labels", "site="+site, "--expires", "10m"))
		if out, errOut, code := run(t, nil, agentBin, "enroll", "--config", path, "--server", url, "--ca", filepath.Join(data, "ca.pem"), "--token", tok); code != 0 {
			t.Fatalf("enroll: %d %s %s", code, out, errOut)
		}
		// The token is single-use.
		if _, errOut, code := run(t, nil, agentBin, "enroll", "--data", filepath.Join(gdir, "other"), "--id", "again", "--server", url, "--ca", filepath.Join(data, "ca.pem"), "--token", tok); code == 0 || !strings.Contains(errOut, "already used") {
			t.Fatalf("a reused token enrolled: %d %s", code, errOut)
		}
		cmd := exec.Command(agentBin, "run", "--config", path)
		logf, _ := os.Create(filepath.Join(gdir, "agent.log"))
		cmd.Stderr = logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		agents = append(agents, cmd)
	}
	t.Cleanup(func() {
		for _, a := range agents {
			a.Process.Signal(syscall.SIGTERM)
			a.Wait()
		}
		if t.Failed() {
			for i := range n {
				b, _ := os.ReadFile(filepath.Join(dir, fmt.Sprintf("gw%d", i), "agent.log"))
				t.Logf("gw%d log:\n%s", i, tail(string(b), 3000))
			}
			b, _ := os.ReadFile(filepath.Join(dir, "server.log"))
			t.Logf("server log:\n%s", tail(string(b), 3000))
		}
	})

	gateways := func() []store.Gateway {
		var gws []store.Gateway
		if err := json.Unmarshal([]byte(cli("gateways", "list", "--json")), &gws); err != nil {
			t.Fatal(err)
		}
		return gws
	}
	// converged: every gateway (matching site) reports slot at rv with
	// applied (or the error containing errText).
	converged := func(what string, rv int64, sel map[string]bool, errText string) {
		t.Helper()
		waitFor(t, 20*time.Second, what, func() bool {
			gws := gateways()
			ok := 0
			for _, g := range gws {
				if !sel[g.Labels["site"]] {
					continue
				}
				for _, c := range g.Status.Conditions {
					if c.Kind == "ruleset" && c.Name == "alarms" && c.ResourceVersion == rv && (errText == "" && c.Applied || errText != "" && strings.Contains(c.Error, errText)) {
						ok++
					}
				}
			}
			return ok == countSites(gws, sel)
		})
	}
	all := map[string]bool{"plant1": true, "plant2": true}

	waitFor(t, 20*time.Second, "three connected gateways", func() bool {
		c := 0
		for _, g := range gateways() {
			if g.Connected {
				c++
			}
		}
		return c == n
	})
	rv := putRule(t, cli, dir, "alarms", 1)
	converged("v1 applied everywhere", rv, all, "")
	for i := range n {
		if b, err := os.ReadFile(filepath.Join(rulesDirs[i], "fleet-alarms.sql")); err != nil || !strings.Contains(string(b), "v1") {
			t.Fatalf("gw%d rule file: %s %v", i, b, err)
		}
	}

	// kill -9 the server, start it again on the same address and data.
	srv.kill()
	srv, _ = startServer(t, data, listen)
	rv = putRule(t, cli, dir, "alarms", 2)
	converged("v2 after the server restart", rv, all, "")

	// Cut every connection between the gateways and the server.
	if c := px.cut(); c < n {
		t.Fatalf("cut %d connections, want >= %d", c, n)
	}
	rv = putRule(t, cli, dir, "alarms", 3)
	converged("v3 after the network cut", rv, all, "")

	// A rule that does not compile: reported with file:line:col, the
	// running v3 stays on disk and in force.
	bad := filepath.Join(dir, "bad.sql")
	os.WriteFile(bad, []byte("CREATE RULE alarms AS\nSELECT nope( FROM 'a/b';\n"), 0o600)
	out := cli("objects", "put", "--kind", "ruleset", "--id", "alarms", "--file", bad, "--json")
	var o struct{ ResourceVersion int64 }
	json.Unmarshal([]byte(out), &o)
	converged("the compile error reported", o.ResourceVersion, all, "fleet-alarms.sql:2:14")
	for i := range n {
		if b, _ := os.ReadFile(filepath.Join(rulesDirs[i], "fleet-alarms.sql")); !strings.Contains(string(b), "v3") {
			t.Fatalf("gw%d: a rejected rule changed the file: %s", i, b)
		}
	}

	// Rollouts through the CLI with real gateways: a good rule set goes to
	// the canary (gw0, plant1) first, then the rest.
	rollout := func(name, sqlText string) server.Rollout {
		t.Helper()
		f := filepath.Join(dir, name+".json")
		b, _ := json.Marshal(map[string]any{"name": name, "object": map[string]string{"kind": "ruleset", "name": "alarms"},
			"spec": map[string]string{"sql": sqlText}, "selector": "site in (plant1,plant2)",
			"waves": []map[string]any{{"name": "canary", "selector": "site=plant1"}, {"name": "all", "percent": 100}},
			"soak":  "0s", "deadline": "1m", "gates": map[string]any{"maxFailed": 0}, "autoRollback": true})
		os.WriteFile(f, b, 0o600)
		var r server.Rollout
		if err := json.Unmarshal([]byte(cli("rollouts", "create", "-f", f, "--json")), &r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	state := func(name string) server.Rollout {
		var r server.Rollout
		if err := json.Unmarshal([]byte(cli("rollouts", "get", name, "--json")), &r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	good := rollout("alarms-v4", "-- v4\nCREATE RULE alarms AS SELECT temp FROM 'sensors/+/t' WHERE temp > 54 DO REPUBLISH 'alarms/x';\n")
	waitFor(t, 30*time.Second, "rollout alarms-v4 done", func() bool { return state("alarms-v4").State == "done" })
	converged("v4 rolled out everywhere", good.ToRevision, all, "")
	// A rule that does not compile on the gateway: the canary reports the
	// error, the rollout halts in the first wave and rolls back, and no
	// gateway beyond the canary ever receives it.
	bad2 := rollout("alarms-bad", "CREATE RULE alarms AS\nSELECT broken( FROM 'a/b';\n")
	var r server.Rollout
	waitFor(t, 30*time.Second, "rollout alarms-bad rolled back", func() bool { r = state("alarms-bad"); return r.State == "rolledback" })
	if len(r.Failing) != 1 || r.Failing[0].Gateway != "gw0" || !strings.Contains(r.Failing[0].Detail, "fleet-alarms.sql:2:") || r.Waves[1].State != "pending" {
		t.Fatalf("rollout: %+v", r)
	}
	for _, g := range gateways() {
		for _, c := range g.Status.Conditions {
			if c.Name == "alarms" && c.ResourceVersion >= bad2.ToRevision && g.ID != "gw0" {
				t.Fatalf("%s beyond the canary received the broken revision: %+v", g.ID, c)
			}
		}
	}
	converged("everyone back at v4", good.ToRevision, all, "")
	for i := range n {
		if b, _ := os.ReadFile(filepath.Join(rulesDirs[i], "fleet-alarms.sql")); !strings.Contains(string(b), "v4") {
			t.Fatalf("gw%d runs %s", i, b)
		}
	}
	// A config fragment: merged over each gateway's file and hot-reloaded;
	// an invalid one is reported with the fragment, line:column and field
	// and the running config stays.
	condOf := func(g store.Gateway, kind, name string) (c econd) {
		for _, x := range g.Status.Conditions {
			if x.Kind == kind && x.Name == name {
				c.ok, c.rv, c.err, c.appl = true, x.ResourceVersion, x.Error, x.Applied
			}
		}
		return c
	}
	putConfig := func(yaml string) int64 {
		f := filepath.Join(dir, "frag.yaml")
		os.WriteFile(f, []byte(yaml), 0o600)
		var o struct{ ResourceVersion int64 }
		json.Unmarshal([]byte(cli("objects", "put", "--kind", "config", "--id", "queue", "--file", f, "--json")), &o)
		return o.ResourceVersion
	}
	rv = putConfig("broker:\n  limits:\n    max_inflight: 7\n")
	waitFor(t, 20*time.Second, "the config fragment applied everywhere", func() bool {
		ok := 0
		for _, g := range gateways() {
			if c := condOf(g, "config", "queue"); c.rv == rv && c.appl {
				ok++
			}
		}
		return ok == n
	})
	for i := range n {
		b, _ := os.ReadFile(filepath.Join(dir, fmt.Sprintf("gw%d", i), "agent.log"))
		if !strings.Contains(string(b), "config reloaded") {
			t.Fatalf("gw%d: the fragment was not hot-reloaded:\n%s", i, tail(string(b), 2000))
		}
	}
	rv = putConfig("broker:\n  limits:\n    max_inflight: -1\n")
	waitFor(t, 20*time.Second, "the invalid fragment reported", func() bool {
		ok := 0
		for _, g := range gateways() {
			if c := condOf(g, "config", "queue"); c.rv == rv && !c.appl && strings.Contains(c.err, "fleet config/queue:3:19: broker.limits.max_inflight: must be between 1 and 65535") {
				ok++
			}
		}
		return ok == n
	})

	// A component: installed from its recipe and reported running; a
	// recipe that does not parse is reported with file:line:col and the
	// running one stays; one that crash-loops is reported broken with its
	// restarts (what a rollout gates on); removing the slot removes it.
	putComponent := func(recipe string) int64 {
		f := filepath.Join(dir, "probe.yaml")
		os.WriteFile(f, []byte(recipe), 0o600)
		spec, _ := json.Marshal(map[string]string{"yaml": recipe})
		var o struct{ ResourceVersion int64 }
		json.Unmarshal([]byte(cli("objects", "put", "--kind", "component", "--id", "probe", "--spec", string(spec), "--json")), &o)
		return o.ResourceVersion
	}
	waitComponent := func(what string, rv int64, ok func(c econd, g store.Gateway) bool) {
		t.Helper()
		waitFor(t, 30*time.Second, what, func() bool {
			n := 0
			for _, g := range gateways() {
				if c := condOf(g, "component", "probe"); c.rv == rv && ok(c, g) {
					n++
				}
			}
			return n == len(agents)
		})
	}
	stateOf := func(g store.Gateway) (string, int) {
		for _, x := range g.Status.Conditions {
			if x.Kind == "component" && x.Name == "probe" {
				return x.State, x.Restarts
			}
		}
		return "", 0
	}
	rv = putComponent("name: probe\nversion: 1.0.0\nlifecycle:\n  run:\n    exec: [/bin/sleep, \"1000\"]\n")
	waitComponent("the component running everywhere", rv, func(c econd, g store.Gateway) bool {
		st, _ := stateOf(g)
		return c.appl && st == "running"
	})
	rv = putComponent("name: probe\nversion: one\nlifecycle:\n  run:\n    exec: [/bin/sleep, \"1000\"]\n")
	waitComponent("the bad recipe reported", rv, func(c econd, g store.Gateway) bool {
		st, _ := stateOf(g)
		return !c.appl && strings.Contains(c.err, "fleet-probe.yaml:2:10") && st == ""
	})
	for i := range n {
		b, _ := os.ReadFile(filepath.Join(dir, fmt.Sprintf("gw%d", i), "components", "fleet-probe.yaml"))
		if !strings.Contains(string(b), "1.0.0") {
			t.Fatalf("gw%d: a rejected recipe replaced the running one: %s", i, b)
		}
	}
	rv = putComponent("name: probe\nversion: 1.0.1\nlifecycle:\n  run:\n    exec: [/bin/sh, -c, \"exit 3\"]\n" +
		"restart: {policy: on-failure, initial_backoff: 50ms, max_backoff: 100ms, max_restarts: 2, window: 1m}\n")
	waitComponent("the crash-looping component reported broken", rv, func(c econd, g store.Gateway) bool {
		st, restarts := stateOf(g)
		return c.appl && st == "broken" && restarts == 2 && g.Status.Health == "degraded"
	})
	cli("objects", "delete", "component", "probe")
	waitFor(t, 20*time.Second, "the component removed", func() bool {
		for _, g := range gateways() {
			if condOf(g, "component", "probe").ok {
				return false
			}
		}
		for i := range n {
			if _, err := os.Stat(filepath.Join(dir, fmt.Sprintf("gw%d", i), "components", "fleet-probe.yaml")); err == nil {
				return false
			}
		}
		return true
	})

	// Revoke gw0: its stream is closed and it is refused from then on.
	cli("gateways", "revoke", "gw0")
	waitFor(t, 10*time.Second, "gw0 disconnected", func() bool {
		for _, g := range gateways() {
			if g.ID == "gw0" {
				return !g.Connected
			}
		}
		return false
	})
	_ = srv
}

// econd is one gateway condition as the e2e test checks it.
type econd struct {
	ok   bool
	rv   int64
	err  string
	appl bool
}

func countSites(gws []store.Gateway, sel map[string]bool) int {
	n := 0
	for _, g := range gws {
		if sel[g.Labels["site"]] {
			n++
		}
	}
	return n
}

func putRule(t *testing.T, cli func(...string) string, dir, name string, version int) int64 {
	t.Helper()
	f := filepath.Join(dir, name+".sql")
	os.WriteFile(f, []byte(fmt.Sprintf("-- v%d\nCREATE RULE %s AS SELECT temp FROM 'sensors/+/t' WHERE temp > %d DO REPUBLISH 'alarms/x';\n", version, name, 50+version)), 0o600)
	out := cli("objects", "put", "--kind", "ruleset", "--id", name, "--file", f, "--json")
	var o struct{ ResourceVersion int64 }
	if err := json.Unmarshal([]byte(out), &o); err != nil || o.ResourceVersion == 0 {
		t.Fatalf("objects put: %s %v", out, err)
	}
	return o.ResourceVersion
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

var _ = context.Background
