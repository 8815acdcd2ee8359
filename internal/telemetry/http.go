package telemetry

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/metrics"
	"strings"
	"sync"
	"time"

	vm "github.com/VictoriaMetrics/metrics"

	"github.com/outpost-edge/outpost/internal/buildinfo"
	"github.com/outpost-edge/outpost/internal/module"
)

// Config is the `telemetry:` section.
type Config struct {
	// Address of the local HTTP endpoint (default 127.0.0.1:9100). Set
	// "off" to disable it.
	Address string `yaml:"address"`
	// Token, when set, is required as a Bearer token on /api/ and /debug/.
	Token string `yaml:"token"`
	// Socket, when set, is the path of a unix socket serving the same
	// endpoints to local processes without a token: the socket file is
	// created with mode 0600, so only its owner (and root) can connect.
	// Protected APIs (the update API) need either the token over TCP or
	// this socket.
	Socket string `yaml:"socket"`
	// Pprof enables /debug/pprof (default true; loopback-only by default).
	Pprof *bool `yaml:"pprof"`
}

// SetDefaults fills zero values.
func (c *Config) SetDefaults() {
	if c.Address == "" {
		c.Address = "127.0.0.1:9100"
	}
	if c.Pprof == nil {
		t := true
		c.Pprof = &t
	}
}

// Validate checks the section.
func (c Config) Validate() error {
	if c.Socket != "" && !filepath.IsAbs(c.Socket) {
		return fmt.Errorf("socket: %q must be an absolute path", c.Socket)
	}
	if c.Address == "off" {
		return nil
	}
	host, _, err := net.SplitHostPort(c.Address)
	if err != nil {
		return fmt.Errorf("address: %q must be host:port (e.g. 127.0.0.1:9100) or off", c.Address)
	}
	if ip := net.ParseIP(host); (host == "" || (ip != nil && !ip.IsLoopback())) && c.Token == "" {
		return fmt.Errorf("address: %s is reachable from other hosts; set telemetry.token to protect /api and /debug", c.Address)
	}
	return nil
}

// HealthSource reports module health for /readyz.
type HealthSource interface {
	Health() []module.NamedStatus
}

// Server is the telemetry module: the local HTTP endpoint.
type Server struct {
	log     *slog.Logger
	set     *vm.Set
	health  HealthSource
	extra   []func(*http.ServeMux)
	cfgJSON func() any // redacted config for /api/v1/config
	// protected path prefixes need the token (or the unix socket).
	protected []string

	mu      sync.Mutex
	cfg     Config
	srv     *http.Server
	sockSrv *http.Server
	ln      net.Listener
	addr    string
}

// Options are the server's dependencies.
type Options struct {
	Logger  *slog.Logger
	Metrics *vm.Set
	Health  HealthSource
	// Routes register additional handlers (the modules' local APIs).
	Routes []func(*http.ServeMux)
	// RedactedConfig returns the running config with secrets replaced.
	RedactedConfig func() any
	// Protected lists path prefixes (such as "/api/v1/update/") that are
	// served only to authenticated callers: with telemetry.token over TCP,
	// or anyone on telemetry.socket. Without either they answer 403.
	Protected []string
}

var _ module.Typed[Config] = (*Server)(nil)
var _ module.TypedReconfigurable[Config] = (*Server)(nil)

// New returns an unstarted server.
func New(o Options) *Server {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Metrics == nil {
		o.Metrics = vm.NewSet()
	}
	s := &Server{log: o.Logger, set: o.Metrics, health: o.Health, extra: o.Routes, cfgJSON: o.RedactedConfig, protected: o.Protected}
	registerRuntimeMetrics(o.Metrics)
	registerBuildInfo(o.Metrics)
	return s
}

// Name implements module.Typed.
func (s *Server) Name() string { return "telemetry" }

// Init implements module.Typed.
func (s *Server) Init(_ context.Context, c *Config) error {
	s.mu.Lock()
	s.cfg = *c
	s.mu.Unlock()
	return nil
}

