package dashboard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// RolloutCreator is a Rollouts that can also start a rollout (the
// "New rollout" form is shown only when the controller is one).
type RolloutCreator interface {
	// Create starts a rollout; body is a POST /api/v1/rollouts request.
	// A refused request is an *InputError naming the field.
	Create(ctx context.Context, body []byte) (Rollout, error)
}

// InputError is a request the rollout API (or the form) refused, with
// the form field it names ("" when it names none).
type InputError struct {
	Field string
	Msg   string
	Code  int // the API's answer (400 or 409); 0 means 400
}

func (e *InputError) Error() string { return e.Msg }

// Create implements RolloutCreator through POST /api/v1/rollouts.
func (a apiRollouts) Create(ctx context.Context, body []byte) (Rollout, error) {
	code, b := a.c.RolloutAPI(ctx, "", "", body)
	var r Rollout
	switch {
	case code == http.StatusCreated || code == http.StatusOK:
		err := json.Unmarshal(b, &r)
		return r, err
	case code == http.StatusBadRequest || code == http.StatusConflict:
		var e struct {
			Error string `json:"error"`
		}
		_ = json.Unmarshal(b, &e)
		return r, &InputError{Field: formField(e.Error), Msg: e.Error, Code: code}
	}
	return r, apiError(code, b, "new rollout")
}

// formFields are the inputs of the "New rollout" form, in order.
var formFields = []string{"name", "kind", "object", "spec", "revision", "selector", "waves", "soak", "deadline", "maxFailed", "maxFailedPercent", "maxRuleErrors", "maxQueueGrowth", "autoRollback"}

// formField maps the field an API message starts with ("waves[1].percent:
// ...", "gates.maxFailed: ...", "object.kind: ...") to the form input.
func formField(msg string) string {
	f, _, ok := strings.Cut(msg, ":")
	if !ok || strings.ContainsAny(f, " \t") {
		return ""
	}
	switch {
	case strings.HasPrefix(f, "waves"):
		return "waves"
	case f == "object.kind":
		return "kind"
	case f == "object" || f == "object.name":
		return "object"
	case strings.HasPrefix(f, "spec"):
		return "spec"
	case strings.HasPrefix(f, "gates."):
		f = strings.TrimPrefix(f, "gates.")
	}
	for _, x := range formFields {
		if f == x {
			return f
		}
	}
	return ""
}

// parseWaves reads the waves textarea: one wave a line, "NAME
// selector=EXPR", "NAME percent=N" or "NAME count=N"; blank lines and
// lines starting with # are skipped.
func parseWaves(text string) ([]map[string]any, error) {
	var waves []map[string]any
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, rest, _ := strings.Cut(line, " ")
		rest = strings.TrimSpace(rest)
		key, val, ok := strings.Cut(rest, "=")
		if !ok || val == "" {
			return nil, fmt.Errorf("waves: line %d: %q: want NAME selector=EXPR, NAME percent=N or NAME count=N", i+1, line)
		}
		w := map[string]any{"name": name}
		switch key {
		case "selector":
			w["selector"] = val
		case "percent":
			p, err := strconv.ParseFloat(val, 64)
			if err != nil {
				return nil, fmt.Errorf("waves: line %d: percent %q: want a number", i+1, val)
			}
			w["percent"] = p
		case "count":
			n, err := strconv.Atoi(val)
			if err != nil {
				return nil, fmt.Errorf("waves: line %d: count %q: want an integer", i+1, val)
			}
			w["count"] = n
		default:
			return nil, fmt.Errorf("waves: line %d: %q: want selector=, percent= or count=", i+1, key)
		}
		waves = append(waves, w)
	}
	return waves, nil
}

