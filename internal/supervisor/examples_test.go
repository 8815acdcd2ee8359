package supervisor

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// The example components (Go and Python) run under the supervisor, become
// healthy through their MQTT heartbeat and answer pings on the bus with
// their own restricted credentials.
func TestExampleComponents(t *testing.T) {
	bus := startBus(t)
	e := newEnv(t)
	e.opts.Identity, e.opts.Publisher, e.opts.Bus = busIdentity{bus}, bus, bus
	ex := filepath.Join("..", "..", "examples", "components")

	build := exec.Command("go", "build", "-o", filepath.Join(e.recipes, "hello-go"), "./"+filepath.Join(ex, "hello-go"))
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("the Go example does not build (%v): %s", err, out)
	}
	copyFile(t, filepath.Join(ex, "hello-go", "recipe.yaml"), filepath.Join(e.recipes, "hello-go.yaml"))
	names := map[string]string{"hello-go": "hello"}
	if err := exec.Command("/usr/bin/python3", "-c", "import paho.mqtt.client").Run(); err != nil {
		t.Logf("skipping the Python example: /usr/bin/python3 with paho-mqtt unavailable (apt-get install python3-paho-mqtt): %v", err)
	} else {
		copyFile(t, filepath.Join(ex, "hello-py", "recipe.yaml"), filepath.Join(e.recipes, "hello-py.yaml"))
		copyFile(t, filepath.Join(ex, "hello-py", "main.py"), filepath.Join(e.recipes, "main.py"))
		names["hello-py"] = "hi"
	}
	e.start()
	for n := range names {
		st := e.waitState(n, 30*time.Second, StateHealthy)
		t.Logf("%s healthy (pid %d, %s)", n, st.PID, st.Health)
	}
	bus.AddUser("tester", "secret", []string{"components/#"}, []string{"components/#"})
	c, _, err := dialMQTT(t, bus.Socket, "tester", "secret")
	if err != nil {
		t.Fatal(err)
	}
	if code := c.subscribe(t, "components/+/pong"); code >= 0x80 {
		t.Fatalf("suback 0x%x", code)
	}
	for n := range names {
		c.publish(t, "components/"+n+"/ping", 1)
	}
	waitFor(t, 10*time.Second, "pongs", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		n := 0
		for _, topic := range c.got {
			if strings.HasSuffix(topic, "/pong") {
				n++
			}
		}
		return n >= len(names)
	})
	for n := range names {
		logs, _ := e.s.Logs(n, 20)
		if !strings.Contains(strings.Join(logs, "\n"), n+" ready") {
			t.Errorf("%s log lacks its ready line: %q", n, logs)
		}
	}
}
