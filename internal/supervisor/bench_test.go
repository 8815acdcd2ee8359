package supervisor

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/supervisor/mqtttest"
)

// Benchmarks. Heavy ones must run under the team lock, e.g.
//
//	flock /tmp/outpost-bench.lock go test ./internal/supervisor -run '^$' -bench . -benchtime 1x
//
// Figures and the exact commands are in docs/BENCHMARKS.md (## Supervisor).

func buildIdle(b testing.TB) string {
	b.Helper()
	out := filepath.Join(b.TempDir(), "idle")
	cmd := exec.Command("go", "build", "-o", out, "./testdata/idle")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if o, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("build idle: %v %s", err, o)
	}
	return out
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(p * float64(len(s)-1))
	return s[i]
}

// BenchmarkStartToHealthy measures a static native component from the
// reload that adds it to the exec health check passing (cgroup setup,
// start shim on v1, exec, first check).
func BenchmarkStartToHealthy(b *testing.B) {
	idle := buildIdle(b)
	e := newBenchEnv(b)
	if os.Getenv("SUPBENCH_LOG") != "" {
		e.opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	e.start()
	var lat []time.Duration
	for i := 0; i < b.N; i++ {
		name := fmt.Sprintf("c%d", i)
		e.write(name, fmt.Sprintf("name: %s\nversion: 1.0.0\nlifecycle:\n  run: [%q]\nhealth:\n  exec: [%q, \"-check\"]\n  interval: 10s\n  start_period: 10s\n  start_interval: 5ms\n", name, idle, idle))
		t0 := time.Now()
		if err := e.s.Reload(context.Background()); err != nil {
			b.Fatal(err)
		}
		for {
			ch := e.s.changes()
			if st, err := e.s.Component(name); err == nil && st.State == StateHealthy {
				break
			}
			select {
			case <-ch:
			case <-time.After(10 * time.Second):
				b.Fatalf("%s not healthy", name)
			}
		}
		lat = append(lat, time.Since(t0))
		// Keep one recipe in the directory, so every iteration measures the
		// same work (the reload parses every file).
		b.StopTimer()
		os.Remove(filepath.Join(e.recipes, name+".yaml"))
		if err := e.s.Reload(context.Background()); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(float64(percentile(lat, 0.5).Microseconds())/1000, "ms-median")
	b.ReportMetric(float64(percentile(lat, 0.9).Microseconds())/1000, "ms-p90")
	mode, _ := e.s.CgroupMode()
	b.Logf("cgroup %s: n=%d median %s p90 %s max %s", mode, len(lat), percentile(lat, 0.5), percentile(lat, 0.9), percentile(lat, 1))
}

// benchEnv adapts testEnv to benchmarks.
func newBenchEnv(b *testing.B) *testEnv {
	dir := b.TempDir()
	e := &testEnv{dir: dir, recipes: filepath.Join(dir, "recipes")}
	os.MkdirAll(e.recipes, 0o755)
	testSeq++
	e.cfg = Config{
		RecipesDir: e.recipes, StateDir: filepath.Join(dir, "state"), LogDir: filepath.Join(dir, "logs"),
		Cgroup: CgroupConfig{Parent: fmt.Sprintf("outpost-bench-%d-%d", os.Getpid(), testSeq)},
		Watch:  new(bool),
	}
	e.tb = b
	return e
}

// BenchmarkIPC measures component-to-component MQTT over the broker's
// Unix-socket listener, QoS 0, 64-byte payloads: max throughput (one
// publisher, one subscriber) and latency at a fixed 10k msg/s; mochi (the
// in-process test broker) side by side with Mosquitto on the same kind of
// socket when it is installed.
func BenchmarkIPC(b *testing.B) {
	brokers := map[string]func(b *testing.B) (sock, user, pass string, cpu func() time.Duration, stop func()){
		"mochi": func(b *testing.B) (string, string, string, func() time.Duration, func()) {
			dir, _ := os.MkdirTemp("", "opipc")
			bus, err := mqtttest.Start(filepath.Join(dir, "mqtt.sock"))
			if err != nil {
				b.Fatal(err)
			}
			bus.AddUser("bench", "pw", []string{"components/#"}, []string{"components/#"})
			return bus.Socket, "bench", "pw", func() time.Duration { return procCPU(os.Getpid()) }, func() { bus.Close(); os.RemoveAll(dir) }
		},
		"mosquitto": func(b *testing.B) (string, string, string, func() time.Duration, func()) {
			if _, err := exec.LookPath("mosquitto"); err != nil {
				b.Skip("mosquitto not installed (apt-get install mosquitto)")
			}
			dir, _ := os.MkdirTemp("", "opmosq")
			sock := filepath.Join(dir, "mqtt.sock")
			conf := filepath.Join(dir, "m.conf")
			os.WriteFile(conf, []byte("user root\nlistener 0 "+sock+"\nallow_anonymous true\nmax_queued_messages 100000\n"), 0o644)
			cmd := exec.Command("mosquitto", "-c", conf)
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			for i := 0; i < 200; i++ {
				if _, err := os.Stat(sock); err == nil {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			pid := cmd.Process.Pid
			return sock, "", "", func() time.Duration { return procCPU(pid) }, func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait(); os.RemoveAll(dir) }
		},
	}
	for _, name := range []string{"mochi", "mosquitto"} {
		for _, rate := range []int{0, 10000} {
			label := "max"
			if rate > 0 {
				label = strconv.Itoa(rate) + "per_s"
			}
			b.Run(name+"/"+label, func(b *testing.B) {
				sock, user, pass, cpu, stop := brokers[name](b)
				defer stop()
				runIPC(b, sock, user, pass, rate, cpu)
			})
		}
	}
}

// ipcResult is what the load generator process reports.
type ipcResult struct {
	Sent, Received   int
	Elapsed          time.Duration
	P50, P99, Max    time.Duration
	LoadCPU, BrkrCPU time.Duration
}

// runIPC runs the load generator (this test binary in helper mode "ipc")
// as a separate process, like two components would be, and measures the
// broker's CPU beside it.
func runIPC(b *testing.B, sock, user, pass string, rate int, brokerCPU func() time.Duration) {
	n := 300000
	if rate > 0 {
		n = rate * 5
	}
	cmd := exec.Command(selfExe())
	cmd.Env = append(os.Environ(), helperEnv+"=ipc", "SUPTEST_SOCK="+sock, "SUPTEST_USER="+user, "SUPTEST_PASS="+pass,
		fmt.Sprintf("SUPTEST_RATE=%d", rate), fmt.Sprintf("SUPTEST_N=%d", n))
	b.ResetTimer()
	c0 := brokerCPU()
	out, err := cmd.Output()
	c1 := brokerCPU()
	b.StopTimer()
	if err != nil {
		b.Fatalf("load generator: %v %s", err, out)
	}
	var r ipcResult
	if err := json.Unmarshal(out, &r); err != nil {
		b.Fatalf("load generator output %q: %v", out, err)
	}
	r.LoadCPU = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	r.BrkrCPU = c1 - c0
	b.ReportMetric(float64(r.Received)/r.Elapsed.Seconds(), "msg/s")
	b.ReportMetric(float64(r.P50.Microseconds())/1000, "ms-p50")
	b.ReportMetric(float64(r.P99.Microseconds())/1000, "ms-p99")
	b.ReportMetric(100*r.BrkrCPU.Seconds()/r.Elapsed.Seconds(), "%broker-CPU")
	b.Logf("sent %d, received %d (%.1f%%) in %s: %.0f msg/s, p50 %s p99 %s max %s; broker CPU %.0f%%, load generator CPU %.0f%%",
		r.Sent, r.Received, 100*float64(r.Received)/float64(r.Sent), r.Elapsed.Round(time.Millisecond),
		float64(r.Received)/r.Elapsed.Seconds(), r.P50, r.P99, r.Max,
		100*r.BrkrCPU.Seconds()/r.Elapsed.Seconds(), 100*r.LoadCPU.Seconds()/r.Elapsed.Seconds())
}

// ipcLoad is the load generator: one subscriber and one publisher
// connection over the Unix socket, QoS 0, 64-byte payloads carrying the
// send time. rate 0 means as fast as possible. Bounded: n messages, 60 s.
func ipcLoad() int {
	sock, user, pass := os.Getenv("SUPTEST_SOCK"), os.Getenv("SUPTEST_USER"), os.Getenv("SUPTEST_PASS")
	rate, _ := strconv.Atoi(os.Getenv("SUPTEST_RATE"))
	n, _ := strconv.Atoi(os.Getenv("SUPTEST_N"))
	fail := func(err error) int { fmt.Fprintln(os.Stderr, err); return 1 }
	sub, err := rawDial("unix", sock, "sub", user, pass)
	if err != nil {
		return fail(err)
	}
	defer sub.close()
	if err := sub.subscribe("components/b/in"); err != nil {
		return fail(err)
	}
	pub, err := rawDial("unix", sock, "pub", user, pass)
	if err != nil {
		return fail(err)
	}
	defer pub.close()
	pkt, off := publishPacket("components/b/in", 64)
	lat := make([]time.Duration, 0, n)
	received := 0
	done := make(chan struct{})
	sub.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	go func() {
		defer close(done)
		buf := make([]byte, 256)
		for received < n {
			typ, p, err := sub.readPacket(buf)
			if err != nil {
				return
			}
			if typ != 3 || len(p) < 8 {
				continue
			}
			sent := int64(binary.BigEndian.Uint64(p[len(p)-8:]))
			lat = append(lat, time.Duration(time.Now().UnixNano()-sent))
			received++
		}
	}()
	time.Sleep(50 * time.Millisecond)
	t0 := time.Now()
	if rate == 0 {
		for i := 0; i < n; i++ {
			binary.BigEndian.PutUint64(pkt[off:], uint64(time.Now().UnixNano()))
			pub.w.Write(pkt)
			if i%64 == 63 {
				pub.w.Flush()
			}
		}
		pub.w.Flush()
	} else {
		// Evenly spaced sends: each message leaves at its scheduled time.
		gap := time.Second / time.Duration(rate)
		for i := 0; i < n; i++ {
			due := t0.Add(time.Duration(i) * gap)
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			}
			binary.BigEndian.PutUint64(pkt[off:], uint64(time.Now().UnixNano()))
			pub.w.Write(pkt)
			pub.w.Flush()
		}
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		sub.conn.SetReadDeadline(time.Now())
		<-done
	}
	elapsed := time.Since(t0)
	out, _ := json.Marshal(ipcResult{Sent: n, Received: received, Elapsed: elapsed,
		P50: percentile(lat, 0.5), P99: percentile(lat, 0.99), Max: percentile(lat, 1)})
	os.Stdout.Write(out)
	return 0
}

// BenchmarkIdle100 starts 100 idle static components under the test agent
// (the supervisor alone in its own process) and measures the agent's RSS
// and CPU over 30 s once they all run. Run with -benchtime 1x.
func BenchmarkIdle100(b *testing.B) {
	for _, withHealth := range []bool{false, true} {
		b.Run(fmt.Sprintf("health=%v", withHealth), func(b *testing.B) {
			idle100(b, withHealth)
		})
	}
}

func idle100(b *testing.B, withHealth bool) {
	bin := buildTestAgent(b)
	idle := buildIdle(b)
	dir := b.TempDir()
	recipes := filepath.Join(dir, "recipes")
	os.MkdirAll(recipes, 0o755)
	health := ""
	if withHealth {
		health = fmt.Sprintf("health:\n  exec: [%q, \"-check\"]\n  interval: 10s\n  start_interval: 50ms\n  start_period: 30s\n", idle)
	}
	for i := 0; i < 100; i++ {
		os.WriteFile(filepath.Join(recipes, fmt.Sprintf("idle%03d.yaml", i)),
			[]byte(fmt.Sprintf("name: idle%03d\nversion: 1.0.0\nlifecycle:\n  run: [%q]\nresources: {memory: 16MiB}\n%s", i, idle, health)), 0o644)
	}
	parent := fmt.Sprintf("outpost-idle-%d", os.Getpid())
	cfgPath := filepath.Join(dir, "cfg.yaml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf("recipes_dir: %s\nstate_dir: %s\nlog_dir: %s\ncgroup: {parent: %s}\n", recipes, filepath.Join(dir, "state"), filepath.Join(dir, "logs"), parent)), 0o644)
	sockDir, _ := os.MkdirTemp("", "opidle")
	defer os.RemoveAll(sockDir)
	a := startAgent(b, bin, cfgPath, filepath.Join(sockDir, "api.sock"))
	defer func() {
		a.cmd.Process.Signal(syscall.SIGTERM)
		a.cmd.Wait()
		for _, sub := range []string{"memory", "cpu", "pids", "freezer"} {
			ents, _ := os.ReadDir(filepath.Join("/sys/fs/cgroup", sub, parent))
			for _, e := range ents {
				if e.IsDir() {
					os.Remove(filepath.Join("/sys/fs/cgroup", sub, parent, e.Name()))
				}
			}
			os.Remove(filepath.Join("/sys/fs/cgroup", sub, parent))
		}
	}()
	want := StateRunning
	if withHealth {
		want = StateHealthy
	}
	t0 := time.Now()
	for {
		sts, _ := a.list()
		n := 0
		for _, st := range sts {
			if st.State == want {
				n++
			}
		}
		if n == 100 {
			break
		}
		if time.Since(t0) > 2*time.Minute {
			b.Fatalf("only %d of 100 components %s", n, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
	b.Logf("100 components %s after %s", want, time.Since(t0).Round(time.Millisecond))
	time.Sleep(5 * time.Second) // settle
	pid := a.cmd.Process.Pid
	cpu0 := procCPU(pid)
	w0 := time.Now()
	time.Sleep(30 * time.Second)
	cpu := procCPU(pid) - cpu0
	wall := time.Since(w0)
	rss := procRSS(pid)
	b.ReportMetric(float64(rss)/(1<<20), "MiB-RSS")
	b.ReportMetric(100*cpu.Seconds()/wall.Seconds(), "%CPU")
	b.Logf("agent RSS %.1f MiB, CPU %.2f%% of one core over %s", float64(rss)/(1<<20), 100*cpu.Seconds()/wall.Seconds(), wall.Round(time.Second))
}

// procCPU returns utime+stime of a process.
func procCPU(pid int) time.Duration {
	f, err := procStat(pid)
	if err != nil {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * time.Second / 100 // USER_HZ = 100
}

func procRSS(pid int) int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			kb, _ := strconv.ParseInt(strings.Fields(l)[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}
