package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/outpost-edge/outpost/internal/fleet/proto"
	"github.com/outpost-edge/outpost/internal/fleet/server"
	"github.com/outpost-edge/outpost/internal/fleet/store/sqlite"
)

func newServer(t testing.TB) (*server.Server, http.Handler, string) {
	t.Helper()
	st, err := sqlite.Open(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	srv, admin, err := server.Open(context.Background(), server.Options{Store: st, MaxBody: 4096})
	if err != nil {
		t.Fatal(err)
	}
	return srv, srv.Handler(), admin
}

func do(h http.Handler, token, method, path, body string) (int, string) {
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

func TestBadInputIs4xxWithAMessage(t *testing.T) {
	_, h, admin := newServer(t)
	tests := []struct {
		name, method, path, body string
		code                     int
		msg                      string
	}{
		{"malformed JSON", "PUT", "/api/v1/objects/ruleset/a", `{"spec": {"sql": "x"`, 400, "bad JSON"},
		{"syntax error", "PUT", "/api/v1/objects/ruleset/a", `{"spec": {"sql": x}}`, 400, "malformed JSON at byte"},
		{"unknown field", "PUT", "/api/v1/objects/ruleset/a", `{"spek": {}}`, 400, `unknown field "spek"`},
		{"wrong type", "PUT", "/api/v1/objects/ruleset/a", `{"name": 5, "spec": {}}`, 400, "field name"},
		{"trailing data", "PUT", "/api/v1/objects/ruleset/a", `{"spec": {"sql": "x"}} {}`, 400, "trailing data"},
		{"empty body", "POST", "/api/v1/tokens", ``, 400, "empty body"},
		{"oversized", "PUT", "/api/v1/objects/ruleset/a", `{"spec": {"sql": "` + strings.Repeat("x", 5000) + `"}}`, 413, "body larger than 4096 bytes"},
		{"unknown kind", "PUT", "/api/v1/objects/widget/a", `{"spec": {}}`, 400, "kind: \"widget\""},
		{"bad id", "PUT", "/api/v1/objects/ruleset/a%20b", `{"spec": {"sql": "x"}}`, 400, "id:"},
		{"spec not object", "PUT", "/api/v1/objects/ruleset/a", `{"spec": [1]}`, 400, "spec: must be a JSON object"},
		{"rule set without sql", "PUT", "/api/v1/objects/ruleset/a", `{"spec": {}}`, 400, "spec.sql"},
		{"function without a name", "PUT", "/api/v1/objects/function/a", `{"spec": {"version": 2}}`, 400, "spec.function"},
		{"function with a bad name", "PUT", "/api/v1/objects/function/a", `{"spec": {"function": "../x", "version": 2}}`, 400, "spec.function"},
		{"function without a version", "PUT", "/api/v1/objects/function/a", `{"spec": {"function": "anomaly"}}`, 400, "spec.version"},
		{"function version 0", "PUT", "/api/v1/objects/function/a", `{"spec": {"function": "anomaly", "version": 0}}`, 400, "spec.version: 0"},
		{"function version not an integer", "PUT", "/api/v1/objects/function/a", `{"spec": {"function": "anomaly", "version": 1.5}}`, 400, "spec.version: 1.5"},
		{"function version a string", "PUT", "/api/v1/objects/function/a", `{"spec": {"function": "anomaly", "version": "2"}}`, 400, "spec.version"},
		{"function spec with an unknown field", "PUT", "/api/v1/objects/function/a", `{"spec": {"function": "anomaly", "version": 2, "url": "http://x"}}`, 400, "spec.url: unknown field"},
		{"bad target selector", "PUT", "/api/v1/objects/ruleset/a", `{"target": {"selector": "a in (b"}, "spec": {"sql": "x"}}`, 400, "target.selector"},
		{"selector and gateway", "PUT", "/api/v1/objects/ruleset/a", `{"target": {"selector": "a=b", "gateway": "g"}, "spec": {"sql": "x"}}`, 400, "not both"},
		{"bad list selector", "GET", "/api/v1/gateways?selector=site%3D%3D%3D", "", 400, "selector: selector: syntax error at column"},
		{"bad token expiry", "POST", "/api/v1/tokens", `{"expires": "forever"}`, 400, "expires"},
		{"bad token labels", "POST", "/api/v1/tokens", `{"labels": {"-x": "y"}}`, 400, "labels"},
		{"bad role", "POST", "/api/v1/apitokens", `{"role": "root"}`, 400, "role"},
		{"unknown gateway", "GET", "/api/v1/gateways/nope", "", 404, "gateway nope"},
		{"unknown object", "DELETE", "/api/v1/objects/ruleset/nope", "", 404, "ruleset/nope"},
		{"unknown endpoint", "GET", "/api/v1/nothing", "", 404, "no endpoint"},
		{"enroll malformed", "POST", "/api/v1/enroll", `{"token": 1}`, 400, "field token"},
		{"enroll bad id", "POST", "/api/v1/enroll", `{"token": "x", "id": "../etc"}`, 400, "id:"},
		{"enroll bad csr", "POST", "/api/v1/enroll", `{"token": "x", "id": "gw", "csr": "nope"}`, 400, "csr:"},
		{"watch without certificate", "GET", "/api/v1/agent/watch?resourceVersion=0", "", 401, "client certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := do(h, admin, tt.method, tt.path, tt.body)
			var e proto.Error
			if json.Unmarshal([]byte(body), &e) != nil || e.Error == "" {
				t.Fatalf("body is not a JSON error: %s", body)
			}
			if code != tt.code || !strings.Contains(e.Error, tt.msg) {
				t.Fatalf("%s %s = %d %s, want %d with %q", tt.method, tt.path, code, e.Error, tt.code, tt.msg)
			}
		})
	}
}

func TestRoles(t *testing.T) {
	srv, h, admin := newServer(t)
	viewer, _ := srv.CreateAPIToken(context.Background(), "viewer", "v")
	operator, _ := srv.CreateAPIToken(context.Background(), "operator", "o")
	put := `{"spec": {"sql": "x"}}`
	tests := []struct {
		token, method, path, body string
		code                      int
	}{
		{"", "GET", "/api/v1/gateways", "", 401},
		{"opa_forged", "GET", "/api/v1/gateways", "", 401},
		{viewer, "GET", "/api/v1/gateways", "", 200},
		{viewer, "GET", "/api/v1/objects", "", 200},
		{viewer, "PUT", "/api/v1/objects/ruleset/a", put, 403},
		{operator, "PUT", "/api/v1/objects/ruleset/a", put, 200},
		{operator, "POST", "/api/v1/tokens", `{}`, 403},
		{operator, "POST", "/api/v1/gateways/x/revoke", "", 403},
		{admin, "POST", "/api/v1/tokens", `{}`, 201},
	}
	for _, tt := range tests {
		code, body := do(h, tt.token, tt.method, tt.path, tt.body)
		if code != tt.code {
			t.Errorf("%s %s as %.8s = %d %s, want %d", tt.method, tt.path, tt.token, code, body, tt.code)
		}
	}
	if srv.Refused("api_role") != 3 || srv.Refused("api_token_invalid") != 1 || srv.Refused("api_token_missing") != 1 {
		t.Fatalf("refusals not counted: role %d invalid %d missing %d", srv.Refused("api_role"), srv.Refused("api_token_invalid"), srv.Refused("api_token_missing"))
	}
}

// TestOptimisticConcurrency: an update naming a stale resourceVersion gets
// 409 (two operators editing one object: one wins).
func TestOptimisticConcurrency(t *testing.T) {
	_, h, admin := newServer(t)
	code, body := do(h, admin, "PUT", "/api/v1/objects/ruleset/a", `{"spec": {"sql": "v1"}, "resourceVersion": -1}`)
	if code != 200 {
		t.Fatal(code, body)
	}
	var o proto.Object
	json.Unmarshal([]byte(body), &o)
	first := `{"spec": {"sql": "v2"}, "resourceVersion": ` + jsonInt(o.ResourceVersion) + `}`
	if code, body := do(h, admin, "PUT", "/api/v1/objects/ruleset/a", first); code != 200 {
		t.Fatal(code, body)
	}
	if code, body := do(h, admin, "PUT", "/api/v1/objects/ruleset/a", first); code != 409 || !strings.Contains(body, "not "+jsonInt(o.ResourceVersion)) {
		t.Fatalf("stale update = %d %s", code, body)
	}
	if code, _ := do(h, admin, "PUT", "/api/v1/objects/ruleset/a", `{"spec": {"sql": "v1"}, "resourceVersion": -1}`); code != 409 {
		t.Fatalf("create-only over an existing object = %d", code)
	}
	if code, _ := do(h, admin, "DELETE", "/api/v1/objects/ruleset/a?resourceVersion=1", ""); code != 409 {
		t.Fatalf("stale delete = %d", code)
	}
}

func jsonInt(v int64) string { b, _ := json.Marshal(v); return string(b) }

// FuzzObjectPut: whatever the body, the API answers 2xx or 4xx, never 5xx.
func FuzzObjectPut(f *testing.F) {
	for _, s := range []string{`{"spec": {"sql": "x"}}`, `{"target": {"selector": "a in (b,c)"}, "spec": {"yaml": "a: 1"}}`, `{`, `[]`, `{"spec": null}`, `{"resourceVersion": -5, "spec": {}}`} {
		f.Add("ruleset", s)
		f.Add("config", s)
	}
	_, h, admin := newServer(f)
	f.Fuzz(func(t *testing.T, kind, body string) {
		req := httptest.NewRequest("PUT", "/api/v1/objects/x/a", bytes.NewReader([]byte(body)))
		req.SetPathValue("kind", kind)
		req.URL.Path = "/api/v1/objects/" + urlSafe(kind) + "/a"
		req.Header.Set("Authorization", "Bearer "+admin)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code >= 500 {
			t.Fatalf("PUT %q %q = %d %s", kind, body, rec.Code, rec.Body)
		}
	})
}

func urlSafe(s string) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' {
			b.WriteByte(c)
		}
	}
	if b.Len() == 0 {
		return "k"
	}
	return b.String()
}
