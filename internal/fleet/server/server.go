// Package server is outpost-server's HTTP side: the enrollment endpoint,
// the agent endpoints (List, Watch, status; mTLS with fleet-CA client
// certificates) and the admin JSON API under /api/v1 (bearer tokens with
// roles viewer < operator < admin).
//
// Open loads (or, on first start, creates) the fleet CA and the first admin
// token from the store; Handler serves everything; TLSConfig is what the
// listener must use (HTTP/2, client certificates requested and verified per
// request against the fleet CA, so a wrong certificate is counted and
// answered 401 instead of failing the handshake silently).
package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/outpost-edge/outpost/internal/fleet/ca"
	"github.com/outpost-edge/outpost/internal/fleet/store"
)

// Options configure a Server.
type Options struct {
	Store   store.Store
	Logger  *slog.Logger
	Metrics *metrics.Set
	// Hosts are the names and IPs in the server certificate
	// (default localhost, 127.0.0.1, ::1).
	Hosts []string
	// Keepalive is the watch stream's bookmark period (default 30s).
	Keepalive time.Duration
	// CertValidity of gateway certificates (default 90 days).
	CertValidity time.Duration
	// MaxBody bounds request bodies (default 1 MiB).
	MaxBody int64
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
	// CompactKeep is how many change-log events automatic compaction
	// keeps (default 100,000; negative turns it off). A gateway that was
	// away for more changes than that re-lists when it comes back.
	CompactKeep int64
	// CompactEvery is how often compaction runs (default 5m).
	CompactEvery time.Duration
	// RolloutTick is how often the rollout orchestrator re-reads the
	// gateways' reports while a rollout is in progress (default 100ms).
	RolloutTick time.Duration
	// RolloutPoll is how often an idle orchestrator looks for rollouts
	// (default 1s). It is the fallback: a rollout made on any replica
	// wakes the orchestrator through the store's change notifications.
	RolloutPoll time.Duration
	// OTADir holds the hosted TUF repository (metadata/, targets/); ""
	// turns OTA hosting off. outpost-server run uses DATA/ota. A store
	// that keeps OTA files itself (PostgreSQL: see OTAFiles) is used
	// instead, so that every replica serves what any of them stored;
	// OTADir then only switches hosting on.
	OTADir string
	// OTAMaxTarget bounds one uploaded target (default 1 GiB).
	OTAMaxTarget int64
}

// Server is one outpost-server replica.
type Server struct {
	opt   Options
	st    store.Store
	log   *slog.Logger
	set   *metrics.Set
	ca    *ca.CA
	cache *cache
	twins *store.GroupCommit // reported twin updates, group-committed

	tlsCert tls.Certificate

	mu      sync.Mutex
	streams map[string]map[*stream]struct{} // gateway id -> open watch streams
	seen    map[string]time.Time            // last TouchGateway per gateway

	refused     func(reason string) *metrics.Counter
	enrolled    *metrics.Counter
	halts       *metrics.Counter
	compactions *metrics.Counter
	sentObjs    *metrics.Counter // MODIFIED and DELETED events sent on watch streams

	rolloutWake chan struct{} // a status or rollout change: step the rollouts now
	renewed     *metrics.Counter

	otaServed, otaStored *metrics.Counter
	ota                  OTAFiles // nil: OTA hosting off

	// changes is signalled on every store change, status report and watch
	// stream open/close (the dashboard's live updates).
	changes store.Notifier
	mounts  []mount // extra routes (the dashboard)
}

type mount struct {
	pattern string
	h       http.Handler
}

