package function

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

var (
	exampleMu    sync.Mutex
	exampleDir   string
	exampleBuilt = map[string]string{}
)

// buildExample compiles examples/functions/NAME with the standard toolchain
// (GOOS=wasip1 GOARCH=wasm, c-shared: a reactor module), once per test
// binary, and returns the .wasm path.
func buildExample(t testing.TB, name string) string {
	t.Helper()
	exampleMu.Lock()
	defer exampleMu.Unlock()
	if p := exampleBuilt[name]; p != "" {
		return p
	}
	if exampleDir == "" {
		d, err := os.MkdirTemp("", "outpost-fn-examples-")
		if err != nil {
			t.Fatal(err)
		}
		exampleDir = d
	}
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	out := filepath.Join(exampleDir, name+".wasm")
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to build the example functions: %v", err)
	}
	cmd := exec.Command(gobin, "build", "-trimpath", "-buildmode=c-shared", "-o", out, "./examples/functions/"+name)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building examples/functions/%s: %v\n%s", name, err, b)
	}
	exampleBuilt[name] = out
	return out
}

// loadExample loads examples/functions/NAME with its own manifest.
func loadExample(t testing.TB, rt *Runtime, name string, opts LoadOptions) *Module {
	t.Helper()
	wasm, err := os.ReadFile(buildExample(t, name))
	if err != nil {
		t.Fatal(err)
	}
	_, file, _, _ := runtime.Caller(0)
	mpath := filepath.Join(filepath.Dir(file), "..", "..", "examples", "functions", name, ManifestFile)
	raw, err := os.ReadFile(mpath)
	if err != nil {
		t.Fatal(err)
	}
	man, err := ParseManifest(mpath, raw)
	if err != nil {
		t.Fatal(err)
	}
	m, err := rt.Load(context.Background(), man, wasm, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close(context.Background()) })
	return m
}

// exampleRT shares one on-disk compilation cache between test runs: a
// Go-built module takes seconds to compile (over a minute under -race).
func exampleRT(t testing.TB) *Runtime {
	t.Helper()
	rt, err := NewRuntime(RuntimeOptions{CacheDir: filepath.Join(os.TempDir(), "outpost-function-test-cache")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.Close(context.Background()) })
	return rt
}

func TestExampleAnomaly(t *testing.T) {
	rt := exampleRT(t)
	m := loadExample(t, rt, "anomaly", LoadOptions{})
	ctx := context.Background()
	num := func(f float64) Value { return Value{Kind: KindNum, Num: f} }
	// Per-device state: d1 learns a baseline, then an outlier is flagged;
	// d2 has its own state, so its first reading is not an anomaly.
	for i := 0; i < 4; i++ {
		v, err := m.Call(ctx, "anomaly", "d1", []Value{num(20), num(1)})
		if err != nil || v.Kind != KindBool || v.Num != 0 {
			t.Fatalf("baseline call %d = %+v, %v", i, v, err)
		}
	}
	if v, err := m.Call(ctx, "anomaly", "d1", []Value{num(90), num(3)}); err != nil || v.Num != 1 {
		t.Fatalf("outlier = %+v, %v; want true", v, err)
	}
	if v, err := m.Call(ctx, "anomaly", "d2", []Value{num(90), num(3)}); err != nil || v.Num != 0 {
		t.Fatalf("d2 first reading = %+v, %v; want false", v, err)
	}
	// Bad arguments are an error on that call.
	if _, err := m.Call(ctx, "anomaly", "d1", []Value{{Kind: KindStr, Str: "hot"}, num(1)}); !errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), "numbers") {
		t.Fatalf("bad args: %v", err)
	}
	// Standalone: messages on the trigger emit an alert for the outlier.
	var out []string
	emit := func(_ context.Context, topic string, p []byte) error {
		out = append(out, topic+" "+string(p))
		return nil
	}
	for i, p := range []string{`{"temp":20,"vibration":1}`, `{"temp":20,"vibration":1}`, `{"temp":20,"vibration":1}`, `{"temp":21,"vibration":1}`, `{"temp":95,"vibration":4}`} {
		if err := m.OnMessage(ctx, &Input{Topic: "sensors/d3/vib", DeviceID: "d3", Payload: []byte(p)}, emit); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	if len(out) != 1 || out[0] != `alerts/anomaly/d3 {"device":"d3","temp":95,"vibration":4}` {
		t.Fatalf("emitted %q", out)
	}
	if err := m.OnMessage(ctx, &Input{Topic: "sensors/d3/vib", DeviceID: "d3", Payload: []byte(`not json`)}, emit); !errors.Is(err, ErrFailed) {
		t.Fatalf("bad payload: %v", err)
	}
	st := rt.Stats("anomaly")
	if st.Invocations[entryCall] != 7 || st.Errors[entryCall]["error"] != 1 || st.Errors[entryMessage]["error"] != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestExampleNoop(t *testing.T) {
	m := loadExample(t, exampleRT(t), "noop", LoadOptions{})
	v, err := m.Call(context.Background(), "noop", "d", []Value{{Kind: KindStr, Str: "echo"}})
	if err != nil || v.Kind != KindStr || v.Str != "echo" {
		t.Fatalf("noop = %+v, %v", v, err)
	}
	if err := m.OnMessage(context.Background(), &Input{Topic: "noop/x"}, nil); err != nil {
		t.Fatal(err)
	}
}

func TestMain(m *testing.M) {
	if dir := os.Getenv(kill9ChildEnv); dir != "" {
		kill9Child(dir) // never returns: runs until killed
	}
	code := m.Run()
	if exampleDir != "" {
		_ = os.RemoveAll(exampleDir)
	}
	os.Exit(code)
}
