package function

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/message"
)

func TestStateFileRestore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s", "f.state")
	s, err := OpenState(path, 1<<10)
	if err != nil {
		t.Fatal(err)
	}
	var mark uint64
	for i := range 10 {
		ok, m := s.Put("d1", "k"+strconv.Itoa(i%3), []byte(strconv.Itoa(i)))
		if !ok || m <= mark {
			t.Fatalf("put %d: ok %v mark %d after %d", i, ok, m, mark)
		}
		mark = m
	}
	if ok, m := s.Put("d2", "x", []byte("y")); !ok {
		t.Fatal("put d2")
	} else if err := s.Commit(m); err != nil {
		t.Fatal(err)
	}
	if ok, m := s.Put("d2", "x", nil); !ok || s.Commit(m) != nil { // delete
		t.Fatal("delete d2")
	}
	if ok, _ := s.Put("d1", "big", make([]byte, 2<<10)); ok {
		t.Fatal("put over the limit accepted")
	}
	// Not committed: lost on "kill -9" (the file is reopened without Close).
	s.Put("d3", "lost", []byte("v"))

	s2, err := OpenState(path, 1<<10)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	for k, want := range map[string]string{"k0": "9", "k1": "7", "k2": "8"} {
		if v, ok := s2.Get("d1", k); !ok || string(v) != want {
			t.Errorf("d1/%s = %q %v, want %q", k, v, ok, want)
		}
	}
	if _, ok := s2.Get("d2", "x"); ok {
		t.Error("deleted key restored")
	}
	if _, ok := s2.Get("d3", "lost"); ok {
		t.Error("uncommitted put restored")
	}
	if n, b := s2.Devices(); n != 1 || b != 9 {
		t.Errorf("Devices = %d, %d; want 1 device, 9 bytes", n, b)
	}
	s.Close()
}

// A torn tail (a crash in the middle of a write) is cut off: the whole
// records before it are restored and new records follow them.
func TestStateFileTornTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f.state")
	s, err := OpenState(path, 1<<10)
	if err != nil {
		t.Fatal(err)
	}
	s.Put("d", "a", []byte("1"))
	_, m := s.Put("d", "b", []byte("2"))
	if err := s.Commit(m); err != nil {
		t.Fatal(err)
	}
	s.Close()
	whole, _ := os.ReadFile(path)
	rec := appendStateRec(nil, "d", "c", []byte("3"))
	for _, tail := range [][]byte{rec[:5], rec[:len(rec)-1], append(append([]byte(nil), rec[:8]...), make([]byte, len(rec)-8)...)} {
		if err := os.WriteFile(path, append(append([]byte(nil), whole...), tail...), 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := OpenState(path, 1<<10)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := s.Get("d", "c"); ok {
			t.Fatal("torn record restored")
		}
		_, m := s.Put("d", "e", []byte("5"))
		if err := s.Commit(m); err != nil {
			t.Fatal(err)
		}
		s.Close()
		s, err = OpenState(path, 1<<10)
		if err != nil {
			t.Fatal(err)
		}
		for k, want := range map[string]string{"a": "1", "b": "2", "e": "5"} {
			if v, ok := s.Get("d", k); !ok || string(v) != want {
				t.Fatalf("tail %d bytes: d/%s = %q %v, want %q", len(tail), k, v, ok, want)
			}
		}
		s.Close()
	}
}

// The log is rewritten when it outgrows the live state; puts made during
// and after the rewrite are kept.
func TestStateFileCompaction(t *testing.T) {
	old := compactMin
	compactMin = 4 << 10
	t.Cleanup(func() { compactMin = old })
	path := filepath.Join(t.TempDir(), "f.state")
	s, err := OpenState(path, 1<<10)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				ok, m := s.Put(fmt.Sprint("d", g), "n", []byte(strconv.Itoa(i)))
				if !ok {
					t.Error("put refused")
					return
				}
				if err := s.Commit(m); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() > 2*compactMin {
		t.Errorf("log is %d bytes after 2000 puts of 4 keys: not compacted", fi.Size())
	}
	s2, err := OpenState(path, 1<<10)
	if err != nil {
		t.Fatal(err)
	}
	for g := range 4 {
		if v, _ := s2.Get(fmt.Sprint("d", g), "n"); string(v) != "499" {
			t.Errorf("d%d = %q after compaction, want 499", g, v)
		}
	}
	s2.Close()
	s.Close()
}

// kvGuest stores the whole encoded input under key "k" of its device.
func kvGuest() []byte {
	return guest(cat(i32c(0), i32c(1), lget(0), lget(1), call(fnStatePut), opDrop, i32c(0)), cat(i32c(0)), []byte("k"))
}

const kill9ChildEnv = "OUTPOST_FUNCTION_KILL9_CHILD"