// Open prepares a server on opt.Store. On a fresh store it generates the
// fleet CA and an admin token, which is returned (it is shown once and only
// its hash is kept); otherwise adminToken is "".
func Open(ctx context.Context, opt Options) (s *Server, adminToken string, err error) {
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.Metrics == nil {
		opt.Metrics = metrics.NewSet()
	}
	if len(opt.Hosts) == 0 {
		opt.Hosts = []string{"localhost", "127.0.0.1", "::1"}
	}
	if opt.Keepalive <= 0 {
		opt.Keepalive = 30 * time.Second
	}
	if opt.CertValidity <= 0 {
		opt.CertValidity = 90 * 24 * time.Hour
	}
	if opt.MaxBody <= 0 {
		opt.MaxBody = 1 << 20
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.CompactKeep == 0 {
		opt.CompactKeep = 100_000
	}
	if opt.CompactEvery <= 0 {
		opt.CompactEvery = 5 * time.Minute
	}
	if opt.RolloutTick <= 0 {
		opt.RolloutTick = 100 * time.Millisecond
	}
	if opt.RolloutPoll <= 0 {
		opt.RolloutPoll = time.Second
	}
	if opt.OTAMaxTarget <= 0 {
		opt.OTAMaxTarget = 1 << 30
	}
	s = &Server{opt: opt, st: opt.Store, log: opt.Logger, set: opt.Metrics,
		streams: map[string]map[*stream]struct{}{}, seen: map[string]time.Time{}, rolloutWake: make(chan struct{}, 1)}
	s.refused = func(reason string) *metrics.Counter {
		return s.set.GetOrCreateCounter(fmt.Sprintf(`outpost_fleet_refused_total{reason=%q}`, reason))
	}
	s.enrolled = s.set.NewCounter(`outpost_fleet_enrolled_total`)
	s.halts = s.set.NewCounter(`outpost_fleet_rollout_halts_total`)
	s.compactions = s.set.NewCounter(`outpost_fleet_compactions_total`)
	s.sentObjs = s.set.NewCounter(`outpost_fleet_watch_objects_sent_total`)
	s.renewed = s.set.NewCounter(`outpost_fleet_renewed_total`)
	if f, ok := opt.Store.(OTAFiles); ok && opt.OTADir != "" {
		s.ota = f
	} else if opt.OTADir != "" {
		s.ota = otaDir(opt.OTADir)
	}
	s.otaServed = s.set.NewCounter(`outpost_fleet_ota_served_total`)
	s.otaStored = s.set.NewCounter(`outpost_fleet_ota_stored_total`)
	s.set.NewGauge(`outpost_fleet_watch_streams`, func() float64 {
		s.mu.Lock()
		defer s.mu.Unlock()
		n := 0
		for _, m := range s.streams {
			n += len(m)
		}
		return float64(n)
	})

	if err := s.loadCA(ctx); err != nil {
		return nil, "", err
	}
	certPEM, keyPEM, err := s.ca.ServerCert(opt.Hosts, 365*24*time.Hour)
	if err != nil {
		return nil, "", fmt.Errorf("server: certificate: %w", err)
	}
	s.tlsCert, err = tls.X509KeyPair(append(certPEM, s.ca.CertPEM...), keyPEM)
	if err != nil {
		return nil, "", fmt.Errorf("server: certificate: %w", err)
	}
	n, err := s.st.CountAPITokens(ctx)
	if err != nil {
		return nil, "", fmt.Errorf("server: tokens: %w", err)
	}
	if n == 0 {
		adminToken, err = s.CreateAPIToken(ctx, store.RoleAdmin, "initial admin")
		if err != nil {
			return nil, "", err
		}
	}
	s.twins = &store.GroupCommit{Store: s.st}
	s.cache = newCache(s.st)
	s.cache.onRollout = s.wakeRollouts
	if err := s.cache.load(ctx); err != nil {
		return nil, "", fmt.Errorf("server: load: %w", err)
	}
	return s, adminToken, nil
}

func (s *Server) loadCA(ctx context.Context) error {
	certPEM, err := s.st.GetMeta(ctx, "ca_cert")
	if errors.Is(err, store.ErrNotFound) {
		c, k, gerr := ca.New("outpost fleet CA")
		if gerr != nil {
			return fmt.Errorf("server: generate CA: %w", gerr)
		}
		// Key first: a replica that sees the certificate also sees its key.
		if _, err := s.st.PutMetaIfAbsent(ctx, "ca_key", string(k)); err != nil {
			return err
		}
		if _, err := s.st.PutMetaIfAbsent(ctx, "ca_cert", string(c)); err != nil {
			return err
		}
		certPEM, err = s.st.GetMeta(ctx, "ca_cert")
	}
	if err != nil {
		return fmt.Errorf("server: CA: %w", err)
	}
	keyPEM, err := s.st.GetMeta(ctx, "ca_key")
	if err != nil {
		return fmt.Errorf("server: CA key: %w", err)
	}
	s.ca, err = ca.Load([]byte(certPEM), []byte(keyPEM))
	return err
}

// CACertPEM is the fleet CA certificate (gateways and CLIs trust it).
func (s *Server) CACertPEM() []byte { return s.ca.CertPEM }

// TLSConfig is the listener's TLS configuration.
func (s *Server) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{s.tlsCert},
		ClientAuth:   tls.RequestClientCert, // verified per request (agentAuth)
		NextProtos:   []string{"h2", "http/1.1"},
	}
}

