package dashboard

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/outpost-edge/outpost/internal/fleet/store"
)

// UserRequest is the body of POST /api/v1/users and
// POST /api/v1/users/{name}/password (Name and Role unused there).
type UserRequest struct {
	Name     string `json:"name"`
	Role     string `json:"role"`
	Password string `json:"password"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func apiErr(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

func decodeUser(w http.ResponseWriter, r *http.Request) (UserRequest, bool) {
	var req UserRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 16<<10))
	dec.DisallowUnknownFields()
	err := dec.Decode(&req)
	var se *json.SyntaxError
	var mbe *http.MaxBytesError
	switch {
	case err == nil:
		return req, true
	case errors.As(err, &mbe):
		apiErr(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body larger than %d bytes", mbe.Limit))
	case errors.As(err, &se):
		apiErr(w, http.StatusBadRequest, fmt.Sprintf("malformed JSON at byte %d: %v", se.Offset, se))
	case errors.Is(err, io.EOF):
		apiErr(w, http.StatusBadRequest, "empty body: a JSON object is required")
	default:
		apiErr(w, http.StatusBadRequest, "bad JSON: "+err.Error())
	}
	return req, false
}

func (d *Dashboard) apiUsersList(w http.ResponseWriter, r *http.Request) {
	us, err := d.users.List(r.Context())
	if err != nil {
		d.log.Error("dashboard: users", "err", err)
		apiErr(w, http.StatusInternalServerError, "users: internal error (see the server log)")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"items": us})
}

func (d *Dashboard) apiUsersAdd(w http.ResponseWriter, r *http.Request) {
	req, ok := decodeUser(w, r)
	if !ok {
		return
	}
	if err := validateUser(req.Name, req.Role, req.Password); err != nil {
		apiErr(w, http.StatusBadRequest, err.Error())
		return
	}
	err := d.users.Add(r.Context(), req.Name, req.Role, req.Password)
	if errors.Is(err, store.ErrExists) {
		apiErr(w, http.StatusConflict, fmt.Sprintf("name: user %s exists (use passwd to change the password)", req.Name))
		return
	} else if err != nil {
		d.log.Error("dashboard: add user", "err", err)
		apiErr(w, http.StatusInternalServerError, "users: internal error (see the server log)")
		return
	}
	d.log.Info("dashboard: user added", "user", req.Name, "role", req.Role)
	writeJSON(w, http.StatusCreated, map[string]string{"name": req.Name, "role": req.Role})
}

func (d *Dashboard) apiUsersDelete(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	err := d.users.Delete(r.Context(), name)
	if errors.Is(err, ErrNotFound) {
		apiErr(w, http.StatusNotFound, "name: no user "+name)
		return
	} else if err != nil {
		d.log.Error("dashboard: delete user", "err", err)
		apiErr(w, http.StatusInternalServerError, "users: internal error (see the server log)")
		return
	}
	d.log.Info("dashboard: user deleted", "user", name)
	w.WriteHeader(http.StatusNoContent)
}

func (d *Dashboard) apiUsersPasswd(w http.ResponseWriter, r *http.Request) {
	req, ok := decodeUser(w, r)
	if !ok {
		return
	}
	name := r.PathValue("name")
	err := d.users.SetPassword(r.Context(), name, req.Password)
	switch {
	case errors.Is(err, ErrNotFound):
		apiErr(w, http.StatusNotFound, "name: no user "+name)
		return
	case err != nil && ValidatePassword(req.Password) != nil:
		apiErr(w, http.StatusBadRequest, err.Error())
		return
	case err != nil:
		d.log.Error("dashboard: passwd", "err", err)
		apiErr(w, http.StatusInternalServerError, "users: internal error (see the server log)")
		return
	}
	d.log.Info("dashboard: password changed", "user", name)
	w.WriteHeader(http.StatusNoContent)
}
