package kernel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/outpost-edge/outpost/internal/netpol"
)

// The L4 load balancer (see netpol/lb.go for the model). A balancer keeps
// every service's backends and their health; whenever the healthy set
// changes it reprograms the data plane: the cgroup/connect4 programs
// (lbBPF) or, where BPF cannot attach, an nftables nat table (lbNFT).

// lbPlane is a load-balancing data plane.
type lbPlane interface {
	name() string
	// set programs the full desired state (services absent are removed).
	set(svcs []lbProgram) error
	// conns returns connects per backend index and refusals of service id.
	conns(id uint32, n int) ([]uint64, uint64, error)
	close() error
}

// lbProgram is one service as programmed: healthy holds indices into
// svc.Backends, in configuration order.
type lbProgram struct {
	id      uint32
	svc     netpol.LBService
	healthy []int
}

type lbBackendState struct {
	up        bool
	rise      int // consecutive successes while down
	fall      int // consecutive failures while up
	lastError string
}

type lbService struct {
	id     uint32
	svc    netpol.LBService
	state  []lbBackendState
	cancel context.CancelFunc
	done   chan struct{}
}

// balancer runs the health checks and owns the plane.
type balancer struct {
	m     *Manager
	mu    sync.Mutex
	plane lbPlane
	svcs  map[string]*lbService
	ids   map[string]uint32
	err   string
}

func (m *Manager) openLBPlane(kind string) (lbPlane, string, error) {
	bpf := func() (lbPlane, error) { return newLBBPF(m.opts.PinRoot, m.lbCgroup(), m.inNS) }
	nft := func() (lbPlane, error) { return m.newLBNFT() }
	switch kind {
	case "ebpf":
		p, err := bpf()
		return p, "", err
	case "nftables":
		p, err := nft()
		return p, "", err
	}
	p, err := bpf()
	if err == nil {
		return p, "", nil
	}
	np, nerr := nft()
	if nerr != nil {
		return nil, "", errors.Join(err, nerr)
	}
	return np, err.Error(), nil
}

// applyLB reconciles the load balancers with cfg (valid). Called with
// m.mu held.
func (m *Manager) applyLB(cfg netpol.Config) error {
	if m.lb == nil {
		if len(cfg.LoadBalancers) == 0 {
			return nil
		}
		m.lb = &balancer{m: m, svcs: map[string]*lbService{}, ids: map[string]uint32{}}
	}
	b := m.lb
	// Stop the checkers first (outside b.mu: they take it).
	b.mu.Lock()
	running := make([]*lbService, 0, len(b.svcs))
	for _, s := range b.svcs {
		running = append(running, s)
	}
	b.mu.Unlock()
	for _, s := range running {
		s.cancel()
		<-s.done
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.plane != nil && cfg.Backend != "auto" && cfg.Backend != b.plane.name() {
		b.plane.close()
		b.plane = nil
	}
	if b.plane == nil && len(cfg.LoadBalancers) > 0 {
		p, why, err := m.openLBPlane(cfg.Backend)
		if err != nil {
			b.err = err.Error()
			return fmt.Errorf("netpol: load balancer: %w", err)
		}
		if why != "" {
			m.log.Warn("eBPF socket load balancing unavailable; balancing with nftables", "reason", why)
		}
		b.plane = p
	}
	keep := map[string]bool{}
	for _, s := range cfg.LoadBalancers {
		keep[s.Name] = true
		old := b.svcs[s.Name]
		id, ok := b.ids[s.Name]
		if !ok {
			id = b.freeID()
			b.ids[s.Name] = id
		}
		ns := &lbService{id: id, svc: s, state: make([]lbBackendState, len(s.Backends))}
		// A backend that was up under the same address stays up: a reload
		// does not drop healthy backends until their check says so.
		if old != nil {
			prev := map[string]lbBackendState{}
			for i, be := range old.svc.Backends {
				prev[be.Address+"|"+be.Component] = old.state[i]
			}
			for i, be := range s.Backends {
				ns.state[i] = prev[be.Address+"|"+be.Component]
			}
		}
		b.svcs[s.Name] = ns
	}
	for name := range b.svcs {
		if !keep[name] {
			delete(b.svcs, name)
			delete(b.ids, name)
		}
	}
	// Probe once synchronously so the first program has the real set.
	for _, s := range b.svcs {
		if keep[s.svc.Name] {
			b.probe(s)
		}
	}
	err := b.programLocked()
	for _, s := range b.svcs {
		ctx, cancel := context.WithCancel(context.Background())
		s.cancel, s.done = cancel, make(chan struct{})
		go b.run(ctx, s)
	}
	if b.plane != nil && len(b.svcs) == 0 {
		err = errors.Join(err, b.plane.close())
		b.plane = nil
	}
	return err
}

func (b *balancer) freeID() uint32 {
	used := map[uint32]bool{}
	for _, id := range b.ids {
		used[id] = true
	}
	for id := uint32(0); ; id++ {
		if !used[id] {
			return id
		}
	}
}

// programLocked writes every service's healthy set to the plane.
func (b *balancer) programLocked() error {
	if b.plane == nil {
		return nil
	}
	ps := make([]lbProgram, 0, len(b.svcs))
	for _, s := range b.svcs {
		p := lbProgram{id: s.id, svc: s.svc}
		for i, st := range s.state {
			if st.up {
				p.healthy = append(p.healthy, i)
			}
		}
		ps = append(ps, p)
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].id < ps[j].id })
	err := b.plane.set(ps)
	b.err = ""
	if err != nil {
		b.err = err.Error()
	}
	return err
}

