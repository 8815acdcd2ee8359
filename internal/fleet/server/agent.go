package server

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sort"
	"strconv"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/ca"
	"github.com/outpost-edge/outpost/internal/fleet/proto"
	"github.com/outpost-edge/outpost/internal/fleet/store"
)

// stream is one open watch.
type stream struct {
	cancel context.CancelCauseFunc
}

// errRevoked ends a revoked or deleted gateway's streams.
var errRevoked = errors.New("gateway revoked or deleted")

func (s *Server) closeStreams(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for st := range s.streams[id] {
		st.cancel(errRevoked)
	}
}

func (s *Server) connected(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.streams[id]) > 0
}

// agentAuth verifies the client certificate on every agent request: it must
// chain to the fleet CA, name a registered gateway that is not revoked, and
// be that gateway's current certificate.
func (s *Server) agentAuth(h func(w http.ResponseWriter, r *http.Request, id string)) http.HandlerFunc {
	return s.agentAuthWith(false, func(w http.ResponseWriter, r *http.Request, id string, _ bool) { h(w, r, id) })
}

// agentAuthWith is agentAuth; with allowSuperseded a certificate that is no
// longer the gateway's current one passes too (superseded=true): the renew
// endpoint then requires proof of the current certificate's key.
func (s *Server) agentAuthWith(allowSuperseded bool, h func(w http.ResponseWriter, r *http.Request, id string, superseded bool)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
			s.refuse(w, r, http.StatusUnauthorized, "no_certificate", "a client certificate is required (enroll first: outpost enroll)")
			return
		}
		cert := r.TLS.PeerCertificates[0]
		if err := s.ca.VerifyClient(cert); err != nil {
			s.refuse(w, r, http.StatusUnauthorized, "bad_certificate", "the client certificate was not issued by this fleet's CA")
			return
		}
		id := cert.Subject.CommonName
		g, ok := s.cache.gateway(id)
		if !ok {
			s.refuse(w, r, http.StatusUnauthorized, "unknown_gateway", "gateway "+id+" is not registered (deleted?); enroll again")
			return
		}
		if g.revoked {
			s.refuse(w, r, http.StatusForbidden, "revoked", "gateway "+id+" is revoked")
			return
		}
		superseded := g.serial != ca.SerialHex(cert)
		if superseded && !allowSuperseded {
			s.refuse(w, r, http.StatusUnauthorized, "superseded_certificate", "this certificate of gateway "+id+" was replaced by a newer one")
			return
		}
		s.touch(r.Context(), id)
		h(w, r, id, superseded)
	}
}

// handleRenew issues a new client certificate for a new key (the CSR) to
// an enrolled gateway that is not revoked, authenticated by its current
// certificate. A gateway whose renewal answer was lost asks again with the
// same new key and its old (now superseded) certificate: that is accepted
// only when the CSR's key is the one the current certificate was issued
// for (same serial, ca.KeySerial), so the answer is that certificate again.
func (s *Server) handleRenew(w http.ResponseWriter, r *http.Request, id string, superseded bool) {
	var req proto.RenewRequest
	if !s.decode(w, r, &req) {
		return
	}
	csr, err := ca.ParseCSR([]byte(req.CSR))
	if err != nil {
		writeErr(w, http.StatusBadRequest, "csr: "+err.Error())
		return
	}
	sn, err := ca.KeySerial(id, csr.PublicKey)
	if err != nil {
		writeErr(w, http.StatusBadRequest, "csr: "+err.Error())
		return
	}
	if superseded {
		if g, ok := s.cache.gateway(id); !ok || g.serial != sn.Text(16) {
			s.refuse(w, r, http.StatusUnauthorized, "superseded_certificate", "this certificate of gateway "+id+" was replaced by a newer one")
			return
		}
	}
	cert, certPEM, err := s.ca.SignClient([]byte(req.CSR), id, s.opt.CertValidity)
	if err != nil {
		writeErr(w, http.StatusBadRequest, "csr: "+err.Error())
		return
	}
	if _, err := s.st.SetGatewayCert(r.Context(), id, ca.SerialHex(cert), cert.NotAfter.UTC()); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			// Revoked or deleted between the check and the update.
			s.refuse(w, r, http.StatusForbidden, "revoked", "gateway "+id+" is revoked or deleted")
			return
		}
		s.storeErr(w, "renew", err)
		return
	}
	s.sync(r.Context())
	s.renewed.Inc()
	s.log.Info("fleet: gateway certificate renewed", "gateway", id, "expires", cert.NotAfter.UTC())
	writeJSON(w, http.StatusOK, proto.EnrollResponse{ID: id, Certificate: string(certPEM), CA: string(s.ca.CertPEM)})
}

