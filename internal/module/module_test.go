package module

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// fake is a module that records every call in a shared journal.
type fake struct {
	name      string
	deps      []string
	initErr   error
	startErr  error
	stopErr   error
	stopBlock chan struct{} // Stop waits on it when set
	journal   *journal
}

type journal struct {
	mu    sync.Mutex
	calls []string
}

func (j *journal) add(s string) { j.mu.Lock(); j.calls = append(j.calls, s); j.mu.Unlock() }
func (j *journal) String() string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return strings.Join(j.calls, " ")
}

func (f *fake) Name() string { return f.name }
func (f *fake) Init(_ context.Context, cfg any) error {
	f.journal.add("init:" + f.name + "=" + cfg.(string))
	return f.initErr
}
func (f *fake) Start(context.Context) error { f.journal.add("start:" + f.name); return f.startErr }
func (f *fake) Stop(ctx context.Context) error {
	f.journal.add("stop:" + f.name)
	if f.stopBlock != nil {
		select {
		case <-f.stopBlock:
		case <-ctx.Done():
		}
	}
	return f.stopErr
}
func (f *fake) Health() Status      { return Status{State: StateReady, Detail: f.name} }
func (f *fake) DependsOn() []string { return f.deps }

// reconf is a fake that can reconfigure in place.
type reconf struct{ fake }

func (r *reconf) Reconfigure(_ context.Context, cfg any) error {
	r.journal.add("reconfigure:" + r.name + "=" + cfg.(string))
	return nil
}

func cfgByName(name string) any { return name + "-cfg" }

func TestNewRunnerOrdersByDependencies(t *testing.T) {
	j := &journal{}
	mods := []Module{
		&fake{name: "uplink", deps: []string{"queue", "broker"}, journal: j},
		&fake{name: "broker", journal: j},
		&fake{name: "queue", journal: j},
		&fake{name: "telemetry", journal: j},
	}
	r, err := NewRunner(nil, mods...)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range r.Modules() {
		names = append(names, m.Name())
	}
	if got, want := strings.Join(names, ","), "queue,broker,uplink,telemetry"; got != want {
		t.Fatalf("order %s, want %s (dependencies first, ties in given order)", got, want)
	}
}

func TestNewRunnerRefusesBadGraphs(t *testing.T) {
	j := &journal{}
	tests := []struct {
		name    string
		mods    []Module
		want    error
		mention string
	}{
		{"duplicate", []Module{&fake{name: "a", journal: j}, &fake{name: "a", journal: j}}, ErrDuplicate, "a"},
		{"unknown", []Module{&fake{name: "a", deps: []string{"zz"}, journal: j}}, ErrUnknownDependency, "a depends on zz"},
		{"cycle", []Module{
			&fake{name: "a", deps: []string{"b"}, journal: j},
			&fake{name: "b", deps: []string{"c"}, journal: j},
			&fake{name: "c", deps: []string{"a"}, journal: j},
		}, ErrCycle, "a -> b -> c -> a"},
		{"self", []Module{&fake{name: "a", deps: []string{"a"}, journal: j}}, ErrCycle, "a -> a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewRunner(nil, tt.mods...)
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.mention) {
				t.Fatalf("err %v, want %v naming %q", err, tt.want, tt.mention)
			}
		})
	}
}

func TestStartStopOrderAndConfig(t *testing.T) {
	j := &journal{}
	r, err := NewRunner(nil,
		&fake{name: "b", deps: []string{"a"}, journal: j},
		&fake{name: "a", journal: j},
	)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background(), cfgByName, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := r.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := r.Stop(context.Background()); err != nil { // idempotent
		t.Fatal(err)
	}
	want := "init:a=a-cfg start:a init:b=b-cfg start:b stop:b stop:a"
	if got := j.String(); got != want {
		t.Fatalf("calls\n got %s\nwant %s", got, want)
	}
}

