package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/outpost-edge/outpost/internal/fleet/proto"
	"github.com/outpost-edge/outpost/internal/ota/tuf"
)

// TestFleetApplierRules: a fleet rule set is compiled, written to rules.dir
// and loaded; one that does not compile, or that the store rejects together
// with the other files (the same rule version twice), changes nothing and
// the error says which file, line and column.
func TestFleetApplierRules(t *testing.T) {
	dir := t.TempDir()
	rules := filepath.Join(dir, "rules")
	os.MkdirAll(rules, 0o755)
	os.WriteFile(filepath.Join(rules, "local.sql"), []byte("CREATE RULE local AS SELECT * FROM 'a/#' DO REPUBLISH 'b';\n"), 0o644)
	path := filepath.Join(dir, "outpost.yaml")
	cfg := strings.Replace(agentConfig(dir, "    []"), "  users:\n    []\n", "  users: []\n", 1) + "rules: {dir: " + rules + "}\nfleet: {}\n"
	os.WriteFile(path, []byte(cfg), 0o600)
	a, logs := startAgent(t, path)
	if h := healthOf(a, "fleet"); !strings.Contains(h, "not enrolled") {
		t.Fatalf("fleet health without enrollment = %q", h)
	}
	ap := fleetApplier{a: a}
	spec := func(sql string) proto.Desired {
		b, _ := json.Marshal(map[string]string{"sql": sql})
		return proto.Desired{Kind: proto.KindRuleSet, Name: "alarms", Spec: b}
	}
	good := "CREATE RULE alarms AS SELECT temp FROM 'sensors/+/t' WHERE temp > 50 DO REPUBLISH 'alarms/x';\n"
	if err := ap.Apply(context.Background(), spec(good)); err != nil {
		t.Fatal(err, logs.String())
	}
	file := filepath.Join(rules, "fleet-alarms.sql")
	if b, _ := os.ReadFile(file); string(b) != good || !hasRule(a, "alarms") {
		t.Fatalf("rule file %q, loaded %v", b, hasRule(a, "alarms"))
	}
	// Does not compile: the error names the file, line and column.
	err := ap.Apply(context.Background(), spec("CREATE RULE alarms AS\nSELECT nope( FROM 'x';\n"))
	if err == nil || !strings.Contains(err.Error(), "fleet-alarms.sql:2:14") {
		t.Fatalf("bad rule = %v", err)
	}
	// Compiles alone, rejected with the others: rule "local" twice.
	err = ap.Apply(context.Background(), spec("CREATE RULE local AS SELECT * FROM 'c/#' DO REPUBLISH 'd';\n"))
	if err == nil || !strings.Contains(err.Error(), "local") {
		t.Fatalf("conflicting rule = %v", err)
	}
	if b, _ := os.ReadFile(file); string(b) != good || !hasRule(a, "alarms") {
		t.Fatalf("a rejected rule set changed the running one: %q", b)
	}
	if err := ap.Remove(context.Background(), proto.KindRuleSet, "alarms"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) || hasRule(a, "alarms") {
		t.Fatalf("removed rule set still there: %v %v", err, hasRule(a, "alarms"))
	}
	if err := ap.Apply(context.Background(), proto.Desired{Kind: proto.KindComponent, Name: "x", Spec: []byte(`{}`)}); err == nil {
		t.Fatal("an unsupported kind was accepted")
	}
}

func hasRule(a *Agent, name string) bool {
	for _, r := range a.Rules.Engine().Rules() {
		if r.Name == name {
			return true
		}
	}
	return false
}

func healthOf(a *Agent, module string) string {
	for _, h := range a.Health() {
		if h.Name == module {
			return h.State.String() + ": " + h.Detail
		}
	}
	return ""
}

