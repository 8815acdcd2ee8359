package agent

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/supervisor"
)

// TestSupervisedPythonComponentOnTheRealBus runs examples/components/hello-py
// under the full agent: the supervisor issues it credentials on the broker's
// unix listener, the Python client (Debian's python3-paho-mqtt) connects with
// them and publishes heartbeats, and the supervisor's MQTT health check (an
// inline subscription on the broker) marks it healthy.
func TestSupervisedPythonComponentOnTheRealBus(t *testing.T) {
	if err := exec.Command("/usr/bin/python3", "-c", "import paho.mqtt.client").Run(); err != nil {
		t.Skip("python3-paho-mqtt is not installed (scripts/deps.sh installs it)")
	}
	dir := t.TempDir()
	recipes := filepath.Join(dir, "components")
	os.MkdirAll(recipes, 0o755)
	for src, dst := range map[string]string{"recipe.yaml": "hello-py.yaml", "main.py": "main.py"} {
		b, err := os.ReadFile(filepath.Join("..", "..", "examples", "components", "hello-py", src))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(recipes, dst), b, 0o644)
	}
	cfg := fmt.Sprintf(`node_id: t
data_dir: %[1]s/data
telemetry: {address: "127.0.0.1:0"}
broker:
  listeners:
    - {type: tcp, address: "127.0.0.1:0"}
    - {type: unix, path: %[1]s/mqtt.sock}
supervisor:
  recipes_dir: %[2]s
  cgroup: {mode: none}
`, dir, recipes)
	path := filepath.Join(dir, "outpost.yaml")
	os.WriteFile(path, []byte(cfg), 0o600)
	a, logs := startAgent(t, path)
	url := "http://" + a.Telemetry.Addr() + "/api/v1/components/hello-py"
	var st supervisor.Status
	deadline := time.Now().Add(20 * time.Second)
	for st.State != supervisor.StateHealthy {
		if time.Now().After(deadline) {
			t.Fatalf("hello-py not healthy: %+v\nagent log:\n%s", st, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
		resp, err := http.Get(url)
		if err != nil {
			continue
		}
		json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
	}
	t.Logf("state %+v", st)
	if strings.Contains(logs.String(), "OUTPOST_MQTT_PASSWORD=") {
		t.Fatal("component credentials appear in the agent log")
	}
}
