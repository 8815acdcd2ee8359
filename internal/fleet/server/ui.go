package server

import (
	"bytes"
	"context"
	"net/http"

	"github.com/outpost-edge/outpost/internal/fleet/store"
	"github.com/outpost-edge/outpost/internal/fleet/twin"
)

// The methods in this file are what the web dashboard (package
// dashboard, wired by cmd/outpost-server) uses: it reads the registry with
// the live connection state, follows changes, and mounts itself beside the
// API.

// Mount adds a route (a net/http ServeMux pattern, e.g. "/" for every path
// outside /api/ and /metrics). Call it before Handler or Serve.
func (s *Server) Mount(pattern string, h http.Handler) {
	s.mounts = append(s.mounts, mount{pattern, h})
}

// Store is the server's store.
func (s *Server) Store() store.Store { return s.st }

// Changes returns a channel signalled (coalesced, capacity 1) after every
// store change, status report and watch stream opened or closed on this
// replica, and a function to stop receiving.
func (s *Server) Changes() (<-chan struct{}, func()) { return s.changes.Notify() }

// Gateways lists the registry with Connected filled in.
func (s *Server) Gateways(ctx context.Context) ([]store.Gateway, error) {
	gws, err := s.st.ListGateways(ctx)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	for i := range gws {
		gws[i].Connected = len(s.streams[gws[i].ID]) > 0
	}
	s.mu.Unlock()
	return gws, nil
}

// Gateway returns one gateway with Connected filled in (store.ErrNotFound).
func (s *Server) Gateway(ctx context.Context, id string) (store.Gateway, error) {
	g, err := s.st.GetGateway(ctx, id)
	if err != nil {
		return g, err
	}
	g.Connected = s.connected(id)
	return g, nil
}

// Twins lists the device twins of a gateway, with their deltas (the
// dashboard's gateway page).
func (s *Server) Twins(ctx context.Context, gateway string) ([]twin.Twin, error) {
	ts, err := s.st.ListTwins(ctx, gateway)
	if err != nil {
		return nil, err
	}
	for i := range ts {
		ts[i] = withDelta(ts[i])
	}
	return ts, nil
}

// RequireRole wraps h: it needs a bearer API token with at least role
// (the same check as every /api/v1 endpoint).
func (s *Server) RequireRole(role string, h http.HandlerFunc) http.HandlerFunc {
	return s.role(role, h)
}

// RolloutAPI calls the rollout endpoints in-process for the dashboard,
// which has checked its user's role itself: name "" lists
// (GET /api/v1/rollouts), or with a body creates one (POST
// /api/v1/rollouts, body a RolloutRequest); action "" gets one, else it
// POSTs the action with body ({"resourceVersion": N}). It returns the status code and the
// JSON answer, exactly as the HTTP API would.
func (s *Server) RolloutAPI(ctx context.Context, name, action string, body []byte) (int, []byte) {
	method, path := http.MethodGet, "/api/v1/rollouts"
	if name != "" {
		path += "/" + name
	}
	if action != "" {
		method, path = http.MethodPost, path+"/"+action
	} else if name == "" && body != nil {
		method = http.MethodPost
	}
	r, err := http.NewRequestWithContext(ctx, method, path, bytes.NewReader(body))
	if err != nil {
		return http.StatusBadRequest, []byte(`{"error":"bad request"}`)
	}
	r.SetPathValue("name", name)
	r.SetPathValue("action", action)
	rec := &recorder{header: http.Header{}, code: http.StatusOK}
	switch {
	case name == "" && body != nil:
		s.handleRolloutCreate(rec, r)
	case name == "":
		s.handleRolloutList(rec, r)
	case action == "":
		s.handleRolloutGet(rec, r)
	default:
		s.handleRolloutAction(rec, r)
	}
	return rec.code, rec.body.Bytes()
}

// recorder is an in-memory http.ResponseWriter.
type recorder struct {
	header http.Header
	code   int
	wrote  bool
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }

func (r *recorder) WriteHeader(code int) {
	if !r.wrote {
		r.code, r.wrote = code, true
	}
}

func (r *recorder) Write(b []byte) (int, error) {
	r.wrote = true
	return r.body.Write(b)
}
