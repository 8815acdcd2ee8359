package supervisor

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/supervisor/container/ctrtest"
)

// BenchmarkContainerStartToHealthy measures a container component from
// the reload that adds its recipe to healthy, through the package's
// podman service (Docker Engine API), with the image already loaded:
// list (adoption check), create, start, inspect, then the first passing
// check: exec inside the container (exec create + start + inspect) or an
// HTTP GET on the host network. Compare with BenchmarkStartToHealthy
// (native) in the same run.
//
// Every backend of this build runs (docker = podman; containerd with
// -tags containerd): runtime=docker/health=http and so on.
func BenchmarkContainerStartToHealthy(b *testing.B) {
	for _, be := range ctrBackends {
		b.Run("runtime="+be.name, func(b *testing.B) { benchContainerStartToHealthy(b, be) })
	}
}

func benchContainerStartToHealthy(b *testing.B, be ctrBackend) {
	for _, kind := range []string{"exec", "http"} {
		b.Run("health="+kind, func(b *testing.B) {
			e := newBenchEnv(b)
			be.setup(b, &e.cfg.Containers)
			e.start()
			a := ctrtest.AppImage(b, "localhost/outpost-bench/start:1", "bench-"+kind)
			a.Write(b, filepath.Join(e.dir, "app.tar"))
			var lat []time.Duration
			for i := 0; i < b.N; i++ {
				name := fmt.Sprintf("c%d", i)
				health := "  exec: [/app, check, /var/lib/outpost/data/ready]\n"
				args := `[touch, /var/lib/outpost/data/ready]`
				if kind == "http" {
					port := freePort(b)
					health = fmt.Sprintf("  http: http://127.0.0.1:%d/healthz\n", port)
					args = fmt.Sprintf(`[http, "127.0.0.1:%d"]`, port)
				}
				e.write(name, fmt.Sprintf("name: %s\nversion: 1.0.0\nkind: container\ncontainer:\n  image: %s@%s\n  args: %s\nartifacts:\n  - {path: %s, sha256: %s, image: true}\nhealth:\n%s  interval: 10s\n  start_period: 10s\n  start_interval: 5ms\n",
					name, a.Tag, a.ID, args, filepath.Join(e.dir, "app.tar"), a.SHA256(), health))
				if i == 0 {
					// The first start loads the archive; not timed.
					b.StopTimer()
				}
				t0 := time.Now()
				if err := e.s.Reload(context.Background()); err != nil {
					b.Fatal(err)
				}
				for {
					ch := e.s.changes()
					if st, err := e.s.Component(name); err == nil && st.State == StateHealthy {
						break
					} else if err == nil && (st.State == StateInstallFailed || st.State == StateBackoff) {
						b.Fatalf("%s: %s %s", name, st.State, st.Reason)
					}
					select {
					case <-ch:
					case <-time.After(30 * time.Second):
						b.Fatalf("%s not healthy", name)
					}
				}
				if i == 0 {
					b.Logf("first start, with the archive loaded into the runtime: %s", time.Since(t0).Round(time.Millisecond))
				} else {
					lat = append(lat, time.Since(t0))
				}
				b.StopTimer()
				os.Remove(filepath.Join(e.recipes, name+".yaml"))
				if err := e.s.Reload(context.Background()); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.StopTimer()
			if len(lat) == 0 {
				return
			}
			b.ReportMetric(float64(percentile(lat, 0.5).Microseconds())/1000, "ms-median")
			b.ReportMetric(float64(percentile(lat, 0.9).Microseconds())/1000, "ms-p90")
			b.Logf("n=%d median %s p90 %s max %s", len(lat), percentile(lat, 0.5), percentile(lat, 0.9), percentile(lat, 1))
		})
	}
}

func freePort(tb testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// BenchmarkIdleContainers20 runs 20 idle container components under the
// test agent (the supervisor alone, its own process) and measures the
// agent's RSS and CPU over 30 s once all are healthy (HTTP check every
// 10 s), and the podman service's CPU beside it. Run with -benchtime 1x.
func BenchmarkIdleContainers20(b *testing.B) {
	const n = 20
	sock := ctrtest.Podman(b)
	bin := buildTestAgent(b)
	dir := b.TempDir()
	recipes := filepath.Join(dir, "recipes")
	os.MkdirAll(recipes, 0o755)
	a := ctrtest.AppImage(b, "localhost/outpost-bench/idle:1", "idle")
	a.Write(b, filepath.Join(dir, "app.tar"))
	for i := 0; i < n; i++ {
		port := freePort(b)
		os.WriteFile(filepath.Join(recipes, fmt.Sprintf("ctr%02d.yaml", i)), []byte(fmt.Sprintf(
			"name: ctr%02d\nversion: 1.0.0\nkind: container\ncontainer:\n  image: %s@%s\n  args: [http, \"127.0.0.1:%d\"]\nartifacts:\n  - {path: %s, sha256: %s, image: true}\nresources: {memory: 32MiB}\nhealth:\n  http: http://127.0.0.1:%d/healthz\n  interval: 10s\n  start_interval: 50ms\n",
			i, a.Tag, a.ID, port, filepath.Join(dir, "app.tar"), a.SHA256(), port)), 0o644)
	}
	cfgPath := filepath.Join(dir, "cfg.yaml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf("recipes_dir: %s\nstate_dir: %s\nlog_dir: %s\ncgroup: {mode: none}\ncontainers: {socket: %s}\n",
		recipes, filepath.Join(dir, "state"), filepath.Join(dir, "logs"), sock)), 0o644)
	sockDir, _ := os.MkdirTemp("", "opidle")
	defer os.RemoveAll(sockDir)
	ag := startAgent(b, bin, cfgPath, filepath.Join(sockDir, "api.sock"))
	defer func() {
		ag.cmd.Process.Signal(syscall.SIGTERM)
		ag.cmd.Wait()
	}()
	t0 := time.Now()
	for {
		sts, _ := ag.list()
		if time.Since(t0) > 3*time.Minute && len(sts) > 0 {
			b.Logf("first component: %s %s", sts[0].State, sts[0].Reason)
		}
		h := 0
		for _, st := range sts {
			if st.State == StateHealthy {
				h++
			}
		}
		if h == n {
			break
		}
		if time.Since(t0) > 3*time.Minute {
			b.Fatalf("only %d of %d containers healthy", h, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	b.Logf("%d containers healthy after %s", n, time.Since(t0).Round(time.Millisecond))
	time.Sleep(5 * time.Second) // settle
	pid := ag.cmd.Process.Pid
	svc := ctrtest.Current()
	podman := svc.PID()
	conmons := svc.Children("conmon")
	var crss int64
	for _, p := range conmons {
		crss += procRSS(p)
	}
	cpu0, pcpu0 := procCPU(pid), procCPU(podman)
	w0 := time.Now()
	time.Sleep(30 * time.Second)
	cpu, pcpu := procCPU(pid)-cpu0, procCPU(podman)-pcpu0
	wall := time.Since(w0)
	rss := procRSS(pid)
	b.ReportMetric(float64(rss)/(1<<20), "MiB-RSS")
	b.ReportMetric(100*cpu.Seconds()/wall.Seconds(), "%CPU")
	b.Logf("agent RSS %.1f MiB, CPU %.2f%% of one core over %s; podman service RSS %.1f MiB, CPU %.2f%%; %d conmon processes, %.1f MiB RSS in all",
		float64(rss)/(1<<20), 100*cpu.Seconds()/wall.Seconds(), wall.Round(time.Second),
		float64(procRSS(podman))/(1<<20), 100*pcpu.Seconds()/wall.Seconds(), len(conmons), float64(crss)/(1<<20))
}