// Start binds the endpoint; a bind failure names the address.
func (s *Server) Start(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cfg.Socket != "" {
		ln, err := listenSocket(s.cfg.Socket)
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: s.mux(s.cfg, true), ReadHeaderTimeout: 10 * time.Second}
		s.sockSrv = srv
		go s.serve(srv, ln)
	}
	if s.cfg.Address == "off" {
		return nil
	}
	ln, err := net.Listen("tcp", s.cfg.Address)
	if err != nil {
		if s.sockSrv != nil {
			s.sockSrv.Close()
			s.sockSrv = nil
		}
		return fmt.Errorf("telemetry: listen on %s: %w", s.cfg.Address, err)
	}
	s.ln = ln
	s.addr = ln.Addr().String()
	srv := &http.Server{Handler: s.mux(s.cfg, false), ReadHeaderTimeout: 10 * time.Second}
	s.srv = srv
	go s.serve(srv, ln)
	return nil
}

func (s *Server) serve(srv *http.Server, ln net.Listener) {
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		s.log.Error("telemetry: HTTP server stopped", "err", err)
	}
}

// listenSocket binds the unix socket at path with mode 0600, replacing a
// stale socket file (never another kind of file).
func listenSocket(path string) (net.Listener, error) {
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("telemetry: socket %s: exists and is not a socket", path)
		}
		os.Remove(path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("telemetry: socket: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("telemetry: listen on %s: %w", path, err)
	}
	// Not through the umask: that is process-wide and other modules may
	// create files meanwhile. Connections are accepted only once Start
	// returns, after the chmod.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("telemetry: socket %s: %w", path, err)
	}
	return ln, nil
}

// Addr returns the bound address ("" when disabled).
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Stop implements module.Typed.
func (s *Server) Stop(ctx context.Context) error {
	s.mu.Lock()
	srv, sock := s.srv, s.sockSrv
	s.srv, s.sockSrv = nil, nil
	s.mu.Unlock()
	var errs []error
	if sock != nil {
		errs = append(errs, sock.Shutdown(ctx))
	}
	if srv != nil {
		errs = append(errs, srv.Shutdown(ctx))
	}
	return errors.Join(errs...)
}

// Reconfigure restarts the endpoint when its settings change.
func (s *Server) Reconfigure(ctx context.Context, c *Config) error {
	if err := s.Stop(ctx); err != nil {
		return err
	}
	s.Init(ctx, c)
	return s.Start(ctx)
}

// Health implements module.Typed.
func (s *Server) Health() module.Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cfg.Address == "off" {
		return module.Status{State: module.StateReady, Detail: "HTTP endpoint disabled"}
	}
	if s.srv == nil && s.sockSrv == nil {
		return module.Status{State: module.StateStopped}
	}
	return module.Status{State: module.StateReady, Detail: s.addr}
}