// kill9Child is the child process of TestStateSurvivesKill9: a registry
// with StateDir runs the kv function for 8 devices from 4 goroutines,
// each device's sequence continuing from the restored state, and prints
// "device seq" once Deliver returned (the acknowledgement point), until
// it is killed.
func kill9Child(dir string) {
	ctx := context.Background()
	rt, err := NewRuntime(RuntimeOptions{})
	if err != nil {
		fmt.Println("runtime:", err)
		os.Exit(3)
	}
	r := NewRegistry(RegistryOptions{Runtime: rt, Dir: filepath.Join(dir, "functions"), StateDir: filepath.Join(dir, "state"),
		Sinks: func(string) (message.Sink, error) { return &recSink{}, nil }})
	if err := r.Reload(ctx); err != nil {
		fmt.Println("reload:", err)
		os.Exit(3)
	}
	out := bufio.NewWriterSize(os.Stdout, 64)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			devs := []string{fmt.Sprint("dev", w), fmt.Sprint("dev", w+4)}
			next := map[string]int{}
			for _, d := range devs {
				next[d] = lastSeq(r.states["kv"], d) + 1
			}
			for i := 0; ; i++ {
				d := devs[i%2]
				err := r.Deliver(ctx, &message.Message{Topic: "in/" + d, DeviceID: d, QoS: 1, Payload: []byte(strconv.Itoa(next[d]))})
				if err != nil {
					fmt.Println("deliver:", err)
					os.Exit(3)
				}
				mu.Lock()
				fmt.Fprintf(out, "%s %d\n", d, next[d])
				out.Flush()
				mu.Unlock()
				next[d]++
			}
		}()
	}
	wg.Wait()
}

// lastSeq decodes the sequence number the kv guest stored for dev (0: none).
func lastSeq(s *State, dev string) int {
	v, ok := s.Get(dev, "k")
	if !ok {
		return 0
	}
	in, err := DecodeInput(v)
	if err != nil {
		panic(err)
	}
	n, err := strconv.Atoi(string(in.Payload))
	if err != nil {
		panic(err)
	}
	return n
}

// TestStateSurvivesKill9 runs a real child process that invokes a function
// storing per-device state and kills it with SIGKILL at random moments (8
// times, same directories): after each kill, every device's restored state
// holds at least the last sequence number the child acknowledged, and the
// next child continues from it.
func TestStateSurvivesKill9(t *testing.T) {
	dir := t.TempDir()
	fdir := filepath.Join(dir, "functions", "kv-1")
	if err := os.MkdirAll(fdir, 0o755); err != nil {
		t.Fatal(err)
	}
	man := "name: kv\nversion: 1\nmodule: kv.wasm\ntriggers:\n  - {from: [\"in/#\"], to: [republish]}\n"
	if err := os.WriteFile(filepath.Join(fdir, "kv.wasm"), kvGuest(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(fdir, ManifestFile), []byte(man), 0o644); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 9))
	acked := map[string]int{}
	total := 0
	for round := range 8 {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), kill9ChildEnv+"="+dir)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 1024)
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
		}()
		// Kill after a random number of acknowledgements (the child is
		// running at full speed then, mid-write or mid-fsync).
		want := 50 + rng.IntN(400)
		got := 0
		deadline := time.After(60 * time.Second)
	read:
		for got < want {
			select {
			case l, ok := <-lines:
				if !ok {
					break read
				}
				var d string
				var n int
				if _, err := fmt.Sscanf(l, "%s %d", &d, &n); err != nil {
					t.Fatalf("child: %s", l)
				}
				if n <= acked[d] {
					t.Fatalf("round %d: %s acknowledged %d after %d: state went back", round, d, n, acked[d])
				}
				acked[d] = n
				got++
			case <-deadline:
				t.Fatalf("round %d: %d acknowledgements in 60s", round, got)
			}
		}
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		for l := range lines { // acknowledged before the kill landed
			var d string
			var n int
			if _, err := fmt.Sscanf(l, "%s %d", &d, &n); err == nil && n > acked[d] {
				acked[d] = n
				got++
			}
		}
		_ = cmd.Wait()
		total += got
		if got < want {
			t.Fatalf("round %d: child exited after %d acknowledgements", round, got)
		}
		s, err := OpenState(filepath.Join(dir, "state", "kv.state"), DefaultState)
		if err != nil {
			t.Fatal(err)
		}
		for d, n := range acked {
			if have := lastSeq(s, d); have < n {
				t.Errorf("round %d: %s restored at %d, acknowledged %d: lost %d", round, d, have, n, n-have)
			}
		}
		s.Close()
	}
	if len(acked) != 8 {
		t.Errorf("devices acknowledged: %v", acked)
	}
	t.Logf("8 kills, %d acknowledged invocations, 0 state changes lost", total)
}

// BenchmarkStatePut is an invocation that stores its input under its
// device (kvGuest): in memory, and persisted (fsync per commit group),
// from 1 and 16 goroutines (group commit).
func BenchmarkStatePut(b *testing.B) {
	for _, c := range []struct {
		name    string
		file    bool
		writers int
	}{{"memory", false, 1}, {"file", true, 1}, {"file-16-writers", true, 16}} {
		b.Run(c.name, func(b *testing.B) {
			st := NewState(DefaultState)
			if c.file {
				var err error
				if st, err = OpenState(filepath.Join(b.TempDir(), "kv.state"), DefaultState); err != nil {
					b.Fatal(err)
				}
				defer st.Close()
			}
			rt := newRT(b)
			man := testManifest("kv")
			man.Limits.Instances = c.writers
			m, err := rt.Load(context.Background(), man, kvGuest(), LoadOptions{State: st})
			if err != nil {
				b.Fatal(err)
			}
			defer m.Close(context.Background())
			var next atomic.Int64
			b.SetParallelism(c.writers)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				dev := fmt.Sprint("d", next.Add(1))
				in := &Input{Topic: "in/" + dev, DeviceID: dev, Payload: make([]byte, 200)}
				for pb.Next() {
					if err := m.OnMessage(context.Background(), in, nil); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
