package module

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// tcfg is a config section with defaults and validation.
type tcfg struct {
	Port int
	Name string
}

func (c *tcfg) SetDefaults() {
	if c.Name == "" {
		c.Name = "default"
	}
}

func (c tcfg) Validate() error {
	if c.Port < 0 {
		return fmt.Errorf("port: %d is negative", c.Port)
	}
	return nil
}

// typed records what its typed Init and Start receive.
type typed struct {
	name    string
	journal *journal
	got     []tcfg
}

func (m *typed) Name() string { return m.name }
func (m *typed) Init(_ context.Context, c *tcfg) error {
	m.got = append(m.got, *c)
	m.journal.add(fmt.Sprintf("init:%s=%s/%d", m.name, c.Name, c.Port))
	return nil
}
func (m *typed) Start(context.Context) error { m.journal.add("start:" + m.name); return nil }
func (m *typed) Stop(context.Context) error  { m.journal.add("stop:" + m.name); return nil }
func (m *typed) Health() Status              { return Status{State: StateReady} }

// typedReconf can reconfigure in place.
type typedReconf struct{ typed }

func (m *typedReconf) Reconfigure(_ context.Context, c *tcfg) error {
	m.journal.add(fmt.Sprintf("reconfigure:%s=%s/%d", m.name, c.Name, c.Port))
	return nil
}

// The adapter is the one config preamble: every accepted form of the
// section reaches Init as a defaulted, validated copy; a wrong type or an
// invalid section is refused before the module sees it, naming the module.
func TestOfPreamble(t *testing.T) {
	orig := &tcfg{Port: 1}
	tests := []struct {
		name    string
		cfg     any
		want    string // journal
		wantErr error
		mention string
	}{
		{"pointer", orig, "init:m=default/1", nil, ""},
		{"value", tcfg{Port: 2, Name: "x"}, "init:m=x/2", nil, ""},
		{"nil is the zero section", nil, "init:m=default/0", nil, ""},
		{"nil pointer is the zero section", (*tcfg)(nil), "init:m=default/0", nil, ""},
		{"wrong type", 42, "", ErrConfigType, "m: int, want module.tcfg"},
		{"invalid", &tcfg{Port: -1}, "", nil, "m: port: -1 is negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j := &journal{}
			m := Of[tcfg](&typed{name: "m", journal: j})
			err := m.Init(context.Background(), tt.cfg)
			if tt.mention != "" {
				if err == nil || !strings.Contains(err.Error(), tt.mention) || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) {
					t.Fatalf("err %v, want %v mentioning %q", err, tt.wantErr, tt.mention)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if got := j.String(); got != tt.want {
				t.Fatalf("calls %q, want %q", got, tt.want)
			}
		})
	}
	if orig.Name != "" {
		t.Fatalf("the caller's section was modified: %+v", orig)
	}
}

// Reconfigure goes through the same preamble, in place when the module
// can, else by restarting it alone; the adapter carries the dependencies
// the integrator gives it, and the Runner orders and drives adapted
// modules like any other.
func TestOfReconfigureAndDeps(t *testing.T) {
	j := &journal{}
	r, err := NewRunner(nil,
		Of[tcfg](&typedReconf{typed{name: "b", journal: j}}, "a"),
		Of[tcfg](&typed{name: "a", journal: j}),
	)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background(), func(string) any { return &tcfg{Port: 1} }, 0); err != nil {
		t.Fatal(err)
	}
	if err := r.Reconfigure(context.Background(), "b", tcfg{Port: 2}); err != nil {
		t.Fatal(err)
	}
	if err := r.Reconfigure(context.Background(), "a", &tcfg{Port: 3}); err != nil {
		t.Fatal(err)
	}
	if err := r.Reconfigure(context.Background(), "a", &tcfg{Port: -3}); err == nil || !strings.Contains(err.Error(), "a: port") {
		t.Fatalf("invalid section at reconfigure: %v", err)
	}
	if err := r.Reconfigure(context.Background(), "b", "x"); !errors.Is(err, ErrConfigType) {
		t.Fatalf("wrong type at reconfigure: %v", err)
	}
	want := "init:a=default/1 start:a init:b=default/1 start:b reconfigure:b=default/2 stop:a init:a=default/3 start:a"
	if got := j.String(); got != want {
		t.Fatalf("calls\n got %s\nwant %s", got, want)
	}
	m, _ := r.Get("b")
	if _, ok := Unwrap(m).(*typedReconf); !ok {
		t.Fatalf("Unwrap gave %T", Unwrap(m))
	}
}

type untypedReconf struct{ typed }

func (*untypedReconf) Reconfigure(context.Context, any) error { return nil }

// A typed module whose Reconfigure kept the untyped signature would be
// restarted on every change: Of refuses it at construction.
func TestOfRefusesUntypedReconfigure(t *testing.T) {
	defer func() {
		if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), "Reconfigure takes any") {
			t.Fatalf("recover() = %v", r)
		}
	}()
	Of[tcfg](&untypedReconf{typed{name: "x"}})
}