// TestFleetConfigFragment: a config fragment is merged over the file and
// hot-reloaded (bob is admitted without a broker restart); an invalid one
// is refused with the fragment, line:column and field, and the running
// config stays; a file reload keeps the fragment; removing it undoes it.
func TestFleetConfigFragment(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "outpost.yaml")
	os.WriteFile(path, []byte(agentConfig(dir, fmt.Sprintf(aliceUser, aliceHash))+"fleet: {}\n"), 0o600)
	a, _ := startAgent(t, path)
	addr := a.Broker.Addr("tcp")
	ap := fleetApplier{a: a}
	frag := func(y string) proto.Desired {
		b, _ := json.Marshal(map[string]string{"yaml": y})
		return proto.Desired{Kind: proto.KindConfig, Name: "users", Spec: b}
	}
	ctx := context.Background()
	withBob := "broker:\n  users:\n" + fmt.Sprintf(aliceUser, aliceHash) + "\n" + fmt.Sprintf(bobUser, bobHash) + "\n"
	if err := ap.Apply(ctx, frag(withBob)); err != nil {
		t.Fatal(err)
	}
	if err := connect(addr, "bob", "bob-pw"); err != nil {
		t.Fatalf("bob refused after the fragment: %v", err)
	}
	if a.Broker.Addr("tcp") != addr {
		t.Fatal("broker restarted for a users-only fragment")
	}

	for _, tc := range []struct{ yaml, want string }{
		{"# bad\npipeline:\n  routes:\n    - {from: [\"data/#\"], to: [nosuch]}\n", "fleet config/users:4:"},
		{"broker:\n  userz: []\n", `fleet config/users:2:3: broker: unknown key "userz"`},
		{"fleet:\n  server: https://elsewhere\n", "fleet config/users:1:1: fleet: the fleet section is set on the gateway only"},
		{"broker: [\n", "invalid YAML"},
	} {
		err := ap.Apply(ctx, frag(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("fragment %q: err = %v, want %q", tc.yaml, err, tc.want)
		}
		if connect(addr, "bob", "bob-pw") != nil || len(a.Config().Pipeline.Routes) != 1 {
			t.Fatalf("a refused fragment changed the running config")
		}
	}
	if err := ap.Apply(ctx, proto.Desired{Kind: proto.KindConfig, Name: "x", Spec: []byte(`{"yml": "a: 1"}`)}); err == nil || !strings.Contains(err.Error(), "spec") {
		t.Fatalf("bad spec = %v", err)
	}

	// A file change is reloaded with the fragment still merged over it.
	os.WriteFile(path, []byte(strings.Replace(agentConfig(dir, fmt.Sprintf(aliceUser, aliceHash)), "level: info", "level: debug", 1)+"fleet: {}\n"), 0o600)
	waitUntil(t, "file reload applied", func() bool { return a.Config().Log.Level == "debug" })
	if err := connect(addr, "bob", "bob-pw"); err != nil {
		t.Fatalf("a file reload dropped the fragment: %v", err)
	}

	if err := ap.Remove(ctx, proto.KindConfig, "users"); err != nil {
		t.Fatal(err)
	}
	if err := connect(addr, "bob", "bob-pw"); err == nil {
		t.Fatal("bob still admitted after the fragment was removed")
	}
}

// TestFleetComponent: a fleet component's recipe is installed through the
// supervisor and observed (state, restarts); a recipe that does not parse
// or names another component changes nothing; removal stops it.
func TestFleetComponent(t *testing.T) {
	dir := t.TempDir()
	recipes := filepath.Join(dir, "components")
	os.MkdirAll(recipes, 0o755)
	cfg := fmt.Sprintf(`node_id: t
data_dir: %[1]s/data
telemetry: {address: "127.0.0.1:0"}
broker:
  listeners:
    - {type: tcp, address: "127.0.0.1:0"}
    - {type: unix, path: %[1]s/mqtt.sock}
supervisor: {recipes_dir: %[2]s, watch: false, grace_period: 1s, cgroup: {mode: none}}
fleet: {}
`, dir, recipes)
	path := filepath.Join(dir, "outpost.yaml")
	os.WriteFile(path, []byte(cfg), 0o600)
	a, _ := startAgent(t, path)
	ap := fleetApplier{a: a}
	ctx := context.Background()
	comp := func(y string) proto.Desired {
		b, _ := json.Marshal(map[string]string{"yaml": y})
		return proto.Desired{Kind: proto.KindComponent, Name: "probe", Spec: b}
	}
	good := "name: probe\nversion: 1.0.0\nlifecycle:\n  run:\n    exec: [/bin/sleep, \"1000\"]\n"
	if err := ap.Apply(ctx, comp(good)); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "probe running", func() bool { st, _, _, ok := ap.Observe(proto.KindComponent, "probe"); return ok && st == "running" })
	for _, tc := range []struct{ yaml, want string }{
		{"name: probe\nversion: one\n", "fleet-probe.yaml:2:10"},
		{"name: other\nversion: 1.0.0\nlifecycle:\n  run:\n    exec: [/bin/true]\n", `names component "other"`},
	} {
		if err := ap.Apply(ctx, comp(tc.yaml)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("recipe %q: err = %v, want %q", tc.yaml, err, tc.want)
		}
		if b, _ := os.ReadFile(filepath.Join(recipes, "fleet-probe.yaml")); string(b) != good {
			t.Fatalf("a refused recipe replaced the running one: %q", b)
		}
	}
	if err := ap.Remove(ctx, proto.KindComponent, "probe"); err != nil {
		t.Fatal(err)
	}
	if st, _, _, _ := ap.Observe(proto.KindComponent, "probe"); st != "missing" {
		t.Fatalf("removed component observed as %q", st)
	}
}

