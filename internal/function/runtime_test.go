package function

import (
	"context"
	"errors"
	"math"
	"strings"
	"sync"
	"testing"
	"time"
)

func testManifest(name string) *Manifest {
	m := &Manifest{Name: name, Version: 1, Module: name + ".wasm", Entry: Entry{Callable: true},
		Triggers: []Trigger{{From: []string{"in/#"}, To: []string{"republish"}}}}
	m.SetDefaults()
	if err := m.Validate(); err != nil {
		panic(err)
	}
	return m
}

func newRT(t testing.TB) *Runtime {
	t.Helper()
	rt, err := NewRuntime(RuntimeOptions{CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.Close(context.Background()) })
	return rt
}

func load(t testing.TB, rt *Runtime, man *Manifest, wasm []byte) *Module {
	t.Helper()
	m, err := rt.Load(context.Background(), man, wasm, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close(context.Background()) })
	return m
}

var num42 = AppendValue(nil, Value{Kind: KindNum, Num: 42})

var (
	bodyEmit   = cat(i32c(0), i32c(0), lget(0), lget(1), call(fnEmit), opDrop, i32c(0))
	bodyResult = cat(i32c(0), i32c(int32(len(num42))), call(fnResult), i32c(0))
	bodyLoop   = cat(opLoopForever, i32c(0))
	bodyTrap   = cat(opUnreachable, i32c(0))
	bodyGrow   = cat(opGrowUntilFail, i32c(0))
	bodyBadPtr = cat(i32c(0), i32c(-65536), i32c(100), call(fnLog), i32c(0))
	bodyFail   = cat(i32c(int32(len(num42))), i32c(5), call(fnFail), i32c(1))
)

func TestHandWrittenGuest(t *testing.T) {
	rt := newRT(t)
	m := load(t, rt, testManifest("echo"), guest(bodyEmit, bodyResult, num42))
	ctx := context.Background()
	v, err := m.Call(ctx, "echo", "d1", []Value{{Kind: KindStr, Str: "x"}})
	if err != nil || v.Kind != KindNum || v.Num != 42 {
		t.Fatalf("Call = %+v, %v; want 42", v, err)
	}
	in := &Input{Topic: "in/a", DeviceID: "d1", Payload: []byte(`{"x":1}`)}
	var got []string
	err = m.OnMessage(ctx, in, func(_ context.Context, topic string, p []byte) error {
		dec, err := DecodeInput(p)
		if err != nil {
			return err
		}
		got = append(got, topic+" "+string(dec.Payload))
		return nil
	})
	if err != nil || len(got) != 1 || got[0] != `in/a {"x":1}` {
		t.Fatalf("OnMessage: %v, emitted %q", err, got)
	}
}

// Each fault fails only its invocation, is counted under its reason, and
// the next invocation of the same function succeeds on a fresh instance.
func TestFaults(t *testing.T) {
	cases := []struct {
		name   string
		body   []byte
		want   error
		reason string
	}{
		{"loop", bodyLoop, ErrTimeout, "timeout"},
		{"trap", bodyTrap, ErrTrap, "trap"},
		{"grow", bodyGrow, ErrTrap, "trap"},
		{"badptr", bodyBadPtr, ErrBadPointer, "bad_pointer"},
		{"fail", bodyFail, ErrFailed, "error"},
	}
	rt := newRT(t)
	ctx := context.Background()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			man := testManifest(c.name)
			man.Limits.Timeout = 5 * 1e9
			if c.name == "loop" {
				man.Limits.Timeout = 50 * 1e6
			}
			man.Limits.Memory = 1 << 20 // 16 pages
			m := load(t, rt, man, guest(c.body, bodyResult, append(append([]byte(nil), num42...), "boom!"...)))
			start := time.Now()
			err := m.OnMessage(ctx, &Input{Topic: "in/x"}, nil)
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			if c.name == "loop" && time.Since(start) > 2*time.Second {
				t.Errorf("the runaway loop was stopped after %v", time.Since(start))
			}
			if c.name == "fail" && !strings.Contains(err.Error(), "boom!") {
				t.Errorf("err = %v, want the guest's message", err)
			}
			st := rt.Stats(c.name)
			if st.Errors[entryMessage][c.reason] != 1 || st.Invocations[entryMessage] != 1 {
				t.Errorf("stats = %+v, want one %s error of one invocation", st, c.reason)
			}
			if c.name == "loop" && st.Timeouts != 1 {
				t.Errorf("timeouts = %d", st.Timeouts)
			}
			if st.MemoryHighWater > 1<<20 {
				t.Errorf("memory high water %d over the 1 MiB cap", st.MemoryHighWater)
			}
			if c.name == "grow" && st.MemoryHighWater != 1<<20 {
				t.Errorf("memory high water %d, want the cap", st.MemoryHighWater)
			}
			// The same function keeps serving.
			if v, err := m.Call(ctx, c.name, "d", nil); err != nil || v.Num != 42 {
				t.Fatalf("call after the fault: %+v, %v", v, err)
			}
		})
	}
}