// Run follows the store's changes into the cache and runs the rollouts
// (when this replica holds the singleton lock) until ctx ends. Start it
// before serving.
func (s *Server) Run(ctx context.Context) {
	ch, stop := s.st.Notify()
	defer stop()
	fwd := make(chan struct{}, 1)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-ch:
				s.changes.Broadcast()
				select {
				case fwd <- struct{}{}:
				default:
				}
			}
		}
	}()
	done := make(chan struct{})
	go func() { defer close(done); s.orchestrate(ctx) }()
	compacted := make(chan struct{})
	go func() { defer close(compacted); s.compactLoop(ctx) }()
	defer func() { <-compacted }()
	s.cache.follow(ctx, fwd, func(err error) { s.log.Error("fleet: following the store", "err", err) })
	<-done
}

// Refused returns the refusal counter's value for reason (tests, metrics).
func (s *Server) Refused(reason string) uint64 { return s.refused(reason).Get() }

// WatchObjectsSent is how many MODIFIED/DELETED events watch streams sent.
func (s *Server) WatchObjectsSent() uint64 { return s.sentObjs.Get() }

// Compactions is how many automatic compactions of the change log ran here.
func (s *Server) Compactions() uint64 { return s.compactions.Get() }

// Metrics returns the server's metric set.
func (s *Server) Metrics() *metrics.Set { return s.set }

// randomToken returns a prefixed random secret and its storage hash.
func randomToken(prefix string) (token, hash string) {
	b := make([]byte, 24)
	rand.Read(b)
	token = prefix + base64.RawURLEncoding.EncodeToString(b)
	return token, hashToken(token)
}

func hashToken(t string) string {
	h := sha256.Sum256([]byte(t))
	return hex.EncodeToString(h[:])
}

func randomID() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// CreateAPIToken makes an API token with role; only its hash is stored.
func (s *Server) CreateAPIToken(ctx context.Context, role, name string) (string, error) {
	if store.RoleRank(role) == 0 {
		return "", fmt.Errorf("server: role %q: want viewer, operator or admin", role)
	}
	tok, hash := randomToken("opa_")
	err := s.st.CreateAPIToken(ctx, store.APIToken{ID: randomID(), Hash: hash, Role: role, Name: name, Created: s.opt.Now().UTC()})
	if err != nil {
		return "", fmt.Errorf("server: token: %w", err)
	}
	return tok, nil
}