func (b *balancer) run(ctx context.Context, s *lbService) {
	defer close(s.done)
	t := time.NewTicker(s.svc.Health.Interval.D())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		b.mu.Lock()
		changed := b.probe(s)
		if changed && ctx.Err() == nil {
			if err := b.programLocked(); err != nil {
				b.m.log.Error("load balancer: reprogram", "service", s.svc.Name, "err", err)
			}
		}
		b.mu.Unlock()
	}
}

// probe checks every backend of s once (concurrently) and updates their
// states; it reports whether a backend went up or down. Called with b.mu.
func (b *balancer) probe(s *lbService) bool {
	h := s.svc.Health
	res := make([]error, len(s.svc.Backends))
	var wg sync.WaitGroup
	for i, be := range s.svc.Backends {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i] = b.check(be, s.svc.Proto, h.Timeout.D())
		}()
	}
	wg.Wait()
	changed := false
	for i, err := range res {
		st := &s.state[i]
		if err == nil {
			st.fall, st.lastError = 0, ""
			if !st.up {
				st.rise++
				if st.rise >= h.Rise {
					st.up, st.rise, changed = true, 0, true
					b.m.log.Info("load balancer: backend up", "service", s.svc.Name, "backend", s.svc.Backends[i].Address)
				}
			}
			continue
		}
		st.rise, st.lastError = 0, err.Error()
		if st.up {
			st.fall++
			if st.fall >= h.Fall {
				st.up, st.fall, changed = false, 0, true
				b.m.log.Warn("load balancer: backend down", "service", s.svc.Name, "backend", s.svc.Backends[i].Address, "err", err)
			}
		}
	}
	return changed
}

// check is the component's health where the backend is a supervised
// component the agent knows, else a TCP connect (or a UDP datagram) in the
// configured netns.
func (b *balancer) check(be netpol.LBBackend, proto string, timeout time.Duration) error {
	if be.Component != "" && b.m.opts.ComponentHealthy != nil {
		if ok, known := b.m.opts.ComponentHealthy(be.Component); known {
			if !ok {
				return fmt.Errorf("component %s is not healthy", be.Component)
			}
			return nil
		}
	}
	var c net.Conn
	udp := proto == "udp"
	err := b.m.inNS(func() error {
		var err error
		// The socket is made on this (namespace-switched) thread; the
		// namespace of a socket is fixed when it is created.
		if udp {
			c, err = net.Dial("udp4", be.Address)
		} else {
			c, err = net.DialTimeout("tcp4", be.Address, timeout)
		}
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	if !udp {
		return nil
	}
	// UDP has no handshake: an empty datagram, and the port is down when
	// the host answers "port unreachable" (ECONNREFUSED on the connected
	// socket); silence or a reply within the timeout counts as up.
	if _, err := c.Write(nil); err != nil {
		return err
	}
	c.SetReadDeadline(time.Now().Add(timeout))
	if _, err := c.Read(make([]byte, 1)); errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("udp %s: port unreachable", be.Address)
	}
	return nil
}

// status reports every service (m.mu held).
func (b *balancer) status() (map[string]netpol.LBStatus, string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := map[string]netpol.LBStatus{}
	for name, s := range b.svcs {
		st := netpol.LBStatus{VIP: s.svc.VIP, Algorithm: s.svc.Algorithm}
		var conns []uint64
		if b.plane != nil {
			st.Backend = b.plane.name()
			var err error
			conns, st.NoBackend, err = b.plane.conns(s.id, len(s.svc.Backends))
			if err != nil {
				b.err = err.Error()
			}
		}
		for i, be := range s.svc.Backends {
			bs := netpol.LBBackendStatus{Address: be.Address, Component: be.Component, Healthy: s.state[i].up, LastError: s.state[i].lastError}
			if i < len(conns) {
				bs.Connections = conns[i]
			}
			st.Backends = append(st.Backends, bs)
		}
		out[name] = st
	}
	return out, b.err
}

// releaser is a data plane that can outlive the agent (lbBPF: pinned).
type releaser interface{ release() error }

// stop is the agent stopping: a plane that can keep balancing without it
// does (its last healthy backends; health checks stop), else it is closed.
func (b *balancer) stop() error { return b.shutdown(true) }

// shutdown stops the health checks and closes the plane, or, with keep,
// releases it to run on without the agent when it can.
func (b *balancer) shutdown(keep bool) error {
	b.mu.Lock()
	svcs := b.svcs
	b.svcs = map[string]*lbService{}
	b.ids = map[string]uint32{}
	b.mu.Unlock()
	for _, s := range svcs {
		s.cancel()
		<-s.done
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.plane == nil {
		return nil
	}
	var err error
	if r, ok := b.plane.(releaser); ok && keep {
		err = r.release()
	} else {
		err = b.plane.close()
	}
	b.plane = nil
	return err
}

func be32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

func be16port(p uint16) uint16 { return p>>8 | p<<8 }
