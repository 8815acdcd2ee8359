//go:build netpol

package main

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func init() { testBuildTags = append(testBuildTags, "netpol") }

// The real agent enforces its netpol section inside a gateway network
// namespace, reports counters through `outpost netpol counters`, and a
// config edit swaps the policy live.
func TestNetpolAgentEndToEnd(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces and BPF")
	}
	var r [3]byte
	rand.Read(r[:])
	id := hex.EncodeToString(r[:])
	cl, gw, vc, vg := "oc-"+id, "og-"+id, "c"+id, "g"+id
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
	ip("-n", cl, "addr", "add", "10.212.3.1/24", "dev", vc)
	ip("-n", gw, "addr", "add", "10.212.3.2/24", "dev", vg)
	for _, ns := range [][2]string{{cl, vc}, {gw, vg}, {cl, "lo"}, {gw, "lo"}} {
		ip("-n", ns[0], "link", "set", ns[1], "up")
	}

	dir := t.TempDir()
	cfg := filepath.Join(dir, "outpost.yaml")
	write := func(mqttAction string) {
		y := fmt.Sprintf(`data_dir: data
telemetry: {address: "127.0.0.1:19100"}
broker:
  listeners: [{type: tcp, address: "10.212.3.2:1883"}]
  allow_anonymous: true
netpol:
  interfaces:
    - name: %s
      default: deny
      on_agent_stop: open
      rules:
        - {name: mqtt, action: %s, src: 10.212.3.0/24, proto: tcp, dport: 1883}
`, vg, mqttAction)
		tmp := cfg + ".tmp"
		if err := os.WriteFile(tmp, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, cfg); err != nil {
			t.Fatal(err)
		}
	}
	write("allow")
	agent := exec.Command("ip", "netns", "exec", gw, binary, "run", "--config", cfg)
	logs, _ := agent.StderrPipe()
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(logs)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
	}()
	t.Cleanup(func() { agent.Process.Signal(os.Interrupt); agent.Wait() })
	// The client namespace reaches the broker through the policy.
	canConnect := func() bool {
		cmd := exec.Command("ip", "netns", "exec", cl, "timeout", "1", "bash", "-c", "exec 3<>/dev/tcp/10.212.3.2/1883 && echo ok")
		o, _ := cmd.CombinedOutput()
		return strings.Contains(string(o), "ok")
	}
	waitFor(t, 15*time.Second, "the broker reachable through the allow rule", canConnect)
	counters := func() string {
		out, _ := exec.Command("ip", "netns", "exec", gw, binary, "netpol", "counters", "--api", "http://127.0.0.1:19100").CombinedOutput()
		return string(out)
	}
	if c := counters(); !strings.Contains(c, "backend: ebpf") || !strings.Contains(c, vg+"  mqtt") {
		t.Fatalf("counters:\n%s", c)
	}
	// Hot reload: deny the broker's port.
	write("deny")
	waitFor(t, 15*time.Second, "the broker blocked after the reload", func() bool { return !canConnect() })
	out, _ := exec.Command("ip", "netns", "exec", gw, "curl", "-s", "http://127.0.0.1:19100/metrics").CombinedOutput()
	if !strings.Contains(string(out), `outpost_netpol_packets_total{iface="`+vg+`",rule="mqtt"}`) {
		t.Fatalf("metrics lack the rule counter:\n%s", out)
	}
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if ok() {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}