// Handler serves the whole API.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v1/enroll", s.handleEnroll)
	mux.HandleFunc("GET /api/v1/agent/desired", s.agentAuth(s.handleDesired))
	mux.HandleFunc("GET /api/v1/agent/watch", s.agentAuth(s.handleWatch))
	mux.HandleFunc("POST /api/v1/agent/status", s.agentAuth(s.handleStatus))
	mux.HandleFunc("POST /api/v1/agent/renew", s.agentAuthWith(true, s.handleRenew))

	mux.HandleFunc("GET /api/v1/gateways", s.role(store.RoleViewer, s.handleGateways))
	mux.HandleFunc("GET /api/v1/gateways/{id}", s.role(store.RoleViewer, s.handleGateway))
	mux.HandleFunc("GET /api/v1/gateways/{id}/desired", s.role(store.RoleViewer, s.handleGatewayDesired))
	mux.HandleFunc("POST /api/v1/gateways/{id}/labels", s.role(store.RoleOperator, s.handleLabel))
	mux.HandleFunc("POST /api/v1/gateways/{id}/revoke", s.role(store.RoleAdmin, s.handleRevoke))
	mux.HandleFunc("DELETE /api/v1/gateways/{id}", s.role(store.RoleAdmin, s.handleDeleteGateway))
	mux.HandleFunc("POST /api/v1/tokens", s.role(store.RoleAdmin, s.handleTokenCreate))
	mux.HandleFunc("GET /api/v1/tokens", s.role(store.RoleAdmin, s.handleTokenList))
	mux.HandleFunc("POST /api/v1/apitokens", s.role(store.RoleAdmin, s.handleAPITokenCreate))
	mux.HandleFunc("GET /api/v1/gateways/{id}/twins", s.role(store.RoleViewer, s.handleTwins))
	mux.HandleFunc("GET /api/v1/gateways/{id}/twins/{device}", s.role(store.RoleViewer, s.handleTwinGet))
	mux.HandleFunc("PATCH /api/v1/gateways/{id}/twins/{device}", s.role(store.RoleOperator, s.handleTwinPatch))
	mux.HandleFunc("DELETE /api/v1/gateways/{id}/twins/{device}", s.role(store.RoleOperator, s.handleTwinDelete))
	mux.HandleFunc("GET /api/v1/agent/twins", s.agentAuth(s.handleAgentTwins))
	mux.HandleFunc("POST /api/v1/agent/twins", s.agentAuth(s.handleAgentReported))
	mux.HandleFunc("GET /api/v1/objects", s.role(store.RoleViewer, s.handleObjects))
	mux.HandleFunc("GET /api/v1/objects/{kind}/{id}", s.role(store.RoleViewer, s.handleObjectGet))
	mux.HandleFunc("PUT /api/v1/objects/{kind}/{id}", s.role(store.RoleOperator, s.handleObjectPut))
	mux.HandleFunc("DELETE /api/v1/objects/{kind}/{id}", s.role(store.RoleOperator, s.handleObjectDelete))
	mux.HandleFunc("POST /api/v1/rollouts", s.role(store.RoleOperator, s.handleRolloutCreate))
	mux.HandleFunc("GET /api/v1/rollouts", s.role(store.RoleViewer, s.handleRolloutList))
	mux.HandleFunc("GET /api/v1/rollouts/{name}", s.role(store.RoleViewer, s.handleRolloutGet))
	mux.HandleFunc("POST /api/v1/rollouts/{name}/{action}", s.role(store.RoleOperator, s.handleRolloutAction))
	for _, kind := range []string{"metadata", "targets"} {
		mux.HandleFunc("GET /api/v1/ota/"+kind+"/{path...}", s.handleOTAGet(kind))
		mux.HandleFunc("PUT /api/v1/ota/"+kind+"/{path...}", s.role(store.RoleOperator, s.handleOTAPut(kind)))
	}
	mux.HandleFunc("GET /api/v1/ca", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/x-pem-file")
		w.Write(s.ca.CertPEM)
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) { s.set.WritePrometheus(w) })
	for _, m := range s.mounts {
		mux.Handle(m.pattern, m.h)
	}
	mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, http.StatusNotFound, fmt.Sprintf("no endpoint %s %s", r.Method, r.URL.Path))
	})
	return mux
}

// Serve serves HTTPS (HTTP/2) on ln until ctx ends, then shuts down:
// open watch streams are closed and in-flight requests get 5 s.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{
		Handler:           s.Handler(),
		TLSConfig:         s.TLSConfig(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	go s.Run(ctx)
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(newHandshakeListener(ln, hs.TLSConfig, 10*time.Second)) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		hs.Close()
	}
	return nil
}
