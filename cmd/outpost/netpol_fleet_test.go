//go:build netpol

package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestNetpolFleetObject: a real outpost-server process and a real agent in
// a gateway network namespace. A netpol object targeted at the gateway
// replaces the file's policy live and is reported applied; one the server
// refuses names the field; one the agent refuses (a missing interface) is
// reported and leaves the running policy; after an agent restart the
// object's policy is back in force (it was lost: the cache said
// "applied" and the in-memory fragment was not applied again); deleting
// the object puts the file's policy back.
func TestNetpolFleetObject(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces and BPF")
	}
	var r [3]byte
	rand.Read(r[:])
	id := hex.EncodeToString(r[:])
	cl, gw, vc, vg := "fc-"+id, "fg-"+id, "c"+id, "g"+id
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	ip("netns", "add", cl)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", cl).Run() })
	ip("netns", "add", gw)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", gw).Run() })
	ip("link", "add", vc, "netns", cl, "type", "veth", "peer", "name", vg, "netns", gw)
	ip("-n", cl, "addr", "add", "10.213.3.1/24", "dev", vc)
	ip("-n", gw, "addr", "add", "10.213.3.2/24", "dev", vg)
	for _, ns := range [][2]string{{cl, vc}, {gw, vg}, {cl, "lo"}, {gw, "lo"}} {
		ip("-n", ns[0], "link", "set", ns[1], "up")
	}

	dir := t.TempDir()
	serverBin := filepath.Join(dir, "outpost-server")
	if out, err := exec.Command("go", "build", "-o", serverBin, "../outpost-server").CombinedOutput(); err != nil {
		t.Fatalf("building outpost-server: %v\n%s", err, out)
	}
	// Everything runs in the gateway namespace (its own loopback: fixed
	// ports cannot collide with anything).
	inGW := func(bin string, args ...string) *exec.Cmd {
		return exec.Command("ip", append([]string{"netns", "exec", gw, bin}, args...)...)
	}
	data := filepath.Join(dir, "server")
	os.MkdirAll(data, 0o700)
	srv := inGW(serverBin, "run", "--data", data, "--listen", "127.0.0.1:18443", "--keepalive", "1s")
	out, _ := srv.StdoutPipe()
	slog, _ := os.Create(filepath.Join(dir, "server.log"))
	srv.Stderr = slog
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Signal(syscall.SIGKILL); srv.Wait() })
	tokc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if m := regexp.MustCompile(`OUTPOST_SERVER_TOKEN=(\S+)`).FindStringSubmatch(sc.Text()); m != nil {
				tokc <- m[1]
			}
		}
	}()
	var admin string
	select {
	case admin = <-tokc:
	case <-time.After(60 * time.Second):
		b, _ := os.ReadFile(filepath.Join(dir, "server.log"))
		t.Fatalf("no admin token printed; log:\n%s", b)
	}
	ca := filepath.Join(data, "ca.pem")
	cli := func(args ...string) (string, string, error) {
		cmd := inGW(serverBin, args...)
		cmd.Env = append(os.Environ(), "OUTPOST_SERVER=https://127.0.0.1:18443", "OUTPOST_SERVER_CA="+ca, "OUTPOST_SERVER_TOKEN="+admin)
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		err := cmd.Run()
		return o.String(), e.String(), err
	}
	must := func(args ...string) string {
		t.Helper()
		o, e, err := cli(args...)
		if err != nil {
			t.Fatalf("outpost-server %v: %v\n%s%s", args, err, o, e)
		}
		return o
	}
	waitFor(t, 30*time.Second, "the server answering", func() bool { _, _, err := cli("gateways", "list"); return err == nil })

	gdir := filepath.Join(dir, "gw")
	os.MkdirAll(gdir, 0o700)
	cfg := filepath.Join(gdir, "outpost.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`node_id: gw1
data_dir: %s/data
telemetry: {address: "127.0.0.1:19101"}
broker:
  listeners: [{type: tcp, address: "10.213.3.2:1883"}]
  allow_anonymous: true
fleet: {reconnect_max: 1s}
netpol:
  interfaces:
    - name: %s
      default: deny
      on_agent_stop: open
      rules:
        - {name: mqtt, action: allow, src: 10.213.3.0/24, proto: tcp, dport: 1883}
`, gdir, vg)), 0o600)
	tok := strings.TrimSpace(must("token", "create", "--labels", "site=plant1", "--expires", "10m"))
	if o, err := inGW(binary, "enroll", "--config", cfg, "--server", "https://127.0.0.1:18443", "--ca", ca, "--token", tok).CombinedOutput(); err != nil {
		t.Fatalf("enroll: %v\n%s", err, o)
	}
	startAgent := func() *exec.Cmd {
		a := inGW(binary, "run", "--config", cfg)
		f, _ := os.OpenFile(filepath.Join(dir, "agent.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		a.Stderr = f
		if err := a.Start(); err != nil {
			t.Fatal(err)
		}
		return a
	}
	agent := startAgent()
	t.Cleanup(func() { agent.Process.Signal(os.Interrupt); agent.Wait() })
	fail := func(format string, args ...any) {
		t.Helper()
		b, _ := os.ReadFile(filepath.Join(dir, "agent.log"))
		t.Fatalf(format+"\nagent log:\n%s", append(args, b)...)
	}
	canConnect := func() bool {
		o, _ := exec.Command("ip", "netns", "exec", cl, "timeout", "1", "bash", "-c", "exec 3<>/dev/tcp/10.213.3.2/1883 && echo ok").CombinedOutput()
		return strings.Contains(string(o), "ok")
	}
	waitFor(t, 30*time.Second, "the broker reachable through the file's allow rule", canConnect)

	// condition returns the gateway's reported condition of netpol/plant.
	condition := func() (rv int64, applied bool, errText string) {
		o, _, err := cli("gateways", "list", "--json")
		if err != nil {
			return 0, false, ""
		}
		var gws []struct {
			Status struct {
				Conditions []struct {
					Kind, Name      string
					ResourceVersion int64
					Applied         bool
					Error           string
				}
			}
		}
		json.Unmarshal([]byte(o), &gws)
		for _, g := range gws {
			for _, c := range g.Status.Conditions {
				if c.Kind == "netpol" && c.Name == "plant" {
					return c.ResourceVersion, c.Applied, c.Error
				}
			}
		}
		return 0, false, ""
	}
	put := func(rules string, iface string) (int64, string, error) {
		spec := fmt.Sprintf(`{"interfaces":[{"name":%q,"default":"deny","on_agent_stop":"open","rules":[%s]}]}`, iface, rules)
		o, e, err := cli("objects", "put", "--kind", "netpol", "--id", "plant", "--gateway", "gw1", "--spec", spec, "--json")
		var obj struct{ ResourceVersion int64 }
		json.Unmarshal([]byte(o), &obj)
		return obj.ResourceVersion, e, err
	}

	// The fleet's policy denies the broker's port: enforced and reported.
	rv, e, err := put(`{"name":"fleet-mqtt","action":"deny","src":"10.213.3.0/24","proto":"tcp","dport":"1883"}`, vg)
	if err != nil {
		fail("put: %v %s", err, e)
	}
	waitFor(t, 30*time.Second, "the broker blocked by the fleet's policy", func() bool { return !canConnect() })
	waitFor(t, 30*time.Second, "the netpol object reported applied", func() bool { r, ok, _ := condition(); return r == rv && ok })

	// Refused by the server, naming the field.
	if _, e, err := put(`{"name":"mqtt","action":"allow","src":"10.213.3.300/24"}`, vg); err == nil || !strings.Contains(e, "interfaces[0].rules[0].src") {
		fail("a bad CIDR was stored: %v %s", err, e)
	}
	// Valid but not applicable here (no such interface): reported, and
	// the running policy stays in force.
	rvBad, e, err := put(`{"name":"mqtt","action":"allow"}`, "nosuch0")
	if err != nil {
		fail("put: %v %s", err, e)
	}
	waitFor(t, 30*time.Second, "the failed netpol object reported", func() bool {
		r, ok, et := condition()
		return r == rvBad && !ok && strings.Contains(et, "nosuch0")
	})
	if canConnect() {
		fail("a refused policy opened the broker's port")
	}
	rv, e, err = put(`{"name":"fleet-mqtt","action":"deny","src":"10.213.3.0/24","proto":"tcp","dport":"1883"}`, vg)
	if err != nil {
		fail("put: %v %s", err, e)
	}
	waitFor(t, 30*time.Second, "the netpol object reported applied again", func() bool { r, ok, _ := condition(); return r == rv && ok })

	// Restart the agent: the fleet's policy, not the file's, is in force
	// again (fleet-mqtt, deny).
	agent.Process.Signal(os.Interrupt)
	agent.Wait()
	agent = startAgent()
	waitFor(t, 30*time.Second, "the broker listening after the restart", func() bool {
		o, _ := exec.Command("ip", "netns", "exec", gw, "ss", "-ltnH", "src", "10.213.3.2:1883").CombinedOutput()
		return strings.Contains(string(o), "1883")
	})
	counters := func() string {
		o, _ := inGW(binary, "netpol", "counters", "--api", "http://127.0.0.1:19101").CombinedOutput()
		return string(o)
	}
	deadline := time.Now().Add(30 * time.Second)
	for canConnect() || !strings.Contains(counters(), "fleet-mqtt") {
		if time.Now().After(deadline) {
			fail("after the restart the fleet's netpol object is not in force (broker reachable %v); counters:\n%s", canConnect(), counters())
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Deleting the object puts the file's policy back (allow).
	must("objects", "delete", "netpol", "plant")
	waitFor(t, 30*time.Second, "the file's policy back after the delete", canConnect)
}