// rolloutRequest turns the form into a POST /api/v1/rollouts body. Only
// what the API cannot see (a malformed number, JSON or wave line) is
// checked here; everything else is the API's to refuse.
func rolloutRequest(f url.Values) ([]byte, *InputError) {
	bad := func(field string, err error) *InputError { return &InputError{Field: field, Msg: err.Error()} }
	req := map[string]any{
		"name":     strings.TrimSpace(f.Get("name")),
		"object":   map[string]string{"kind": strings.TrimSpace(f.Get("kind")), "name": strings.TrimSpace(f.Get("object"))},
		"selector": strings.TrimSpace(f.Get("selector")),
		"soak":     strings.TrimSpace(f.Get("soak")),
		"deadline": strings.TrimSpace(f.Get("deadline")),
	}
	if s := strings.TrimSpace(f.Get("spec")); s != "" {
		if !json.Valid([]byte(s)) {
			var v any
			err := json.Unmarshal([]byte(s), &v)
			return nil, bad("spec", fmt.Errorf("spec: not valid JSON: %w", err))
		}
		req["spec"] = json.RawMessage(s)
	}
	if s := strings.TrimSpace(f.Get("revision")); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return nil, bad("revision", fmt.Errorf("revision: %q: want an integer", s))
		}
		req["revision"] = n
	}
	waves, err := parseWaves(f.Get("waves"))
	if err != nil {
		return nil, bad("waves", err)
	}
	req["waves"] = waves
	gates := map[string]any{}
	if s := strings.TrimSpace(f.Get("maxFailed")); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			return nil, bad("maxFailed", fmt.Errorf("maxFailed: %q: want an integer", s))
		}
		gates["maxFailed"] = n
	}
	if s := strings.TrimSpace(f.Get("maxFailedPercent")); s != "" {
		p, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, bad("maxFailedPercent", fmt.Errorf("maxFailedPercent: %q: want a number", s))
		}
		gates["maxFailedPercent"] = p
	}
	for _, g := range []string{"maxRuleErrors", "maxQueueGrowth"} {
		if s := strings.TrimSpace(f.Get(g)); s != "" {
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				return nil, bad(g, fmt.Errorf("%s: %q: want an integer", g, s))
			}
			gates[g] = n
		}
	}
	if len(gates) > 0 {
		req["gates"] = gates
	}
	req["autoRollback"] = f.Get("autoRollback") != ""
	b, err := json.Marshal(req)
	if err != nil {
		return nil, bad("", err)
	}
	return b, nil
}

// creator is the controller's create side, nil when it has none.
func (d *Dashboard) creator() RolloutCreator {
	c, _ := d.opt.Rollouts.(RolloutCreator)
	return c
}

// rolloutCreate handles the "New rollout" form (POST /rollouts).
func (d *Dashboard) rolloutCreate(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	if d.noRollouts(w, r, rc) {
		return
	}
	c := d.creator()
	if c == nil {
		d.render(w, r, http.StatusNotFound, "error", rc, map[string]any{"Title": "Rollouts", "Message": "this rollout controller cannot start rollouts"})
		return
	}
	if err := r.ParseForm(); err != nil {
		d.rolloutListWith(w, r, rc, http.StatusBadRequest, nil, &InputError{Msg: "form: " + err.Error()})
		return
	}
	body, ierr := rolloutRequest(r.PostForm)
	var err error
	var ro Rollout
	if ierr == nil {
		ro, err = c.Create(r.Context(), body)
		if !errors.As(err, &ierr) && err != nil {
			d.fail(w, r, rc, "new rollout", err)
			return
		}
	}
	if ierr != nil {
		code := http.StatusBadRequest
		if ierr.Code != 0 {
			code = ierr.Code
		}
		d.rolloutListWith(w, r, rc, code, r.PostForm, ierr)
		return
	}
	d.log.Info("dashboard: rollout created", "user", rc.User.Name, "rollout", ro.Name)
	http.Redirect(w, r, "/rollouts/"+url.PathEscape(ro.Name)+"?msg="+url.QueryEscape("rollout started"), http.StatusSeeOther)
}
