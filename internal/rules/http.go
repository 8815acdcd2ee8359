package rules

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"sort"

	"github.com/outpost-edge/outpost/internal/rules/parser"
)

// maxBody bounds a PUT or explain request body.
const maxBody = parser.MaxSource

// RuleInfo is one active rule version in API responses.
type RuleInfo struct {
	Name    string            `json:"name"`
	Version int               `json:"version"`
	File    string            `json:"file"`
	From    []string          `json:"from"`
	Devices string            `json:"devices,omitempty"`
	Matched uint64            `json:"matched"`
	Emitted uint64            `json:"emitted"`
	Errors  map[string]uint64 `json:"errors"`
}

func info(r *Rule) RuleInfo {
	m, e := r.Counts()
	return RuleInfo{Name: r.Name, Version: r.Version, File: r.File, From: r.Filters, Devices: r.devicesText,
		Matched: m, Emitted: e, Errors: r.ErrorCounts()}
}

// RegisterHTTP adds the rules API to mux:
//
//	GET    /api/v1/rules                 active rules and file status
//	GET    /api/v1/rules/{name}          a rule's versions and source
//	PUT    /api/v1/rules/{name}          create or replace (body: SQL)
//	DELETE /api/v1/rules/{name}          delete
//	POST   /api/v1/rules/{name}/explain  plan of the active versions, or of
//	                                     the SQL in the body (not applied)
//
// Errors are JSON {"error": "...", "errors": ["file:line:col: ..."]} with
// 400 for invalid rules, 404 for unknown names, 409 for conflicts.
func (s *Store) RegisterHTTP(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/rules", s.handleList)
	mux.HandleFunc("GET /api/v1/rules/{name}", s.handleGet)
	mux.HandleFunc("PUT /api/v1/rules/{name}", s.handlePut)
	mux.HandleFunc("DELETE /api/v1/rules/{name}", s.handleDelete)
	mux.HandleFunc("POST /api/v1/rules/{name}/explain", s.handleExplain)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeErr(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	var el parser.ErrorList
	switch {
	case errors.As(err, &el):
		code = http.StatusBadRequest
	case errors.Is(err, ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, ErrConflict):
		code = http.StatusConflict
	}
	body := map[string]any{"error": err.Error()}
	if el != nil {
		body["error"] = "invalid rule"
		body["errors"] = errorLines(el)
	}
	writeJSON(w, code, body)
}

func (s *Store) versions(name string) []*Rule {
	var out []*Rule
	for _, r := range s.eng.Rules() {
		if r.Name == name {
			out = append(out, r)
		}
	}
	return out
}

func (s *Store) handleList(w http.ResponseWriter, _ *http.Request) {
	rules := []RuleInfo{}
	for _, r := range s.eng.Rules() {
		rules = append(rules, info(r))
	}
	writeJSON(w, http.StatusOK, map[string]any{"rules": rules, "files": s.Status()})
}

func (s *Store) handleGet(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	file, src, err := s.Source(name)
	vs := s.versions(name)
	if err != nil && len(vs) == 0 {
		writeErr(w, err)
		return
	}
	out := map[string]any{"name": name, "file": file, "source": src}
	infos := []RuleInfo{}
	for _, v := range vs {
		infos = append(infos, info(v))
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i].Version > infos[j].Version })
	out["versions"] = infos
	for _, st := range s.Status() {
		if st.File == file && len(st.Errors) > 0 {
			out["errors"] = st.Errors
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Store) handlePut(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		writeJSON(w, http.StatusRequestEntityTooLarge, map[string]string{"error": err.Error()})
		return
	}
	rules, err := s.Put(r.PathValue("name"), string(b))
	if err != nil {
		writeErr(w, err)
		return
	}
	infos := []RuleInfo{}
	for _, x := range rules {
		infos = append(infos, info(x))
	}
	writeJSON(w, http.StatusOK, map[string]any{"applied": infos})
}

func (s *Store) handleDelete(w http.ResponseWriter, r *http.Request) {
	if err := s.Delete(r.PathValue("name")); err != nil {
		writeErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Store) handleExplain(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		writeJSON(w, http.StatusRequestEntityTooLarge, map[string]string{"error": err.Error()})
		return
	}
	var rules []*Rule
	if len(b) > 0 {
		rules, err = Compile(name+".sql", string(b), CompileOptions{Env: s.eng.env, Webhook: noopWebhook})
		if err != nil {
			writeErr(w, err)
			return
		}
	} else {
		rules = s.versions(name)
		if len(rules) == 0 {
			writeErr(w, ErrNotFound)
			return
		}
	}
	plans := []Plan{}
	for _, x := range rules {
		plans = append(plans, x.Explain())
	}
	writeJSON(w, http.StatusOK, map[string]any{"plans": plans})
}