func TestFailedStartStopsWhatStarted(t *testing.T) {
	boom := errors.New("boom")
	for _, tt := range []struct {
		name      string
		initErr   error
		startErr  error
		wantCalls string
	}{
		{"init fails", boom, nil, "init:a=a-cfg start:a init:b=b-cfg start:b init:c=c-cfg stop:b stop:a"},
		{"start fails", nil, boom, "init:a=a-cfg start:a init:b=b-cfg start:b init:c=c-cfg start:c stop:b stop:a"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			j := &journal{}
			r, err := NewRunner(nil,
				&fake{name: "a", journal: j},
				&fake{name: "b", journal: j},
				&fake{name: "c", initErr: tt.initErr, startErr: tt.startErr, journal: j},
				&fake{name: "d", journal: j},
			)
			if err != nil {
				t.Fatal(err)
			}
			err = r.Start(context.Background(), cfgByName, time.Second)
			var se *StartError
			if !errors.As(err, &se) || se.Module != "c" || !errors.Is(err, boom) {
				t.Fatalf("err %v, want a StartError for c wrapping boom", err)
			}
			if got := j.String(); got != tt.wantCalls {
				t.Fatalf("calls\n got %s\nwant %s", got, tt.wantCalls)
			}
		})
	}
}

// A module whose Stop overruns the deadline is reported, and the modules
// started before it are still stopped (their Stop is called, even though
// the deadline has passed for them too: stopBounded then reports the
// deadline or their own error, whichever it sees first).
func TestStopOverrunIsReportedAndOthersStillStop(t *testing.T) {
	j := &journal{}
	block := make(chan struct{})
	defer close(block)
	r, err := NewRunner(nil,
		&fake{name: "a", journal: j},
		&fake{name: "b", journal: j},
		&fake{name: "c", stopBlock: block, journal: j},
	)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background(), cfgByName, time.Second); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err = r.Stop(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "module c: stop") {
		t.Fatalf("stop error %v, want c's deadline, named", err)
	}
	// Past the deadline, stopBounded returns without waiting, so b's and
	// a's Stop run in the background: wait for them to be called.
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(j.String(), "stop:a") && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := j.String(); !strings.Contains(got, "stop:c") || !strings.Contains(got, "stop:b") || !strings.Contains(got, "stop:a") {
		t.Fatalf("calls %s, want every module's Stop called", got)
	}
}

// A Stop error within the deadline is reported with the module's name and
// does not keep the modules before it from stopping.
func TestStopErrorIsReportedAndOthersStillStop(t *testing.T) {
	j := &journal{}
	failing := errors.New("disk gone")
	r, err := NewRunner(nil, &fake{name: "a", journal: j}, &fake{name: "b", stopErr: failing, journal: j})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background(), cfgByName, time.Second); err != nil {
		t.Fatal(err)
	}
	err = r.Stop(context.Background())
	if !errors.Is(err, failing) || !strings.Contains(err.Error(), "module b: stop") {
		t.Fatalf("stop error %v, want b's failure, named", err)
	}
	if got := j.String(); !strings.HasSuffix(got, "stop:b stop:a") {
		t.Fatalf("calls %s", got)
	}
}

func TestReconfigureInPlaceOrRestart(t *testing.T) {
	j := &journal{}
	r, err := NewRunner(nil,
		&reconf{fake{name: "rules", journal: j}},
		&fake{name: "pipeline", journal: j},
	)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background(), cfgByName, time.Second); err != nil {
		t.Fatal(err)
	}
	base := len(j.String())
	if err := r.Reconfigure(context.Background(), "rules", "v2"); err != nil {
		t.Fatal(err)
	}
	if err := r.Reconfigure(context.Background(), "pipeline", "v2"); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.TrimSpace(j.String()[base:]), "reconfigure:rules=v2 stop:pipeline init:pipeline=v2 start:pipeline"; got != want {
		t.Fatalf("calls\n got %s\nwant %s", got, want)
	}
	if err := r.Reconfigure(context.Background(), "nope", "x"); !errors.Is(err, ErrUnknownDependency) {
		t.Fatalf("unknown module: %v", err)
	}
	h := r.Health()
	if len(h) != 2 || h[0].Name != "pipeline" || h[1].Name != "rules" || !h[0].Ready() {
		t.Fatalf("health %+v, want both, sorted by name, ready", h)
	}
}
