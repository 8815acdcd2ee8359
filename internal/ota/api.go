package ota

import (
	"encoding/json"
	"errors"
	"net/http"
)

// Register adds the update API to mux:
//
//	POST /api/v1/update/check   refresh metadata; 200 with Status (Available set when newer)
//	POST /api/v1/update/apply   start an update in the background; 202 with Status
//	GET  /api/v1/update/status  200 with Status (progress while downloading)
//	GET    /api/v1/update/bad            200 {"bad_versions": [...]}
//	DELETE /api/v1/update/bad/{version}  forget one bad version: 200 BadList, 404 if not bad
//	DELETE /api/v1/update/bad            forget every bad version: 200 BadList
//
// Errors are JSON {"error": "..."} with 409 while busy or on trial, 502 for
// repository failures. The handlers do not authenticate: the agent serves
// /api/v1/update/ only with telemetry.token or on telemetry.socket
// (telemetry.Options.Protected).
func (u *Updater) Register(mux *http.ServeMux) {
	mux.HandleFunc("POST /api/v1/update/check", u.handleCheck)
	mux.HandleFunc("POST /api/v1/update/apply", u.handleApply)
	mux.HandleFunc("GET /api/v1/update/status", u.handleStatus)
	mux.HandleFunc("GET /api/v1/update/bad", u.handleBad)
	mux.HandleFunc("DELETE /api/v1/update/bad", u.handleForgetBad)
	mux.HandleFunc("DELETE /api/v1/update/bad/{version}", u.handleForgetBad)
}

// BadList is the answer of the /api/v1/update/bad endpoints.
type BadList struct {
	Bad       []string `json:"bad_versions"`
	Forgotten []string `json:"forgotten,omitempty"`
}

func (u *Updater) handleBad(w http.ResponseWriter, _ *http.Request) {
	bad, err := u.BadVersions()
	if err != nil {
		writeJSON(w, errCode(err), apiError{err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, BadList{Bad: nonNil(bad)})
}

func (u *Updater) handleForgetBad(w http.ResponseWriter, r *http.Request) {
	v := r.PathValue("version")
	var versions []string
	if v != "" {
		versions = []string{v}
	}
	removed, err := u.ForgetBad(versions, v == "")
	if err != nil {
		writeJSON(w, errCode(err), apiError{err.Error()})
		return
	}
	bad, err := u.BadVersions()
	if err != nil {
		writeJSON(w, errCode(err), apiError{err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, BadList{Bad: nonNil(bad), Forgotten: removed})
}

func errCode(err error) int {
	switch {
	case errors.Is(err, ErrNotBad):
		return http.StatusNotFound
	case errors.Is(err, ErrDisabled):
		return http.StatusConflict
	}
	return http.StatusInternalServerError
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

type apiError struct {
	Error string `json:"error"`
}

func (u *Updater) handleStatus(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, u.Status())
}

func (u *Updater) handleCheck(w http.ResponseWriter, r *http.Request) {
	_, err := u.Check(r.Context())
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, u.Status())
	case errors.Is(err, ErrTrial), errors.Is(err, ErrDisabled):
		writeJSON(w, http.StatusConflict, apiError{err.Error()})
	default:
		writeJSON(w, http.StatusBadGateway, apiError{err.Error()})
	}
}

func (u *Updater) handleApply(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	busy, enabled := u.busy, u.e != nil && u.e.cfg.Enabled && !u.stopping
	u.mu.Unlock()
	if !enabled {
		writeJSON(w, http.StatusConflict, apiError{ErrDisabled.Error()})
		return
	}
	if busy {
		writeJSON(w, http.StatusConflict, apiError{ErrBusy.Error()})
		return
	}
	// Check synchronously so the caller learns at once whether there is
	// anything to apply; the download runs in the updater loop.
	plan, err := u.Check(r.Context())
	switch {
	case errors.Is(err, ErrTrial):
		writeJSON(w, http.StatusConflict, apiError{err.Error()})
		return
	case err != nil:
		writeJSON(w, http.StatusBadGateway, apiError{err.Error()})
		return
	case plan == nil:
		writeJSON(w, http.StatusOK, u.Status())
		return
	}
	u.Trigger(true)
	writeJSON(w, http.StatusAccepted, u.Status())
}
