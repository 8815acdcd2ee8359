package server

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/outpost-edge/outpost/internal/fleet/twin"
)

// MaxReportedBatch bounds the updates of one POST /api/v1/agent/twins.
const MaxReportedBatch = 1000

// ReportedBatch is the body of POST /api/v1/agent/twins: reported updates
// the gateway accepted from its devices, oldest first.
type ReportedBatch struct {
	Updates []twin.Reported `json:"updates"`
}

func withDelta(t twin.Twin) twin.Twin {
	t.Delta = twin.Delta(t.Desired, t.Reported)
	return t
}

// gatewayKnown answers 404 (and false) when id is not a registered gateway.
func (s *Server) gatewayKnown(w http.ResponseWriter, id string) bool {
	if _, ok := s.cache.gateway(id); !ok {
		writeErr(w, http.StatusNotFound, "not found: gateway "+id)
		return false
	}
	return true
}

func (s *Server) handleTwins(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !s.gatewayKnown(w, id) {
		return
	}
	ts, err := s.st.ListTwins(r.Context(), id)
	if err != nil {
		s.internal(w, "twins", err)
		return
	}
	out := make([]twin.Twin, 0, len(ts))
	for _, t := range ts {
		out = append(out, withDelta(t))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleTwinGet(w http.ResponseWriter, r *http.Request) {
	t, err := s.st.GetTwin(r.Context(), r.PathValue("id"), r.PathValue("device"))
	if err != nil {
		s.storeErr(w, "twin", err)
		return
	}
	writeJSON(w, http.StatusOK, withDelta(t))
}

// readBody reads at most MaxBody bytes (413 beyond).
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.opt.MaxBody))
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		writeErr(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body larger than %d bytes", mbe.Limit))
		return nil, false
	case err != nil:
		writeErr(w, http.StatusBadRequest, "body: "+err.Error())
		return nil, false
	}
	return b, true
}

func invalidMsg(err error) string {
	return strings.TrimPrefix(err.Error(), twin.ErrInvalid.Error()+": ")
}

func (s *Server) handleTwinPatch(w http.ResponseWriter, r *http.Request) {
	gw, dev := r.PathValue("id"), r.PathValue("device")
	if !twin.ValidDevice(dev) {
		writeErr(w, http.StatusBadRequest, fmt.Sprintf("device: %q: must be 1-128 letters, digits, _ . -", dev))
		return
	}
	if !s.gatewayKnown(w, gw) {
		return
	}
	b, ok := s.readBody(w, r)
	if !ok {
		return
	}
	p, err := twin.ParseDesiredPatch(b)
	if err != nil {
		writeErr(w, http.StatusBadRequest, invalidMsg(err))
		return
	}
	expect := int64(-1)
	if p.Version != nil {
		expect = *p.Version
	}
	t, err := s.st.PatchTwinDesired(r.Context(), gw, dev, p.Desired, expect, s.opt.Now())
	if err != nil {
		s.storeErr(w, "twin", err)
		return
	}
	s.sync(r.Context())
	// The reported side is not part of the answer of a desired write; read
	// it for the delta.
	if full, err := s.st.GetTwin(r.Context(), gw, dev); err == nil {
		t = full
	}
	writeJSON(w, http.StatusOK, withDelta(t))
}

// handleTwinDelete deletes one twin; the gateway drops its copy when the
// deleted event reaches it. 204, or 404 for an unknown gateway or twin.
func (s *Server) handleTwinDelete(w http.ResponseWriter, r *http.Request) {
	gw, dev := r.PathValue("id"), r.PathValue("device")
	if !twin.ValidDevice(dev) {
		writeErr(w, http.StatusBadRequest, fmt.Sprintf("device: %q: must be 1-128 letters, digits, _ . -", dev))
		return
	}
	if !s.gatewayKnown(w, gw) {
		return
	}
	if _, err := s.st.DeleteTwin(r.Context(), gw, dev); err != nil {
		s.storeErr(w, "twin", err)
		return
	}
	s.sync(r.Context())
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleAgentTwins(w http.ResponseWriter, r *http.Request, id string) {
	ts, err := s.st.ListTwins(r.Context(), id)
	if err != nil {
		s.internal(w, "twins", err)
		return
	}
	if ts == nil {
		ts = []twin.Twin{}
	}
	writeJSON(w, http.StatusOK, ts)
}

// ValidateReported checks one reported update from a gateway; the error
// names the update's index and field.
func ValidateReported(i int, u twin.Reported) error {
	if !twin.ValidDevice(u.Device) {
		return fmt.Errorf("updates[%d].device: %q: must be 1-128 letters, digits, _ . -", i, u.Device)
	}
	if u.Version <= 0 {
		return fmt.Errorf("updates[%d].version: must be > 0", i)
	}
	if len(u.Patch) > twin.MaxPayload {
		return fmt.Errorf("updates[%d].patch: larger than %d bytes", i, twin.MaxPayload)
	}
	if _, _, err := twin.Merge(nil, u.Patch); err != nil || !strings.HasPrefix(strings.TrimSpace(string(u.Patch)), "{") {
		return fmt.Errorf("updates[%d].patch: must be a JSON object (a merge patch)", i)
	}
	return nil
}

func (s *Server) handleAgentReported(w http.ResponseWriter, r *http.Request, id string) {
	var b ReportedBatch
	if !s.decode(w, r, &b) {
		return
	}
	if len(b.Updates) > MaxReportedBatch {
		writeErr(w, http.StatusBadRequest, fmt.Sprintf("updates: %d updates, at most %d per request", len(b.Updates), MaxReportedBatch))
		return
	}
	for i := range b.Updates {
		if err := ValidateReported(i, b.Updates[i]); err != nil {
			writeErr(w, http.StatusBadRequest, err.Error())
			return
		}
		b.Updates[i].Gateway = id // a gateway writes only its own twins
	}
	if err := s.twins.Apply(r.Context(), b.Updates); err != nil {
		s.storeErr(w, "twins", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
