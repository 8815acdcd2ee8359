package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/proto"
	"github.com/outpost-edge/outpost/internal/fleet/selector"
	"github.com/outpost-edge/outpost/internal/fleet/store"
)

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeErr(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, proto.Error{Error: msg})
}

func (s *Server) internal(w http.ResponseWriter, what string, err error) {
	s.log.Error("fleet: "+what, "err", err)
	writeErr(w, http.StatusInternalServerError, what+": internal error (see the server log)")
}

func (s *Server) storeErr(w http.ResponseWriter, what string, err error) {
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeErr(w, http.StatusNotFound, strings.TrimPrefix(err.Error(), "store: "))
	case errors.Is(err, store.ErrConflict), errors.Is(err, store.ErrExists):
		writeErr(w, http.StatusConflict, strings.TrimPrefix(err.Error(), "store: "))
	default:
		s.internal(w, what, err)
	}
}

// decode reads one JSON value of at most MaxBody bytes, strictly (unknown
// fields are errors); on failure it answers 400 or 413 and returns false.
func (s *Server) decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, s.opt.MaxBody))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		if _, terr := dec.Token(); terr != io.EOF {
			err = errors.New("trailing data after the JSON value")
		}
	}
	if err == nil {
		return true
	}
	var mbe *http.MaxBytesError
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &mbe):
		writeErr(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body larger than %d bytes", mbe.Limit))
	case errors.As(err, &se):
		writeErr(w, http.StatusBadRequest, fmt.Sprintf("malformed JSON at byte %d: %v", se.Offset, se))
	case errors.As(err, &te):
		writeErr(w, http.StatusBadRequest, fmt.Sprintf("field %s: %s is not allowed here (want %s)", te.Field, te.Value, te.Type))
	case errors.Is(err, io.EOF):
		writeErr(w, http.StatusBadRequest, "empty body: a JSON object is required")
	default:
		writeErr(w, http.StatusBadRequest, "bad JSON: "+err.Error())
	}
	return false
}

func cutBearer(r *http.Request) (string, bool) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return tok, ok && tok != ""
}

// role requires a bearer API token with at least role.
func (s *Server) role(role string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		tok, ok := cutBearer(r)
		if !ok {
			s.refuse(w, r, http.StatusUnauthorized, "api_token_missing", "an API token is required: Authorization: Bearer TOKEN")
			return
		}
		t, err := s.st.APITokenByHash(r.Context(), hashToken(tok))
		if errors.Is(err, store.ErrNotFound) {
			s.refuse(w, r, http.StatusUnauthorized, "api_token_invalid", "invalid API token")
			return
		} else if err != nil {
			s.internal(w, "auth", err)
			return
		}
		if store.RoleRank(t.Role) < store.RoleRank(role) {
			s.refuse(w, r, http.StatusForbidden, "api_role", fmt.Sprintf("this needs the %s role; the token has %s", role, t.Role))
			return
		}
		h(w, r)
	}
}

// sync brings the cache up to the store after a write (read-your-writes
// for the API, immediate revocation).
func (s *Server) sync(ctx context.Context) {
	if err := s.cache.catchUp(ctx); err != nil {
		s.log.Warn("fleet: cache sync", "err", err)
	}
}