// TestFleetAgentVersion: without OTA the agent version is refused with the
// reason; with OTA the updater is pinned (kept in the fleet directory for
// the restart) and triggered, and Observe reports the result (here the
// repository is unreachable: failed, with the error); removal unpins.
func TestFleetAgentVersion(t *testing.T) {
	ctx := context.Background()
	ver := func(v string) proto.Desired {
		b, _ := json.Marshal(map[string]string{"version": v})
		return proto.Desired{Kind: proto.KindAgentVersion, Name: "outpost", Spec: b}
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "outpost.yaml")
	os.WriteFile(path, []byte(agentConfig(dir, fmt.Sprintf(aliceUser, aliceHash))+"fleet: {}\n"), 0o600)
	a, _ := startAgent(t, path)
	if err := (fleetApplier{a: a}).Apply(ctx, ver("1.4.0")); err == nil || !strings.Contains(err.Error(), "OTA is not enabled") {
		t.Fatalf("agent version without OTA = %v", err)
	}

	dir = t.TempDir()
	if _, err := tuf.InitRepo(filepath.Join(dir, "repo"), filepath.Join(dir, "keys"), true, nil); err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(dir, "outpost.yaml")
	os.WriteFile(path, []byte(agentConfig(dir, fmt.Sprintf(aliceUser, aliceHash))+fmt.Sprintf(
		"fleet: {}\nota: {enabled: true, url: \"http://127.0.0.1:1\", root: %s/repo/metadata/1.root.json, staging_dir: %s/ota, interval: 1h, timeouts: {retries: 1}}\n", dir, dir)), 0o600)
	a, _ = startAgent(t, path)
	ap := fleetApplier{a: a}
	for _, tc := range []struct{ spec, want string }{{`{"version": "v1.4.0"}`, "spec.version"}, {`{"versoin": "1.4.0"}`, "spec:"}} {
		if err := ap.Apply(ctx, proto.Desired{Kind: proto.KindAgentVersion, Name: "outpost", Spec: []byte(tc.spec)}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("spec %s = %v, want %q", tc.spec, err, tc.want)
		}
	}
	if err := ap.Apply(ctx, ver("1.4.0")); err != nil {
		t.Fatal(err)
	}
	if a.OTA.Target() != "1.4.0" {
		t.Fatalf("updater pin = %q", a.OTA.Target())
	}
	if b, _ := os.ReadFile(filepath.Join(a.Config().Fleet.Dir, "agentversion")); strings.TrimSpace(string(b)) != "1.4.0" {
		t.Fatalf("pin file = %q", b)
	}
	waitUntil(t, "the failed update observed", func() bool {
		st, _, reason, ok := ap.Observe(proto.KindAgentVersion, "outpost")
		return ok && st == "failed" && reason != ""
	})
	if err := ap.Remove(ctx, proto.KindAgentVersion, "outpost"); err != nil {
		t.Fatal(err)
	}
	if _, _, _, ok := ap.Observe(proto.KindAgentVersion, "outpost"); ok || a.OTA.Target() != "" {
		t.Fatal("still pinned after removal")
	}
	if !strings.Contains(metric(t, a, `outpost_ota_running_version_info{version="dev"}`), "1") {
		t.Fatal("no running-version metric")
	}
}

