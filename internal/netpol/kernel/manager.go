package kernel

import (
	"context"
	"errors"
	"fmt"
	"github.com/outpost-edge/outpost/internal/netpol"
	"log/slog"
	"net"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"

	"github.com/VictoriaMetrics/metrics"
	"golang.org/x/sys/unix"

	"github.com/outpost-edge/outpost/internal/module"
)

// Options are the Manager's dependencies.
type Options struct {
	Log     *slog.Logger
	Metrics *metrics.Set
	// PinRoot is the bpffs directory for pinned programs and maps.
	// Default /sys/fs/bpf/outpost.
	PinRoot string
	// Netns is the network namespace whose interfaces are filtered (a path
	// such as /var/run/netns/gw); empty means the agent's own.
	Netns string
	// LBCgroup is the cgroup v2 directory the socket load balancer
	// attaches to; empty means the root of the first cgroup2 mount.
	LBCgroup string
	// ComponentHealthy answers a load-balancer backend's health from the
	// supervisor (known false: not a component; then a TCP check decides).
	ComponentHealthy func(component string) (healthy, known bool)
}

// backend is what Manager needs from an enforcement backend.
type backend interface {
	Name() string
	Apply(netpol.Interface) error
	Stats(iface string) (netpol.Stats, error)
	Remove(iface string) error
	Close() error
}

// Manager applies netpol.Config to the chosen backend; it is the agent's netpol
// module.
type Manager struct {
	opts Options
	log  *slog.Logger

	mu       sync.Mutex
	cfg      netpol.Config
	be       backend
	fallback string // why ebpf was not used, when auto fell back
	applied  map[string]netpol.Interface
	errText  string
	lb       *balancer
}

// New returns a Manager; nothing is applied before Apply (or Start).
func New(opts Options) *Manager {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.PinRoot == "" {
		opts.PinRoot = "/sys/fs/bpf/outpost"
	}
	m := &Manager{opts: opts, log: opts.Log.With("module", "netpol"), applied: map[string]netpol.Interface{}}
	if opts.Metrics != nil {
		opts.Metrics.NewGauge(`outpost_netpol_interfaces`, func() float64 {
			m.mu.Lock()
			defer m.mu.Unlock()
			return float64(len(m.applied))
		})
	}
	return m
}

// inNS runs fn on an OS thread switched into the configured namespace.
func (m *Manager) inNS(fn func() error) error {
	if m.opts.Netns == "" {
		return fn()
	}
	runtime.LockOSThread()
	// The thread is not unlocked on purpose if restoring fails: Go then
	// retires it instead of reusing a thread in the wrong namespace.
	orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	ns, err := os.Open(m.opts.Netns)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netpol: netns: %w", err)
	}
	defer ns.Close()
	if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netpol: enter netns %s: %w", m.opts.Netns, err)
	}
	ferr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		return errors.Join(ferr, fmt.Errorf("netpol: leave netns: %w", err))
	}
	runtime.UnlockOSThread()
	return ferr
}

func (m *Manager) open(kind string) (backend, string, error) {
	switch kind {
	case "ebpf":
		b, err := newXDPBackend(m.opts.PinRoot, m.inNS)
		return b, "", err
	case "nftables":
		b, err := m.openNFT()
		return b, "", err
	}
	b, err := newXDPBackend(m.opts.PinRoot, m.inNS)
	if err == nil {
		return b, "", nil
	}
	why := err.Error()
	nb, nerr := m.openNFT()
	if nerr != nil {
		return nil, "", errors.Join(err, nerr)
	}
	return nb, why, nil
}

// openNFT opens the nftables backend in the configured namespace. Its
// netlink socket is made (in that namespace) when the connection opens and
// is kept, so the namespace file is needed only until then.
func (m *Manager) openNFT() (*nftBackend, error) {
	if m.opts.Netns == "" {
		return newNFTBackend(-1)
	}
	f, err := os.Open(m.opts.Netns)
	if err != nil {
		return nil, fmt.Errorf("netpol: netns: %w", err)
	}
	defer f.Close()
	return newNFTBackend(int(f.Fd()))
}