func (s *Server) handleGateways(w http.ResponseWriter, r *http.Request) {
	sel, err := selector.Parse(r.URL.Query().Get("selector"))
	if err != nil {
		writeErr(w, http.StatusBadRequest, "selector: "+err.Error())
		return
	}
	gws, err := s.st.ListGateways(r.Context())
	if err != nil {
		s.internal(w, "gateways", err)
		return
	}
	out := []store.Gateway{}
	for _, g := range gws {
		if sel.Matches(g.Labels) {
			g.Connected = s.connected(g.ID)
			out = append(out, g)
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleGateway(w http.ResponseWriter, r *http.Request) {
	g, err := s.st.GetGateway(r.Context(), r.PathValue("id"))
	if err != nil {
		s.storeErr(w, "gateway", err)
		return
	}
	g.Connected = s.connected(g.ID)
	writeJSON(w, http.StatusOK, g)
}

func (s *Server) handleGatewayDesired(w http.ResponseWriter, r *http.Request) {
	doc, err := s.cache.document(r.PathValue("id"))
	if err != nil {
		s.storeErr(w, "desired", err)
		return
	}
	writeJSON(w, http.StatusOK, doc)
}

// LabelChange is the body of POST /api/v1/gateways/{id}/labels.
type LabelChange struct {
	Set    map[string]string `json:"set"`
	Remove []string          `json:"remove"`
}

func (s *Server) handleLabel(w http.ResponseWriter, r *http.Request) {
	var ch LabelChange
	if !s.decode(w, r, &ch) {
		return
	}
	for k, v := range ch.Set {
		if err := selector.ValidateLabel(k, v); err != nil {
			writeErr(w, http.StatusBadRequest, "set: "+err.Error())
			return
		}
	}
	id := r.PathValue("id")
	g, err := s.st.GetGateway(r.Context(), id)
	if err != nil {
		s.storeErr(w, "label", err)
		return
	}
	for k, v := range ch.Set {
		g.Labels[k] = v
	}
	for _, k := range ch.Remove {
		delete(g.Labels, k)
	}
	if _, err := s.st.SetGatewayLabels(r.Context(), id, g.Labels); err != nil {
		s.storeErr(w, "label", err)
		return
	}
	s.sync(r.Context())
	writeJSON(w, http.StatusOK, g)
}

func (s *Server) handleRevoke(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := s.st.RevokeGateway(r.Context(), id); err != nil {
		s.storeErr(w, "revoke", err)
		return
	}
	s.sync(r.Context())
	s.closeStreams(id)
	s.log.Info("fleet: gateway revoked", "gateway", id)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleDeleteGateway(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if _, err := s.st.DeleteGateway(r.Context(), id); err != nil {
		s.storeErr(w, "delete", err)
		return
	}
	s.sync(r.Context())
	s.closeStreams(id)
	w.WriteHeader(http.StatusNoContent)
}

// TokenRequest is the body of POST /api/v1/tokens.
type TokenRequest struct {
	Labels  map[string]string `json:"labels"`
	Expires string            `json:"expires"` // duration, default 24h, at most 720h
}

// TokenResponse shows a bootstrap token once.
type TokenResponse struct {
	ID      string            `json:"id"`
	Token   string            `json:"token"`
	Labels  map[string]string `json:"labels"`
	Expires time.Time         `json:"expires"`
}

func (s *Server) handleTokenCreate(w http.ResponseWriter, r *http.Request) {
	var req TokenRequest
	if !s.decode(w, r, &req) {
		return
	}
	d := 24 * time.Hour
	if req.Expires != "" {
		var err error
		if d, err = time.ParseDuration(req.Expires); err != nil || d <= 0 || d > 720*time.Hour {
			writeErr(w, http.StatusBadRequest, fmt.Sprintf("expires: %q: want a duration between 1s and 720h", req.Expires))
			return
		}
	}
	for k, v := range req.Labels {
		if err := selector.ValidateLabel(k, v); err != nil {
			writeErr(w, http.StatusBadRequest, "labels: "+err.Error())
			return
		}
	}
	tok, hash := randomToken("opb_")
	now := s.opt.Now().UTC()
	t := store.BootstrapToken{ID: randomID(), Hash: hash, Labels: req.Labels, Expires: now.Add(d), Created: now}
	if t.Labels == nil {
		t.Labels = map[string]string{}
	}
	if err := s.st.CreateBootstrapToken(r.Context(), t); err != nil {
		s.internal(w, "token", err)
		return
	}
	writeJSON(w, http.StatusCreated, TokenResponse{ID: t.ID, Token: tok, Labels: t.Labels, Expires: t.Expires})
}

func (s *Server) handleTokenList(w http.ResponseWriter, r *http.Request) {
	ts, err := s.st.ListBootstrapTokens(r.Context())
	if err != nil {
		s.internal(w, "tokens", err)
		return
	}
	if ts == nil {
		ts = []store.BootstrapToken{}
	}
	writeJSON(w, http.StatusOK, ts)
}

// APITokenRequest is the body of POST /api/v1/apitokens.
type APITokenRequest struct {
	Role string `json:"role"`
	Name string `json:"name"`
}

func (s *Server) handleAPITokenCreate(w http.ResponseWriter, r *http.Request) {
	var req APITokenRequest
	if !s.decode(w, r, &req) {
		return
	}
	if store.RoleRank(req.Role) == 0 {
		writeErr(w, http.StatusBadRequest, fmt.Sprintf("role: %q: want viewer, operator or admin", req.Role))
		return
	}
	tok, err := s.CreateAPIToken(r.Context(), req.Role, req.Name)
	if err != nil {
		s.internal(w, "apitoken", err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]string{"token": tok, "role": req.Role, "name": req.Name})
}

func (s *Server) handleObjects(w http.ResponseWriter, r *http.Request) {
	objs, err := s.st.ListObjects(r.Context())
	if err != nil {
		s.internal(w, "objects", err)
		return
	}
	kind := r.URL.Query().Get("kind")
	out := []proto.Object{}
	for _, o := range objs {
		if kind == "" || o.Kind == kind {
			out = append(out, o)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ResourceVersion < out[j].ResourceVersion })
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleObjectGet(w http.ResponseWriter, r *http.Request) {
	o, err := s.st.GetObject(r.Context(), r.PathValue("kind"), r.PathValue("id"))
	if err != nil {
		s.storeErr(w, "object", err)
		return
	}
	writeJSON(w, http.StatusOK, o)
}

// ObjectPut is the body of PUT /api/v1/objects/{kind}/{id}.
type ObjectPut struct {
	Name   string            `json:"name"`
	Target proto.Target      `json:"target"`
	Labels map[string]string `json:"labels"`
	Spec   json.RawMessage   `json:"spec"`
	// ResourceVersion, when set, must equal the stored object's (409
	// otherwise); -1 = create only.
	ResourceVersion int64 `json:"resourceVersion"`
}

// ValidateObject checks an object before it is stored; the error names the
// field.
func ValidateObject(o proto.Object) error {
	if !proto.KnownKind(o.Kind) {
		return fmt.Errorf("kind: %q: want one of %s", o.Kind, strings.Join(proto.Kinds, ", "))
	}
	if o.Kind == proto.KindTwin {
		return errors.New("kind: twin: device twins have their own API: PATCH /api/v1/gateways/{gateway}/twins/{device}")
	}
	if !validID(o.ID) {
		return fmt.Errorf("id: %q: must be 1-128 letters, digits, _ . -", o.ID)
	}
	if !validID(o.Name) {
		return fmt.Errorf("name: %q: must be 1-128 letters, digits, _ . -", o.Name)
	}
	if o.Target.Gateway != "" && o.Target.Selector != "" {
		return errors.New("target: set selector or gateway, not both")
	}
	if o.Target.Gateway != "" && !validID(o.Target.Gateway) {
		return fmt.Errorf("target.gateway: %q is not a gateway id", o.Target.Gateway)
	}
	if _, err := selector.Parse(o.Target.Selector); err != nil {
		return fmt.Errorf("target.selector: %w", err)
	}
	for k, v := range o.Labels {
		if err := selector.ValidateLabel(k, v); err != nil {
			return fmt.Errorf("labels: %w", err)
		}
	}
	var spec map[string]json.RawMessage
	if err := json.Unmarshal(o.Spec, &spec); err != nil || spec == nil {
		return errors.New("spec: must be a JSON object")
	}
	switch o.Kind {
	case proto.KindRuleSet:
		var sql string
		if err := json.Unmarshal(spec["sql"], &sql); err != nil || strings.TrimSpace(sql) == "" {
			return errors.New("spec.sql: a rule set needs its SQL text (CREATE RULE ...)")
		}
	case proto.KindConfig:
		var y string
		if err := json.Unmarshal(spec["yaml"], &y); err != nil || strings.TrimSpace(y) == "" {
			return errors.New("spec.yaml: a config fragment needs its YAML text")
		}
	case proto.KindFunction:
		return validateFunctionSpec(spec)
	case proto.KindNetpol:
		return validateNetpol(o.Spec)
	}
	return nil
}

// validateFunctionSpec: {"function": NAME, "version": N}, naming a
// function published in the hosted TUF repository (docs/functions.md,
// "Delivery through the fleet"); the gateway fetches and verifies it.
func validateFunctionSpec(spec map[string]json.RawMessage) error {
	for k := range spec {
		if k != "function" && k != "version" {
			return fmt.Errorf("spec.%s: unknown field (want function and version)", k)
		}
	}
	var name string
	if err := json.Unmarshal(spec["function"], &name); err != nil || !validFunctionName(name) {
		return errors.New(`spec.function: the function's name as in its manifest (1-64 letters, digits, _ -), e.g. "anomaly"`)
	}
	var v json.Number
	if raw := bytes.TrimSpace(spec["version"]); len(raw) == 0 || raw[0] == '"' || json.Unmarshal(raw, &v) != nil {
		return errors.New("spec.version: the function's version, a positive integer")
	}
	if n, err := strconv.ParseInt(v.String(), 10, 32); err != nil || n < 1 {
		return fmt.Errorf("spec.version: %s: want a positive integer", v)
	}
	return nil
}

func validFunctionName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func (s *Server) handleObjectPut(w http.ResponseWriter, r *http.Request) {
	var req ObjectPut
	if !s.decode(w, r, &req) {
		return
	}
	o := proto.Object{Kind: r.PathValue("kind"), ID: r.PathValue("id"), Name: req.Name, Target: req.Target, Labels: req.Labels, Spec: req.Spec}
	if o.Name == "" {
		o.Name = o.ID
	}
	if err := ValidateObject(o); err != nil {
		writeErr(w, http.StatusBadRequest, err.Error())
		return
	}
	var compact json.RawMessage
	if b, err := json.Marshal(o.Spec); err == nil {
		compact = b
	}
	o.Spec = compact
	out, err := s.st.PutObject(r.Context(), o, req.ResourceVersion)
	if err != nil {
		s.storeErr(w, "object", err)
		return
	}
	s.sync(r.Context())
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleObjectDelete(w http.ResponseWriter, r *http.Request) {
	var expect int64
	if v := r.URL.Query().Get("resourceVersion"); v != "" {
		var err error
		if expect, err = strconv.ParseInt(v, 10, 64); err != nil {
			writeErr(w, http.StatusBadRequest, "resourceVersion: want an integer")
			return
		}
	}
	rv, err := s.st.DeleteObject(r.Context(), r.PathValue("kind"), r.PathValue("id"), expect)
	if err != nil {
		s.storeErr(w, "object", err)
		return
	}
	s.sync(r.Context())
	writeJSON(w, http.StatusOK, map[string]int64{"resourceVersion": rv})
}

// Compact drops change-log entries up to rv; watchers behind it get 410.
func (s *Server) Compact(ctx context.Context, rv int64) error { return s.st.Compact(ctx, rv) }
