package supervisor

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/netpol"
	"github.com/outpost-edge/outpost/internal/netpol/kernel"
)

func egressListener(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port
}

// A supervised component reaches the endpoint its recipe declares and the
// broker's (EgressAlways); an undeclared one is refused with EPERM and
// counted once.
func TestEgressSupervisedComponent(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("egress needs root (cgroup2, BPF)")
	}
	eg, err := kernel.OpenEgress(t.TempDir(), nil)
	if errors.Is(err, kernel.ErrNoBPF) {
		t.Skipf("the kernel refuses cgroup BPF programs here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eg.Close() })
	declared, broker, undeclared := egressListener(t), egressListener(t), egressListener(t)
	e := newEnv(t)
	brokerAllow, err := netpol.CompileEgress(netpol.Egress{Host: "127.0.0.1", Port: fmt.Sprint(broker), Proto: "tcp"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.opts.Egress = eg
	e.opts.EgressAlways = func() []netpol.EgressAllow { return brokerAllow }
	out := filepath.Join(e.dir, "out.txt")
	try := func(port int) string {
		return fmt.Sprintf("(exec 3<>/dev/tcp/127.0.0.1/%d && echo ok-%d || echo refused-%d) >>%s 2>&1; ", port, port, port, out)
	}
	e.write("c", fmt.Sprintf("name: c\nversion: 1.0.0\nlifecycle:\n  run:\n    exec: [/bin/bash, -c, %q]\negress:\n  - {host: 127.0.0.1, port: %d, proto: tcp}\n",
		try(declared)+try(broker)+try(undeclared)+"echo done >>"+out+"; exec sleep 1000", declared))
	// egress: [] gets a group too (only the broker reachable).
	e.write("d", "name: d\nversion: 1.0.0\nlifecycle:\n  run:\n    exec: [/bin/sleep, '1000']\negress: []\n")
	e.start()
	var text string
	waitFor(t, 60*time.Second, "the component's connection attempts", func() bool {
		b, _ := os.ReadFile(out)
		text = string(b)
		return strings.Contains(text, "done")
	})
	for _, want := range []string{fmt.Sprintf("ok-%d", declared), fmt.Sprintf("ok-%d", broker), "Operation not permitted", fmt.Sprintf("refused-%d", undeclared)} {
		if !strings.Contains(text, want) {
			t.Errorf("component output lacks %q:\n%s", want, text)
		}
	}
	st, err := eg.Status()
	if err != nil {
		t.Fatal(err)
	}
	if c := st["c"]; c.Allowed != 2 || c.Denied != 1 || c.Destinations[fmt.Sprintf("127.0.0.1:%d/tcp", undeclared)] != 1 {
		t.Errorf("egress status of c: %+v", c)
	}
	if _, ok := st["d"]; !ok {
		t.Errorf("d (egress: []) has no egress group: %v", st)
	}
	// A removed component's group and counters go away.
	if err := os.Remove(filepath.Join(e.recipes, "d.yaml")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "d's egress group removed", func() bool {
		st, err := eg.Status()
		_, ok := st["d"]
		return err == nil && !ok
	})
}

func TestEgressFailsClosed(t *testing.T) {
	e := newEnv(t)
	e.write("d", "name: d\nversion: 1.0.0\nlifecycle:\n  run:\n    exec: [/bin/sleep, '1000']\negress: []\n")
	e.start()
	st := e.waitState("d", 60*time.Second, StateBackoff, StateBroken)
	if !strings.Contains(st.Reason, "egress enforcement is unavailable") {
		t.Errorf("status %+v: want the egress reason", st)
	}
}
