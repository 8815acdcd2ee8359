package rules

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/message"
)

// Load tests: paced, bounded in count and time, in-process. They run only
// with OUTPOST_RULES_LOAD=1 (wrap in flock /tmp/outpost-bench.lock); the
// figures go to docs/BENCHMARKS.md.

func needLoad(t *testing.T) {
	if os.Getenv("OUTPOST_RULES_LOAD") == "" {
		t.Skip("set OUTPOST_RULES_LOAD=1 to run load tests")
	}
}

func vmRSS() string {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") || strings.HasPrefix(l, "VmHWM:") {
			return strings.Join(strings.Fields(l), " ")
		}
	}
	return "?"
}

// pace sends n messages at rate per second and returns each send's latency.
func pace(n, rate int, send func(i int)) []time.Duration {
	lat := make([]time.Duration, 0, n)
	start := time.Now()
	interval := time.Second / time.Duration(rate)
	for i := 0; i < n; i++ {
		due := start.Add(time.Duration(i) * interval)
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		t0 := time.Now()
		send(i)
		lat = append(lat, time.Since(t0))
	}
	return lat
}

func TestLoad1000Rules(t *testing.T) {
	needLoad(t)
	env := NewMemEnv()
	env.Sink("republish").Discard = true
	e := New(Options{Env: env})
	var all []*Rule
	for i := 0; i < 1000; i++ {
		rs, err := e.Compile("r.sql", fmt.Sprintf(
			`CREATE RULE r%d AS SELECT deviceid() AS d, temp, humidity FROM 'site/%d/+/telemetry' WHERE temp > 80 AND quality = 'good' DO REPUBLISH 'out/%d/${d}';`, i, i, i))
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, rs...)
	}
	e.Apply(all)
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	t.Logf("1000 rules loaded: heap in use %.1f MiB, %s", float64(ms.HeapInuse)/(1<<20), vmRSS())
	msgs := make([]*message.Message, 1000)
	for i := range msgs {
		msgs[i] = &message.Message{Topic: fmt.Sprintf("site/%d/dev-%d/telemetry", i, i%50), Payload: payload200, DeviceID: fmt.Sprint("dev-", i%50)}
	}
	ctx := context.Background()
	const rate, seconds = 10000, 5
	lat := pace(rate*seconds, rate, func(i int) { e.Process(ctx, msgs[(i*7)%1000]) })
	runtime.ReadMemStats(&ms)
	t.Logf("10k msg/s for %ds through 1000 rules: Process latency %s; heap in use %.1f MiB, %s; emitted %d",
		seconds, distribution(lat), float64(ms.HeapInuse)/(1<<20), vmRSS(), env.Sink("republish").Count())
	// Every message matches exactly one of the 1,000 rules and passes its
	// WHERE (payload200: temp 81.25, quality good): one output each.
	if got := env.Sink("republish").Count(); got != rate*seconds {
		t.Fatalf("emitted %d, want %d (one per message)", got, rate*seconds)
	}
}

// seqEnv records, per rule (out/N topic), how often each sequence number
// was emitted.
type seqEnv struct {
	MemEnv
	counts [][]uint8
	n      atomic.Int64
}

func (s *seqEnv) Republish() message.Sink { return s }
func (s *seqEnv) Name() string            { return "seq" }
func (s *seqEnv) Deliver(_ context.Context, m *message.Message) error {
	rule, _ := strconv.Atoi(strings.TrimPrefix(m.Topic, "out/"))
	f, _ := seqPath.Get(m.Payload).Float()
	s.counts[rule][int(f)]++ // one writer per rule slot per message: partitions serialize devices, one device here
	s.n.Add(1)
	return nil
}

func TestLoadReload100Rules(t *testing.T) {
	needLoad(t)
	const nRules, rate, seconds = 100, 10000, 5
	total := rate * seconds
	env := &seqEnv{}
	env.Open = true
	env.counts = make([][]uint8, nRules)
	for i := range env.counts {
		env.counts[i] = make([]uint8, total)
	}
	e := New(Options{Env: env})
	dir := t.TempDir()
	write := func(gen int) {
		for i := 0; i < nRules; i++ {
			src := fmt.Sprintf("CREATE RULE r%d VERSION %d AS SELECT seq, %d AS gen FROM 'seq/#' DO REPUBLISH 'out/%d';\n", i, gen+1, gen, i)
			if err := writeAtomic(filepath.Join(dir, fmt.Sprintf("r%03d.sql", i)), []byte(src)); err != nil {
				t.Fatal(err)
			}
		}
	}
	write(0)
	s := NewStore(e, dir, 20*time.Millisecond, nil)
	var mu sync.Mutex
	var lat, latFirst, took []time.Duration
	s.OnReload = func(ri ReloadInfo) {
		if ri.Err != nil {
			t.Error(ri.Err)
		}
		mu.Lock()
		lat = append(lat, ri.SinceLastEvent)
		latFirst = append(latFirst, ri.SinceFirstEvent)
		took = append(took, ri.Took)
		mu.Unlock()
	}
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if err := s.Watch(); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	ctx := context.Background()
	var procLat []time.Duration
	go func() {
		defer wg.Done()
		buf := make([]byte, 0, 32)
		procLat = pace(total, rate, func(i int) {
			buf = strconv.AppendInt(append(buf[:0], `{"seq":`...), int64(i), 10)
			buf = append(buf, '}')
			e.Process(ctx, &message.Message{Topic: "seq/1", DeviceID: "d1", Payload: buf})
		})
	}()
	// replace all 100 rule files every 250 ms while the flow runs
	gens := 0
	deadline := time.Now().Add(time.Duration(seconds)*time.Second - 500*time.Millisecond)
	for time.Now().Before(deadline) {
		gens++
		write(gens)
		time.Sleep(250 * time.Millisecond)
	}
	wg.Wait()
	gaps, dups := 0, 0
	for r := range env.counts {
		for _, c := range env.counts[r] {
			if c == 0 {
				gaps++
			} else if c > 1 {
				dups += int(c) - 1
			}
		}
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d msgs at %d/s, %d rewrites of %d rule files: %d gaps, %d duplicates; %d reloads", total, rate, gens, nRules, gaps, dups, len(lat))
	t.Logf("last file event to switch (debounce 20ms + compile + apply): %s", distribution(lat))
	t.Logf("first file event to switch (includes writing the 100 files): %s", distribution(latFirst))
	t.Logf("compile+apply of the changed files: %s", distribution(took))
	t.Logf("Process latency during reloads: %s", distribution(procLat))
	if gaps != 0 || dups != 0 {
		t.Fatalf("%d gaps, %d duplicates", gaps, dups)
	}
}