// TestFleetMeasureRuleErrors: the status of a fleet rule set counts its
// rules' run-time errors since it was applied (what the rollout gate
// maxRuleErrors reads): three messages that divide by zero count 3; a new
// revision of the same rule starts again from 0; removing it forgets it.
func TestFleetMeasureRuleErrors(t *testing.T) {
	dir := t.TempDir()
	rules := filepath.Join(dir, "rules")
	os.MkdirAll(rules, 0o755)
	path := filepath.Join(dir, "outpost.yaml")
	dev := fmt.Sprintf(`    - {username: dev, password_hash: "%s", acl: [{topic: "#", access: all}]}`, aliceHash)
	os.WriteFile(path, []byte(agentConfig(dir, dev)+"rules: {dir: "+rules+"}\nfleet: {}\n"), 0o600)
	a, logs := startAgent(t, path)
	ap := fleetApplier{a: a}
	spec := func(sql string) proto.Desired {
		b, _ := json.Marshal(map[string]string{"sql": sql})
		return proto.Desired{Kind: proto.KindRuleSet, Name: "ratio", Spec: b}
	}
	ctx := context.Background()
	if err := ap.Apply(ctx, spec("CREATE RULE ratio AS SELECT temp / zero AS r FROM 'm/+' DO REPUBLISH 'o/r';\n")); err != nil {
		t.Fatal(err, logs.String())
	}
	if e, q, q0, ok := ap.Measure(proto.KindRuleSet, "ratio"); !ok || e != 0 || q != 0 || q0 != 0 {
		t.Fatalf("just applied: errors %d queue %d start %d ok %v", e, q, q0, ok)
	}
	d := dialDevice(t, a.Broker.Addr("tcp"), "d1")
	for i := 0; i < 3; i++ {
		d.publish(t, "m/d1", `{"temp": 20, "zero": 0}`)
	}
	waitUntil(t, "3 errors counted", func() bool {
		e, _, _, _ := ap.Measure(proto.KindRuleSet, "ratio")
		return e == 3
	})
	// A new revision: counted from its apply.
	if err := ap.Apply(ctx, spec("CREATE RULE ratio AS SELECT temp / zero AS r FROM 'm/+' DO REPUBLISH 'o/r2';\n")); err != nil {
		t.Fatal(err)
	}
	if e, _, _, _ := ap.Measure(proto.KindRuleSet, "ratio"); e != 0 {
		t.Fatalf("a new revision starts with %d errors", e)
	}
	d.publish(t, "m/d1", `{"temp": 20, "zero": 0}`)
	waitUntil(t, "1 error after the new revision", func() bool {
		e, _, _, _ := ap.Measure(proto.KindRuleSet, "ratio")
		return e == 1
	})
	if err := ap.Remove(ctx, proto.KindRuleSet, "ratio"); err != nil {
		t.Fatal(err)
	}
	if _, _, q0, _ := ap.Measure(proto.KindRuleSet, "ratio"); q0 != -1 {
		t.Fatalf("a removed slot still has a baseline (%d)", q0)
	}
}

// TestNetpolObjectNeedsSection: a netpol object on a gateway whose config
// file has no netpol: section is refused saying what to add (the module
// is built at start only), and the running config is unchanged.
func TestNetpolObjectNeedsSection(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "outpost.yaml")
	os.WriteFile(path, []byte(agentConfig(dir, fmt.Sprintf(aliceUser, aliceHash))+"fleet: {}\n"), 0o600)
	a, _ := startAgent(t, path)
	ap := fleetApplier{a: a}
	spec := []byte(`{"interfaces":[{"name":"eth0","rules":[{"action":"allow"}]}]}`)
	err := ap.Apply(context.Background(), proto.Desired{Kind: proto.KindNetpol, Name: "plant", Spec: spec})
	if err == nil || !strings.Contains(err.Error(), "no netpol: section") {
		t.Fatalf("netpol object without a netpol section: %v", err)
	}
	if a.Config().Netpol != nil {
		t.Fatal("the refused netpol object changed the config")
	}
	if err := ap.Apply(context.Background(), proto.Desired{Kind: proto.KindNetpol, Name: "plant", Spec: []byte(`[]`)}); err == nil || !strings.Contains(err.Error(), "spec") {
		t.Fatalf("bad spec: %v", err)
	}
	if !(fleetApplier{}).ReapplyAtStart(proto.KindNetpol) || !(fleetApplier{}).ReapplyAtStart(proto.KindConfig) || (fleetApplier{}).ReapplyAtStart(proto.KindRuleSet) {
		t.Fatal("ReapplyAtStart: config fragments and netpol objects are the in-memory kinds")
	}
}