// touch records last-seen at most every 30 s per gateway.
func (s *Server) touch(ctx context.Context, id string) {
	now := s.opt.Now()
	s.mu.Lock()
	last := s.seen[id]
	if now.Sub(last) < 30*time.Second {
		s.mu.Unlock()
		return
	}
	s.seen[id] = now
	s.mu.Unlock()
	if err := s.st.TouchGateway(ctx, id, now); err != nil && !errors.Is(err, store.ErrNotFound) {
		s.log.Warn("fleet: last seen not recorded", "gateway", id, "err", err)
	}
}

func (s *Server) refuse(w http.ResponseWriter, r *http.Request, code int, reason, msg string) {
	s.refused(reason).Inc()
	// Never log the token or certificate, only the reason and the peer.
	s.log.Warn("fleet: request refused", "reason", reason, "remote", r.RemoteAddr, "path", r.URL.Path)
	writeErr(w, code, msg)
}

func (s *Server) handleEnroll(w http.ResponseWriter, r *http.Request) {
	var req proto.EnrollRequest
	if !s.decode(w, r, &req) {
		return
	}
	if !validID(req.ID) {
		writeErr(w, http.StatusBadRequest, "id: must be 1-128 letters, digits, _ . - (the gateway's node_id)")
		return
	}
	if req.Token == "" {
		s.refuse(w, r, http.StatusUnauthorized, "token_missing", "token: missing")
		return
	}
	if g, err := s.st.GetGateway(r.Context(), req.ID); err == nil && !g.Revoked {
		writeErr(w, http.StatusConflict, "gateway "+req.ID+" is already enrolled; delete it on the server first (outpost-server gateways delete "+req.ID+")")
		return
	}
	cert, certPEM, err := s.ca.SignClient([]byte(req.CSR), req.ID, s.opt.CertValidity)
	if err != nil {
		writeErr(w, http.StatusBadRequest, "csr: "+err.Error())
		return
	}
	tok, err := s.st.ConsumeBootstrapToken(r.Context(), hashToken(req.Token), req.ID, s.opt.Now())
	switch {
	case errors.Is(err, store.ErrNotFound):
		s.refuse(w, r, http.StatusUnauthorized, "token_invalid", "invalid bootstrap token")
		return
	case errors.Is(err, store.ErrTokenUsed):
		s.refuse(w, r, http.StatusUnauthorized, "token_used", "this bootstrap token was already used (tokens are single-use)")
		return
	case errors.Is(err, store.ErrTokenExpired):
		s.refuse(w, r, http.StatusUnauthorized, "token_expired", "this bootstrap token has expired")
		return
	case err != nil:
		s.internal(w, "enroll", err)
		return
	}
	now := s.opt.Now().UTC()
	g := store.Gateway{ID: req.ID, Labels: tok.Labels, Facts: req.Facts, CertSerial: ca.SerialHex(cert), CertExpiry: cert.NotAfter,
		Enrolled: now, LastSeen: now}
	if g.Labels == nil {
		g.Labels = map[string]string{}
	}
	if err := s.st.CreateGateway(r.Context(), g); err != nil {
		s.storeErr(w, "enroll", err)
		return
	}
	s.sync(r.Context())
	s.enrolled.Inc()
	s.log.Info("fleet: gateway enrolled", "gateway", req.ID, "token", tok.ID)
	writeJSON(w, http.StatusOK, proto.EnrollResponse{ID: req.ID, Certificate: string(certPEM), CA: string(s.ca.CertPEM)})
}