// Apply validates cfg as a whole and applies it: every interface's policy
// is replaced atomically; interfaces no longer listed are released. An
// invalid cfg changes nothing.
func (m *Manager) Apply(cfg netpol.Config) error {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	// Every interface must exist before anything changes: a policy naming
	// a missing one is refused whole, and the running policy stays (the
	// others are not detached on the way).
	if err := m.inNS(func() error {
		var errs []error
		for i, itf := range cfg.Interfaces {
			if _, err := net.InterfaceByName(itf.Name); err != nil {
				errs = append(errs, fmt.Errorf("netpol: interfaces[%d].name: %q: no such interface here (%v)", i, itf.Name, err))
			}
		}
		return errors.Join(errs...)
	}); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.be != nil && cfg.Backend != m.cfg.Backend && !(cfg.Backend == "auto") {
		if cfg.Backend != m.be.Name() {
			if err := m.be.Close(); err != nil {
				m.log.Warn("closing the previous backend", "err", err)
			}
			m.be = nil
			m.applied = map[string]netpol.Interface{}
		}
	}
	if m.be == nil {
		be, why, err := m.open(cfg.Backend)
		if err != nil {
			m.errText = err.Error()
			return err
		}
		m.be, m.fallback = be, why
		if why != "" {
			m.log.Warn("eBPF unavailable; enforcing with nftables", "reason", why)
		}
	}
	var errs []error
	keep := map[string]bool{}
	for _, itf := range cfg.Interfaces {
		keep[itf.Name] = true
		if err := m.be.Apply(itf); err != nil {
			errs = append(errs, err)
			continue
		}
		m.applied[itf.Name] = itf
	}
	for name := range m.applied {
		if !keep[name] {
			if err := m.be.Remove(name); err != nil {
				errs = append(errs, err)
			}
			delete(m.applied, name)
		}
	}
	if err := m.applyLB(cfg); err != nil {
		errs = append(errs, err)
	}
	m.cfg = cfg
	err := errors.Join(errs...)
	m.errText = ""
	if err != nil {
		m.errText = err.Error()
	}
	return err
}

// BackendName is "ebpf", "nftables" or "" before the first Apply.
func (m *Manager) BackendName() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.be == nil {
		return ""
	}
	return m.be.Name()
}

// netpol.Status reads every interface's counters.
func (m *Manager) Status() netpol.Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := netpol.Status{Fallback: m.fallback, Interfaces: map[string]netpol.Stats{}, Error: m.errText}
	if m.be == nil {
		return st
	}
	st.Backend = m.be.Name()
	if m.lb != nil {
		var lerr string
		st.LoadBalancers, lerr = m.lb.status()
		if lerr != "" {
			st.Error = lerr
		}
	}
	for name := range m.applied {
		s, err := m.be.Stats(name)
		if err != nil {
			st.Error = err.Error()
			continue
		}
		st.Interfaces[name] = s
	}
	return st
}

// Test evaluates a packet against the applied policy of iface.
func (m *Manager) Test(iface string, p netpol.Packet) (netpol.Decision, error) {
	m.mu.Lock()
	itf, ok := m.applied[iface]
	m.mu.Unlock()
	if !ok {
		return netpol.Decision{}, fmt.Errorf("netpol: no policy on %q", iface)
	}
	return netpol.Decide(itf, p)
}

// Close releases the backend (see netpol.Interface.OnAgentStop for what
// stays); eBPF load balancers keep balancing over their last healthy
// backends (pinned) until the next agent takes over.
func (m *Manager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var lerr error
	if m.lb != nil {
		lerr = m.lb.stop()
	}
	if m.be == nil {
		return lerr
	}
	err := errors.Join(m.be.Close(), lerr)
	m.be = nil
	m.applied = map[string]netpol.Interface{}
	return err
}

// Module contract (module.Typed; module.Of defaults and validates the
// section before Init and Reconfigure).

var _ module.TypedReconfigurable[netpol.Config] = (*Manager)(nil)

func (m *Manager) Name() string { return "netpol" }

func (m *Manager) Init(_ context.Context, c *netpol.Config) error {
	m.mu.Lock()
	m.cfg = *c
	m.mu.Unlock()
	return nil
}

func (m *Manager) Start(context.Context) error {
	m.mu.Lock()
	cfg := m.cfg
	m.mu.Unlock()
	return m.Apply(cfg)
}

func (m *Manager) Stop(context.Context) error { return m.Close() }

func (m *Manager) Reconfigure(_ context.Context, c *netpol.Config) error {
	return m.Apply(*c)
}

func (m *Manager) Health() module.Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.be == nil {
		if m.errText != "" {
			return module.Status{State: module.StateFailed, Detail: m.errText}
		}
		return module.Status{State: module.StateStarting, Detail: "not applied yet"}
	}
	names := make([]string, 0, len(m.applied))
	for n := range m.applied {
		names = append(names, n)
	}
	sort.Strings(names)
	detail := fmt.Sprintf("backend %s on %s", m.be.Name(), strings.Join(names, ","))
	if m.fallback != "" {
		detail += " (eBPF unavailable: " + m.fallback + ")"
	}
	if m.errText != "" {
		return module.Status{State: module.StateDegraded, Detail: detail + "; " + m.errText}
	}
	return module.Status{State: module.StateReady, Detail: detail}
}
