package supervisor

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
)

// RegisterHTTP adds the component API to mux:
//
//	GET  /api/v1/components                 every component's Status (JSON array)
//	GET  /api/v1/components/{name}          one component's Status
//	POST /api/v1/components/{name}/restart  restart it (clears broken / install_failed)
//	GET  /api/v1/components/{name}/logs     last lines of its log (?lines=N, default 100)
//	POST /api/v1/components/reload          re-read the recipes directory now
//
// Errors are JSON {"error": "..."} with 404 for an unknown component.
func (s *Supervisor) RegisterHTTP(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/components", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Components())
	})
	mux.HandleFunc("GET /api/v1/components/{name}", func(w http.ResponseWriter, r *http.Request) {
		st, err := s.Component(r.PathValue("name"))
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, st)
	})
	mux.HandleFunc("POST /api/v1/components/{name}/restart", func(w http.ResponseWriter, r *http.Request) {
		if err := s.Restart(r.PathValue("name")); err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusAccepted, map[string]string{"status": "restarting"})
	})
	mux.HandleFunc("POST /api/v1/components/reload", func(w http.ResponseWriter, r *http.Request) {
		if err := s.Reload(r.Context()); err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, s.Components())
	})
	mux.HandleFunc("GET /api/v1/components/{name}/logs", func(w http.ResponseWriter, r *http.Request) {
		n := 100
		if v := r.URL.Query().Get("lines"); v != "" {
			i, err := strconv.Atoi(v)
			if err != nil || i < 1 || i > 100000 {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": "lines must be 1..100000"})
				return
			}
			n = i
		}
		lines, err := s.Logs(r.PathValue("name"), n)
		if err != nil {
			writeErr(w, err)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if len(lines) > 0 {
			_, _ = w.Write([]byte(strings.Join(lines, "\n") + "\n"))
		}
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeErr(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, ErrNotRunning):
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, map[string]string{"error": err.Error()})
}