// mux routes the endpoint's own paths with a switch, and hands anything else
// to a ServeMux holding the modules' Routes, built on the first request that
// needs it. http.ServeMux records the caller's file and line for every
// pattern it registers (runtime.Caller): registering the endpoint's routes and
// the update API at start read about 0.5 MB of the binary's line tables, which
// then stayed in the agent's RSS although /readyz and /metrics never need them.
func (s *Server) mux(cfg Config, trusted bool) http.Handler {
	extra := sync.OnceValue(func() http.Handler {
		if len(s.extra) == 0 {
			return http.NotFoundHandler()
		}
		m := http.NewServeMux()
		for _, r := range s.extra {
			r(m)
		}
		return m
	})
	withPprof := cfg.Pprof == nil || *cfg.Pprof
	get := func(w http.ResponseWriter, r *http.Request, h func(http.ResponseWriter, *http.Request)) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, http.StatusText(http.StatusMethodNotAllowed), http.StatusMethodNotAllowed)
			return
		}
		h(w, r)
	}
	mux := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch p := r.URL.Path; {
		case p == "/metrics":
			get(w, r, s.metrics)
		case p == "/healthz":
			get(w, r, func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "text/plain")
				fmt.Fprintln(w, "ok")
			})
		case p == "/readyz":
			get(w, r, s.readyz)
		case p == "/api/v1/version":
			get(w, r, func(w http.ResponseWriter, _ *http.Request) {
				writeJSON(w, http.StatusOK, buildinfo.Read())
			})
		case p == "/api/v1/config":
			get(w, r, func(w http.ResponseWriter, _ *http.Request) {
				if s.cfgJSON == nil {
					http.Error(w, "no config", http.StatusNotFound)
					return
				}
				writeJSON(w, http.StatusOK, s.cfgJSON())
			})
		case withPprof && strings.HasPrefix(p, pprofPrefix):
			servePprof(w, r)
		default:
			extra().ServeHTTP(w, r)
		}
	})
	if trusted {
		// The unix socket: its file mode is the authentication.
		return mux
	}
	if cfg.Token == "" {
		if len(s.protected) == 0 {
			return mux
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			for _, p := range s.protected {
				if strings.HasPrefix(r.URL.Path, p) {
					http.Error(w, "forbidden: "+p+" needs telemetry.token (send it as a Bearer token) or a request on telemetry.socket", http.StatusForbidden)
					return
				}
			}
			mux.ServeHTTP(w, r)
		})
	}
	token := []byte("Bearer " + cfg.Token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/api/") || strings.HasPrefix(r.URL.Path, "/debug/") {
			if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), token) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="outpost"`)
				http.Error(w, "unauthorized", http.StatusUnauthorized)
				return
			}
		}
		mux.ServeHTTP(w, r)
	})
}

// metrics serves the Prometheus text exposition format (0.0.4) with a
// # HELP and # TYPE line for every family (see help.go).
func (s *Server) metrics(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	WriteMetrics(w, s.set)
}

// Readiness is the /readyz body.
type Readiness struct {
	Ready   bool              `json:"ready"`
	Modules map[string]Module `json:"modules"`
}

// Module is one module's health in /readyz.
type Module struct {
	State  string `json:"state"`
	Detail string `json:"detail,omitempty"`
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	r := Readiness{Ready: true, Modules: map[string]Module{}}
	if s.health != nil {
		for _, h := range s.health.Health() {
			r.Modules[h.Name] = Module{State: h.State.String(), Detail: h.Detail}
			if !h.Ready() {
				r.Ready = false
			}
		}
	}
	code := http.StatusOK
	if !r.Ready {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, r)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// registerRuntimeMetrics adds GC pause quantiles from runtime/metrics, which
// VictoriaMetrics' process metrics do not include as a histogram. They are
// exposed as a summary (quantile labels belong to summaries only).
func registerRuntimeMetrics(set *vm.Set) {
	sample := []metrics.Sample{{Name: "/sched/pauses/total/gc:seconds"}}
	set.RegisterMetricsWriter(func(w io.Writer) {
		metrics.Read(sample)
		var h *metrics.Float64Histogram
		if sample[0].Value.Kind() == metrics.KindFloat64Histogram {
			h = sample[0].Value.Float64Histogram()
		}
		const name = "outpost_gc_pause_seconds"
		vm.WriteMetadataIfNeeded(w, name, "summary")
		for _, q := range []struct {
			label string
			p     float64
		}{{"0.5", 0.5}, {"0.99", 0.99}, {"1", 1}} {
			v := 0.0
			if h != nil {
				v = histQuantile(h, q.p)
			}
			fmt.Fprintf(w, "%s{quantile=%q} %g\n", name, q.label, v)
		}
		var n uint64
		var sum float64
		if h != nil {
			for i, c := range h.Counts {
				n += c
				// The bucket's lower bound: the sum is a lower estimate.
				if lo := h.Buckets[i]; c > 0 && !math.IsInf(lo, -1) {
					sum += float64(c) * lo
				}
			}
		}
		fmt.Fprintf(w, "%s_sum %g\n%s_count %d\n", name, sum, name, n)
	})
}

func histQuantile(h *metrics.Float64Histogram, p float64) float64 {
	var total uint64
	for _, c := range h.Counts {
		total += c
	}
	if total == 0 {
		return 0
	}
	want := uint64(p * float64(total))
	var acc uint64
	for i, c := range h.Counts {
		acc += c
		if acc >= want && c > 0 {
			return h.Buckets[i+1]
		}
	}
	return h.Buckets[len(h.Buckets)-1]
}