func TestLoadErrors(t *testing.T) {
	good := guest(bodyEmit, bodyResult, num42)
	noAlloc := wmodule{types: stdTypes, memMin: 1, memMax: -1,
		funcs:   []wfunc{{typ: 1, body: i32c(0)}},
		exports: []wexport{{"memory", 2, 0}, {DefaultOnMessage, 0, 0}, {DefaultCall, 0, 0}}}
	wrongSig := wmodule{types: stdTypes, memMin: 1, memMax: -1,
		funcs:   []wfunc{{typ: 0, body: i32c(0)}, {typ: 0, body: i32c(0)}},
		exports: []wexport{{"memory", 2, 0}, {AllocExport, 0, 0}, {DefaultOnMessage, 0, 1}, {DefaultCall, 0, 1}}}
	badImport := wmodule{types: stdTypes, memMin: 1, memMax: -1, imports: []wimport{{"env", "socket", 5}},
		funcs:   []wfunc{{typ: 0, body: i32c(0)}, {typ: 1, body: i32c(0)}},
		exports: []wexport{{"memory", 2, 0}, {AllocExport, 0, 1}, {DefaultOnMessage, 0, 2}, {DefaultCall, 0, 2}}}
	cases := []struct {
		name, want string
		wasm       []byte
	}{
		{"garbage", "magic", []byte("not a wasm module at all")},
		{"truncated", "", good[:len(good)-7]},
		{"empty", "", nil},
		{"missing export", `missing export "outpost_alloc"`, noAlloc.bytes()},
		{"wrong signature", `export "outpost_on_message" has signature (i32) -> (i32), want (i32, i32) -> (i32)`, wrongSig.bytes()},
		{"unknown import", "env.socket", badImport.bytes()},
	}
	rt := newRT(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := rt.Load(context.Background(), testManifest("bad"), c.wasm, LoadOptions{})
			if !errors.Is(err, ErrBadModule) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want ErrBadModule containing %q", err, c.want)
			}
		})
	}
}

// A runaway function does not hold up another one running at the same time.
func TestTimeoutIsolation(t *testing.T) {
	rt := newRT(t)
	ctx := context.Background()
	slow := testManifest("slow")
	slow.Limits.Timeout = 200 * 1e6
	ms := load(t, rt, slow, guest(bodyLoop, bodyLoop, nil))
	mf := load(t, rt, testManifest("fast"), guest(bodyEmit, bodyResult, num42))
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = ms.OnMessage(ctx, &Input{}, nil)
	}()
	for i := 0; i < 100; i++ {
		if v, err := mf.Call(ctx, "fast", "d", nil); err != nil || v.Num != 42 {
			t.Fatalf("fast call %d: %v", i, err)
		}
	}
	wg.Wait()
	if rt.Stats("slow").Timeouts != 1 {
		t.Fatalf("slow timeouts = %d", rt.Stats("slow").Timeouts)
	}
}

func TestValueRoundTrip(t *testing.T) {
	for _, v := range []Value{{}, {Kind: KindBool, Num: 1}, {Kind: KindNum, Num: math.Pi}, {Kind: KindStr, Str: "é"}, {Kind: KindJSON, Str: `{"a":[1]}`}} {
		got, err := DecodeValue(AppendValue(nil, v))
		if err != nil || got != v {
			t.Errorf("%+v -> %+v, %v", v, got, err)
		}
	}
	for _, b := range [][]byte{{}, {9}, {KindNum, 1}, {KindStr, 5, 0, 0, 0, 'a'}, {KindBool, 2}, {KindNull, 0}} {
		if _, err := DecodeValue(b); !errors.Is(err, ErrEncoding) {
			t.Errorf("DecodeValue(%v) = %v, want ErrEncoding", b, err)
		}
	}
}