func (s *Server) handleDesired(w http.ResponseWriter, r *http.Request, id string) {
	doc, err := s.cache.document(id)
	if err != nil {
		s.storeErr(w, "desired", err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(doc) // compact: gateways pay for every byte
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request, id string) {
	var st proto.Status
	if !s.decode(w, r, &st) {
		return
	}
	facts := st.Facts
	st.Facts = nil // stored once, as the gateway's facts
	if err := s.st.SetGatewayStatus(r.Context(), id, st, facts, s.opt.Now()); err != nil {
		s.storeErr(w, "status", err)
		return
	}
	s.mu.Lock()
	s.seen[id] = s.opt.Now()
	s.mu.Unlock()
	s.changes.Broadcast()
	s.wakeRollouts()
	w.WriteHeader(http.StatusNoContent)
}

// handleWatch streams the gateway's changes after ?resourceVersion=N as
// newline-delimited JSON events (see package proto).
func (s *Server) handleWatch(w http.ResponseWriter, r *http.Request, id string) {
	last, err := strconv.ParseInt(r.URL.Query().Get("resourceVersion"), 10, 64)
	if err != nil || last < 0 {
		writeErr(w, http.StatusBadRequest, "resourceVersion: want a non-negative integer (from the List)")
		return
	}
	if c, err := s.st.CompactedRV(r.Context()); err != nil {
		s.internal(w, "watch", err)
		return
	} else if last < c {
		writeErr(w, http.StatusGone, "resourceVersion "+strconv.FormatInt(last, 10)+" was compacted (oldest "+strconv.FormatInt(c, 10)+"): list again")
		return
	}
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	st := &stream{cancel: cancel}
	s.mu.Lock()
	if s.streams[id] == nil {
		s.streams[id] = map[*stream]struct{}{}
	}
	s.streams[id][st] = struct{}{}
	s.mu.Unlock()
	s.changes.Broadcast()
	defer func() {
		s.mu.Lock()
		delete(s.streams[id], st)
		if len(s.streams[id]) == 0 {
			delete(s.streams, id)
		}
		s.mu.Unlock()
		s.changes.Broadcast()
	}()
	changed, stop := s.cache.Notify()
	defer stop()

	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return
	}
	enc := json.NewEncoder(w)
	send := func(e proto.Event) bool { return enc.Encode(e) == nil }
	tick := time.NewTicker(s.opt.Keepalive)
	defer tick.Stop()
	// slot -> what this stream (or the List it resumes from) gave the
	// gateway last.
	sent := s.cache.marksAt(id, last)
	if sent == nil {
		sent = map[string]string{}
	}
	for {
		evs, cur, err := s.cache.since(ctx, last)
		if errors.Is(err, store.ErrCompacted) {
			send(proto.Event{Type: proto.EventError, ResourceVersion: last, Code: http.StatusGone, Message: "resourceVersion compacted: list again"})
			rc.Flush()
			return
		}
		if err != nil {
			s.log.Warn("fleet: watch", "gateway", id, "err", err)
			return
		}
		if g, ok := s.cache.gateway(id); !ok || g.revoked {
			return
		}
		if len(evs) > 0 {
			slots, all := map[string]bool{}, false
			for _, e := range evs {
				if e.Kind == store.KindGateway {
					all = all || e.ID == id
					continue
				}
				if e.Kind == store.KindRollout {
					slots[e.Name] = true // the slot the rollout pins
					continue
				}
				slots[slotKey(e.Kind, e.Name)] = true
			}
			if all || len(slots) > 0 {
				res, ok := s.cache.resolve(id, slots, all)
				if !ok {
					return
				}
				keys := make([]string, 0, len(res))
				for k := range res {
					keys = append(keys, k)
				}
				sort.Strings(keys)
				n := 0
				for _, k := range keys {
					var e proto.Event
					mark := sentMark(res[k])
					if d := res[k]; d != nil {
						e = proto.Event{Type: proto.EventModified, ResourceVersion: cur, Object: d}
					} else {
						kind, name, _ := cutSlot(k)
						e = proto.Event{Type: proto.EventDeleted, ResourceVersion: cur, Object: &proto.Desired{Kind: kind, Name: name}}
					}
					// A slot this stream already sent with the same content
					// and revision is not sent again (a rollout's change
					// re-resolves its slot for every gateway, and most of
					// them stay as they were).
					if sent[k] == mark {
						continue
					}
					sent[k] = mark
					n++
					s.sentObjs.Inc()
					if !send(e) {
						return
					}
				}
				// The batch is complete: the client may resume after cur.
				if n > 0 && (!send(proto.Event{Type: proto.EventBookmark, ResourceVersion: cur}) || rc.Flush() != nil) {
					return
				}
			}
			last = cur
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-tick.C:
			if !send(proto.Event{Type: proto.EventBookmark, ResourceVersion: last}) || rc.Flush() != nil {
				return
			}
		}
	}
}

func cutSlot(k string) (kind, name string, ok bool) {
	for i := 0; i < len(k); i++ {
		if k[i] == '/' {
			return k[:i], k[i+1:], true
		}
	}
	return k, "", false
}

func validID(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || c == '-' || c == '.' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}
