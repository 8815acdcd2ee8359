package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"golang.org/x/crypto/bcrypt"

	"github.com/outpost-edge/outpost/internal/fleet/twin"
)

// device is an MQTT client of one device on the gateway's broker that
// records what arrives on its twin topics.
type device struct {
	t    *testing.T
	id   string
	c    *paho.Client
	mu   sync.Mutex
	msgs map[string][]string // topic suffix (get/accepted, update/delta, ...) -> payloads
}

func dialDevice(t *testing.T, ctx context.Context, addr, user string) *device {
	t.Helper()
	d := &device{t: t, id: user, msgs: map[string][]string{}}
	var conn net.Conn
	var err error
	waitFor(t, 15*time.Second, "the gateway's broker", func() bool {
		conn, err = net.DialTimeout("tcp", addr, time.Second)
		return err == nil
	})
	d.c = paho.NewClient(paho.ClientConfig{ClientID: user, Conn: conn, OnPublishReceived: []func(paho.PublishReceived) (bool, error){
		func(pr paho.PublishReceived) (bool, error) {
			d.mu.Lock()
			k := strings.TrimPrefix(pr.Packet.Topic, "$outpost/twin/")
			d.msgs[k] = append(d.msgs[k], string(pr.Packet.Payload))
			d.mu.Unlock()
			return true, nil
		}}})
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ca, err := d.c.Connect(cctx, &paho.Connect{ClientID: user, KeepAlive: 30, CleanStart: true, Username: user, UsernameFlag: true, Password: []byte("pw-" + user), PasswordFlag: true})
	if err != nil || ca.ReasonCode != 0 {
		t.Fatalf("device %s connect: %v %+v", user, err, ca)
	}
	go func() { <-ctx.Done(); conn.Close() }()
	sa, err := d.c.Subscribe(cctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{
		{Topic: "$outpost/twin/" + user + "/get/+", QoS: 1}, {Topic: "$outpost/twin/" + user + "/update/+", QoS: 1}}})
	if err != nil || sa.Reasons[0] >= 0x80 || sa.Reasons[1] >= 0x80 {
		t.Fatalf("device %s subscribe: %v %+v", user, err, sa)
	}
	return d
}

func (d *device) publish(ctx context.Context, dev, op, payload string) byte {
	d.t.Helper()
	r, err := d.c.Publish(ctx, &paho.Publish{Topic: "$outpost/twin/" + dev + "/" + op, QoS: 1, Payload: []byte(payload)})
	if err != nil {
		d.t.Fatalf("device %s publish %s/%s: %v", d.id, dev, op, err)
	}
	return r.ReasonCode
}

// await waits for the n-th message (1-based) on suffix and returns it.
func (d *device) await(suffix string, n int) string {
	d.t.Helper()
	var out string
	waitFor(d.t, 15*time.Second, fmt.Sprintf("%s: message %d on %s", d.id, n, suffix), func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		if len(d.msgs[d.id+"/"+suffix]) >= n {
			out = d.msgs[d.id+"/"+suffix][n-1]
			return true
		}
		return false
	})
	return out
}

func (d *device) count(suffix string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.msgs[d.id+"/"+suffix])
}

