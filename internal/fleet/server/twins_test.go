package server_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/proto"
	"github.com/outpost-edge/outpost/internal/fleet/server"
	"github.com/outpost-edge/outpost/internal/fleet/store"
	"github.com/outpost-edge/outpost/internal/fleet/store/sqlite"
	"github.com/outpost-edge/outpost/internal/fleet/twin"
)

// newTwinServer is a server whose store has gateway gw-1 registered.
func newTwinServer(t *testing.T) (*server.Server, http.Handler, *sqlite.Store, string) {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if err := st.CreateGateway(ctx, store.Gateway{ID: "gw-1", Labels: map[string]string{}, CertSerial: "1", Enrolled: time.Now()}); err != nil {
		t.Fatal(err)
	}
	srv, admin, err := server.Open(ctx, server.Options{Store: st, MaxBody: 16 << 10})
	if err != nil {
		t.Fatal(err)
	}
	return srv, srv.Handler(), st, admin
}

// TestTwinAPI walks one twin through the API: each step's status and what
// the answer must contain, in order (the steps build on each other).
func TestTwinAPI(t *testing.T) {
	srv, h, st, admin := newTwinServer(t)
	viewer, _ := srv.CreateAPIToken(context.Background(), "viewer", "v")
	operator, _ := srv.CreateAPIToken(context.Background(), "operator", "o")
	const tw = "/api/v1/gateways/gw-1/twins/dev-1"
	steps := []struct {
		name, token, method, path, body string
		code                            int
		want                            []string
	}{
		{"no token", "", "GET", "/api/v1/gateways/gw-1/twins", "", 401, []string{"API token"}},
		{"empty list", viewer, "GET", "/api/v1/gateways/gw-1/twins", "", 200, []string{"[]"}},
		{"unknown twin", viewer, "GET", tw, "", 404, []string{"twin gw-1/dev-1"}},
		{"viewer cannot patch", viewer, "PATCH", tw, `{"desired": {"fan": "on"}}`, 403, []string{"operator role"}},
		{"unknown gateway", operator, "PATCH", "/api/v1/gateways/nope/twins/dev-1", `{"desired": {"a": 1}}`, 404, []string{"gateway nope"}},
		{"bad device id", operator, "PATCH", "/api/v1/gateways/gw-1/twins/a+b", `{"desired": {"a": 1}}`, 400, []string{"device:"}},
		{"desired not an object", operator, "PATCH", tw, `{"desired": [1]}`, 400, []string{"desired: must be a JSON object"}},
		{"desired missing", operator, "PATCH", tw, `{"version": 0}`, 400, []string{"desired: must be a JSON object"}},
		{"negative version", operator, "PATCH", tw, `{"desired": {}, "version": -2}`, 400, []string{"version: must be"}},
		{"unknown field", operator, "PATCH", tw, `{"desire": {}}`, 400, []string{`unknown field \"desire\"`}},
		{"wrong type", operator, "PATCH", tw, `{"desired": {}, "version": "1"}`, 400, []string{"field version"}},
		{"malformed", operator, "PATCH", tw, `{"desired": {`, 400, []string{"malformed JSON"}},
		{"too deep", operator, "PATCH", tw, `{"desired": {"a":` + strings.Repeat("[", 12) + strings.Repeat("]", 12) + `}}`, 400, []string{"nesting deeper than 8"}},
		{"too large", operator, "PATCH", tw, `{"desired": {"a": "` + strings.Repeat("x", 9000) + `"}}`, 400, []string{"larger than 8192"}},
		{"create with version 0", operator, "PATCH", tw, `{"desired": {"fan": "on", "rate": 5}, "version": 0}`, 200, []string{`"desiredVersion": 1`, `"fan": "on"`, `"delta"`}},
		{"stale version", operator, "PATCH", tw, `{"desired": {"fan": "off"}, "version": 0}`, 409, []string{"desired version 1, not 0"}},
		{"current version", operator, "PATCH", tw, `{"desired": {"rate": null, "mode": {"a": 1}}, "version": 1}`, 200, []string{`"desiredVersion": 2`, `"mode"`}},
		{"unconditional", operator, "PATCH", tw, `{"desired": {"mode": {"b": 2}}}`, 200, []string{`"desiredVersion": 3`, `"a": 1`, `"b": 2`}},
		{"get", viewer, "GET", tw, "", 200, []string{`"fan": "on"`, `"desiredVersion": 3`, `"reportedVersion": 0`}},
		{"list", viewer, "GET", "/api/v1/gateways/gw-1/twins", "", 200, []string{`"device": "dev-1"`}},
		{"objects API refuses twins", operator, "PUT", "/api/v1/objects/twin/x", `{"spec": {}}`, 400, []string{"own API"}},
	}
	for _, s := range steps {
		code, body := do(h, s.token, s.method, s.path, s.body)
		if code != s.code {
			t.Fatalf("%s: %s %s = %d %s, want %d", s.name, s.method, s.path, code, body, s.code)
		}
		for _, w := range s.want {
			if !strings.Contains(body, w) {
				t.Fatalf("%s: answer lacks %q: %s", s.name, w, body)
			}
		}
	}
	// rate was removed by the null; the twin is on the gateway's desired
	// document as an object of kind twin.
	doc, _ := json.Marshal(mustDesired(t, h, admin))
	if !strings.Contains(string(doc), `"kind":"twin","name":"dev-1","id":"gw-1/dev-1"`) || strings.Contains(string(doc), "rate") {
		t.Fatalf("desired document: %s", doc)
	}
	// Reported updates: applied in version order, replays skipped; the
	// delta shrinks.
	ctx := context.Background()
	ups := []twin.Reported{
		{Gateway: "gw-1", Device: "dev-1", Patch: json.RawMessage(`{"fan":"on"}`), Version: 1},
		{Gateway: "gw-1", Device: "dev-1", Patch: json.RawMessage(`{"mode":{"a":1,"b":2}}`), Version: 2},
		{Gateway: "gw-1", Device: "dev-1", Patch: json.RawMessage(`{"fan":"broken"}`), Version: 1}, // a replay
	}
	if n, err := st.ApplyTwinReported(ctx, ups); err != nil || n != 2 {
		t.Fatalf("ApplyTwinReported = %d, %v; want 2 applied", n, err)
	}
	code, body := do(h, viewer, "GET", tw, "")
	var got twin.Twin
	if code != 200 || json.Unmarshal([]byte(body), &got) != nil {
		t.Fatal(code, body)
	}
	if got.ReportedVersion != 2 || got.Delta != nil || !strings.Contains(compact(got.Reported), `"fan":"on"`) || got.Metadata.Reported["fan"] == 0 {
		t.Fatalf("after reported updates: %s", body)
	}
	// Delete: operator only, 404 for what is not there, and the twin
	// leaves the gateway's desired document.
	for _, s := range []struct {
		token, path string
		code        int
		want        string
	}{
		{viewer, tw, 403, "operator role"},
		{operator, "/api/v1/gateways/nope/twins/dev-1", 404, "gateway nope"},
		{operator, "/api/v1/gateways/gw-1/twins/a+b", 400, "device:"},
		{operator, "/api/v1/gateways/gw-1/twins/dev-2", 404, "twin gw-1/dev-2"},
		{operator, tw, 204, ""},
		{operator, tw, 404, "twin gw-1/dev-1"},
	} {
		if code, body := do(h, s.token, "DELETE", s.path, ""); code != s.code || !strings.Contains(body, s.want) {
			t.Fatalf("DELETE %s = %d %s, want %d %q", s.path, code, body, s.code, s.want)
		}
	}
	if code, body := do(h, viewer, "GET", tw, ""); code != 404 {
		t.Fatalf("GET after delete = %d %s", code, body)
	}
	if doc, _ := json.Marshal(mustDesired(t, h, admin)); strings.Contains(string(doc), `"kind":"twin"`) {
		t.Fatalf("desired document after delete: %s", doc)
	}
}

func mustDesired(t *testing.T, h http.Handler, admin string) proto.Document {
	t.Helper()
	code, body := do(h, admin, "GET", "/api/v1/gateways/gw-1/desired", "")
	var doc proto.Document
	if code != 200 || json.Unmarshal([]byte(body), &doc) != nil {
		t.Fatal(code, body)
	}
	return doc
}