// TestTwinsEndToEnd: a real outpost-server, a real outpost gateway and
// MQTT devices on its broker. A desired change reaches the device as a
// delta; reported updates reach the server; with the server down the
// gateway answers gets from its copy and accepts (queues) updates, rejects
// a stale version with the reason; kill -9 of the gateway right after an
// accepted update loses nothing: after the restart the gateway still has
// it and, once the server is back, the server has every update. A device
// cannot touch another device's twin (per-user ACL with %u).
func TestTwinsEndToEnd(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "server")
	os.MkdirAll(data, 0o700)
	listen := freeAddr(t)
	srv, admin := startServer(t, data, listen)
	env := []string{"OUTPOST_SERVER=https://" + listen, "OUTPOST_SERVER_CA=" + filepath.Join(data, "ca.pem"), "OUTPOST_SERVER_TOKEN=" + admin}
	cli := func(args ...string) (string, string, int) {
		t.Helper()
		return run(t, env, serverBin, args...)
	}
	must := func(args ...string) string {
		t.Helper()
		out, errOut, code := cli(args...)
		if code != 0 {
			t.Fatalf("outpost-server %v: exit %d\n%s%s", args, code, out, errOut)
		}
		return out
	}
	serverTwin := func(dev string) (twin.Twin, bool) {
		out, _, code := cli("twins", "get", "gw0", dev, "--json")
		var tw twin.Twin
		return tw, code == 0 && json.Unmarshal([]byte(out), &tw) == nil
	}

	gdir := filepath.Join(dir, "gw0")
	os.MkdirAll(gdir, 0o700)
	mqttAddr := freeAddr(t)
	var users strings.Builder
	for _, u := range []string{"dev-a", "dev-b"} {
		h, _ := bcrypt.GenerateFromPassword([]byte("pw-"+u), 4)
		fmt.Fprintf(&users, "    - {username: %s, password_hash: '%s', client_id_pattern: '%%u'}\n", u, h)
	}
	cfg := fmt.Sprintf(`node_id: gw0
data_dir: %s/data
telemetry: {address: "127.0.0.1:0"}
broker:
  listeners: [{type: tcp, address: "%s"}]
  users:
%s  # Every device user: its own twin only (%%u is the authenticated username).
  anonymous_acl: []
fleet: {reconnect_max: 1s}
`, gdir, mqttAddr, users.String())
	// The per-user ACL is the same for every device.
	acl := `acl: [{topic: "$outpost/twin/%u/get", access: publish}, {topic: "$outpost/twin/%u/update", access: publish},
        {topic: "$outpost/twin/%u/get/+", access: subscribe}, {topic: "$outpost/twin/%u/update/+", access: subscribe}]`
	cfg = strings.ReplaceAll(cfg, "client_id_pattern: '%u'}", "client_id_pattern: '%u',\n       "+acl+"}")
	path := filepath.Join(gdir, "outpost.yaml")
	os.WriteFile(path, []byte(cfg), 0o600)
	tok := strings.TrimSpace(must("token", "create", "--expires", "10m"))
	if out, errOut, code := run(t, nil, agentBin, "enroll", "--config", path, "--server", "https://"+listen, "--ca", filepath.Join(data, "ca.pem"), "--token", tok); code != 0 {
		t.Fatalf("enroll: %d %s %s", code, out, errOut)
	}
	var agent *exec.Cmd
	startAgent := func() {
		agent = exec.Command(agentBin, "run", "--config", path)
		logf, _ := os.OpenFile(filepath.Join(gdir, "agent.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		agent.Stderr = logf
		if err := agent.Start(); err != nil {
			t.Fatal(err)
		}
	}
	startAgent()
	t.Cleanup(func() {
		agent.Process.Signal(syscall.SIGTERM)
		agent.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(gdir, "agent.log"))
			t.Logf("agent log:\n%s", tail(string(b), 4000))
			b, _ = os.ReadFile(filepath.Join(dir, "server.log"))
			t.Logf("server log:\n%s", tail(string(b), 3000))
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := dialDevice(t, ctx, mqttAddr, "dev-a")
	b := dialDevice(t, ctx, mqttAddr, "dev-b")

	// Desired from the server -> delta to the device.
	waitFor(t, 20*time.Second, "the gateway connected", func() bool {
		return strings.Contains(must("gateways", "get", "gw0", "--json"), `"connected": true`)
	})
	must("twins", "set", "gw0", "dev-a", "--desired", `{"fan": "on", "speed": 1200}`, "--version", "0")
	if d := a.await("update/delta", 1); !strings.Contains(d, `"state":{"fan":"on","speed":1200}`) || !strings.Contains(d, `"desiredVersion":1`) {
		t.Fatalf("delta: %s", d)
	}
	// A stale desired version on the server: 409, exit 1, nothing sent.
	if _, errOut, code := cli("twins", "set", "gw0", "dev-a", "--desired", `{"fan": "off"}`, "--version", "0"); code != 1 || !strings.Contains(errOut, "desired version 1, not 0") {
		t.Fatalf("stale twins set: exit %d %s", code, errOut)
	}
	// Reported from the device -> accepted -> on the server.
	a.publish(ctx, "dev-a", "update", `{"state":{"reported":{"fan":"on"}},"desiredVersion":1,"clientToken":"c1"}`)
	if acc := a.await("update/accepted", 1); !strings.Contains(acc, `"reportedVersion":1`) || !strings.Contains(acc, `"clientToken":"c1"`) {
		t.Fatalf("accepted: %s", acc)
	}
	waitFor(t, 15*time.Second, "reported v1 on the server", func() bool {
		tw, ok := serverTwin("dev-a")
		return ok && tw.ReportedVersion == 1
	})
	// Bad payload and a device writing desired: rejected with the field.
	a.publish(ctx, "dev-a", "update", `{"state":{"reported":[1]}}`)
	if r := a.await("update/rejected", 1); !strings.Contains(r, `"code":400`) || !strings.Contains(r, "state.reported: must be a JSON object") {
		t.Fatalf("rejected: %s", r)
	}
	// ACL: dev-a may not publish on dev-b's twin (QoS 1: refused), dev-b
	// sees nothing.
	if r, err := a.c.Publish(ctx, &paho.Publish{Topic: "$outpost/twin/dev-b/update", QoS: 1, Payload: []byte(`{"state":{"reported":{"hacked":true}}}`)}); err == nil && r.ReasonCode < 0x80 {
		t.Fatalf("dev-a publishing on dev-b's twin: reason code %#x, want a refusal", r.ReasonCode)
	}

	// The server goes away: gets are answered locally, updates queued.
	srv.kill()
	a.publish(ctx, "dev-a", "get", `{"clientToken":"g1"}`)
	if g := a.await("get/accepted", 1); !strings.Contains(g, `"desired":{"fan":"on","speed":1200}`) || !strings.Contains(g, `"delta":{"speed":1200}`) || !strings.Contains(g, `"reportedVersion":1`) {
		t.Fatalf("offline get: %s", g)
	}
	for i := 2; i <= 4; i++ {
		a.publish(ctx, "dev-a", "update", fmt.Sprintf(`{"state":{"reported":{"speed":%d}},"reportedVersion":%d}`, 1000+i, i-1))
		if acc := a.await("update/accepted", i); !strings.Contains(acc, fmt.Sprintf(`"reportedVersion":%d`, i)) {
			t.Fatalf("offline update %d: %s", i, acc)
		}
	}
	a.publish(ctx, "dev-a", "update", `{"state":{"reported":{"speed":1}},"reportedVersion":2}`)
	if r := a.await("update/rejected", 2); !strings.Contains(r, `"code":409`) || !strings.Contains(r, "reportedVersion 2 is stale: the twin's reported version is 4") {
		t.Fatalf("stale reported version: %s", r)
	}
	if b.count("get/accepted")+b.count("update/accepted") != 0 {
		t.Fatal("dev-b received another device's answers")
	}

	// kill -9 right after the accepted update, restart offline: the
	// gateway still has version 4.
	agent.Process.Signal(syscall.SIGKILL)
	agent.Wait()
	startAgent()
	a2 := dialDevice(t, ctx, mqttAddr, "dev-a")
	// The broker may take the connection before the twin service
	// subscribed (a get published then is dropped): ask until answered.
	waitFor(t, 30*time.Second, "a get answered after the restart", func() bool {
		n := a2.count("get/accepted")
		a2.publish(ctx, "dev-a", "get", `{}`)
		for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			if a2.count("get/accepted") > n {
				return true
			}
		}
		return false
	})
	if g := a2.await("get/accepted", 1); !strings.Contains(g, `"reportedVersion":4`) || !strings.Contains(g, `"speed":1004`) {
		t.Fatalf("get after kill -9: %s", g)
	}

	// The server is back: every queued update arrives, in order.
	srv, _ = startServer(t, data, listen)
	waitFor(t, 30*time.Second, "reported v4 on the server", func() bool {
		tw, ok := serverTwin("dev-a")
		return ok && tw.ReportedVersion == 4
	})
	tw, _ := serverTwin("dev-a")
	var rep, delta map[string]any
	json.Unmarshal(tw.Reported, &rep)
	json.Unmarshal(tw.Delta, &delta)
	if rep["speed"] != float64(1004) || rep["fan"] != "on" || len(delta) != 1 || delta["speed"] != float64(1200) {
		t.Fatalf("server twin after the sync: %+v reported %s delta %s", tw, tw.Reported, tw.Delta)
	}
	if _, ok := serverTwin("dev-b"); ok {
		t.Fatal("dev-b has a twin: another device's publish reached it")
	}

	// The gateway loses its twin directory (a wiped data dir, a new
	// disk): on the next start it reads its twins back from the server
	// before it accepts an update (503 until then), so the device's next
	// update is reported version 5, which the server takes. Without the
	// re-seed it would be version 1, which the server ignores as a replay.
	agent.Process.Signal(syscall.SIGTERM)
	agent.Wait()
	twinsDir := filepath.Join(gdir, "data", "fleet", "twins")
	if _, err := os.Stat(filepath.Join(twinsDir, "state.json")); err != nil {
		t.Fatalf("the gateway's twin state is not where the test removes it: %v", err)
	}
	if err := os.RemoveAll(twinsDir); err != nil {
		t.Fatal(err)
	}
	startAgent()
	a3 := dialDevice(t, ctx, mqttAddr, "dev-a")
	// tryAsk publishes on op and returns the answer (accepted or
	// rejected), answered false when none came within wait.
	tryAsk := func(d *device, op, payload string, wait time.Duration) (answered, ok bool, ans string) {
		t.Helper()
		na, nr := d.count(op+"/accepted"), d.count(op+"/rejected")
		if rc := d.publish(ctx, "dev-a", op, payload); rc >= 0x80 {
			t.Fatalf("device publish on %s: reason code %#x", op, rc)
		}
		for end := time.Now().Add(wait); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			if d.count(op+"/accepted") > na {
				return true, true, d.await(op+"/accepted", na+1)
			}
			if d.count(op+"/rejected") > nr {
				return true, false, d.await(op+"/rejected", nr+1)
			}
		}
		return false, false, ""
	}
	ask := func(d *device, op, payload string) (bool, string) {
		t.Helper()
		answered, ok, ans := tryAsk(d, op, payload, 20*time.Second)
		if !answered {
			t.Fatalf("no answer on %s within 20s", op)
		}
		return ok, ans
	}
	// The broker may take connections before the twin service subscribed:
	// wait until a get (harmless to repeat) is answered.
	for i := 0; ; i++ {
		if answered, _, _ := tryAsk(a3, "get", `{}`, 2*time.Second); answered {
			break
		}
		if i == 30 {
			t.Fatal("the twin service does not answer gets after the restart")
		}
	}
	var acc string
	for i := 0; ; i++ {
		ok, ans := ask(a3, "update", `{"state":{"reported":{"speed":1005}},"clientToken":"r1"}`)
		if ok {
			acc = ans
			break
		}
		if !strings.Contains(ans, `"code":503`) || i == 100 {
			t.Fatalf("update after the twin directory was lost: %s", ans)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(acc, `"reportedVersion":5`) {
		t.Fatalf("first update after the twin directory was lost: %s, want reportedVersion 5 (re-seeded from the server's 4)", acc)
	}
	waitFor(t, 30*time.Second, "reported v5 on the server", func() bool {
		tw, ok := serverTwin("dev-a")
		var rep map[string]any
		return ok && tw.ReportedVersion == 5 && json.Unmarshal(tw.Reported, &rep) == nil && rep["speed"] == float64(1005)
	})
	if ok, g := ask(a3, "get", `{}`); !ok || !strings.Contains(g, `"fan":"on"`) || !strings.Contains(g, `"desiredVersion":1`) || !strings.Contains(g, `"reportedVersion":5`) {
		t.Fatalf("get after the re-seed: %s", g)
	}

	// Delete the twin: gone on the server (a second delete is a 404,
	// exit 1) and, once the change reaches it, on the gateway (get: 404).
	// The device reporting again starts a new twin whose versions go on
	// from the deleted one's.
	must("twins", "delete", "gw0", "dev-a")
	if _, errOut, code := cli("twins", "delete", "gw0", "dev-a"); code != 1 || !strings.Contains(errOut, "twin gw0/dev-a") {
		t.Fatalf("second twins delete: exit %d %s", code, errOut)
	}
	if _, ok := serverTwin("dev-a"); ok {
		t.Fatal("dev-a's twin is still on the server after the delete")
	}
	for i := 0; ; i++ {
		ok, g := ask(a3, "get", `{}`)
		if !ok && strings.Contains(g, `"code":404`) {
			break
		}
		if i == 100 {
			t.Fatalf("the gateway still serves dev-a's deleted twin: %s", g)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if ok, acc := ask(a3, "update", `{"state":{"reported":{"speed":7}}}`); !ok || !strings.Contains(acc, `"reportedVersion":6`) {
		t.Fatalf("update after the delete: %v %s", ok, acc)
	}
	waitFor(t, 30*time.Second, "the new twin on the server", func() bool {
		tw, ok := serverTwin("dev-a")
		var rep map[string]any
		return ok && tw.ReportedVersion == 6 && json.Unmarshal(tw.Reported, &rep) == nil && len(rep) == 1 && rep["speed"] == float64(7) && tw.DesiredVersion == 0
	})
	_ = srv
}
