package server_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/outpost-edge/outpost/internal/fleet/server"
	"github.com/outpost-edge/outpost/internal/fleet/store"
	"github.com/outpost-edge/outpost/internal/fleet/store/sqlite"
)

// TestOTAHosting: uploads need operator or admin, names and contents are
// validated, versioned files never change, targets are served with Range.
func TestOTAHosting(t *testing.T) {
	st, err := sqlite.Open(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	srv, admin, err := server.Open(context.Background(), server.Options{Store: st, OTADir: t.TempDir(), OTAMaxTarget: 1 << 16})
	if err != nil {
		t.Fatal(err)
	}
	h := srv.Handler()
	viewer, err := srv.CreateAPIToken(context.Background(), store.RoleViewer, "v")
	if err != nil {
		t.Fatal(err)
	}
	operator, err := srv.CreateAPIToken(context.Background(), store.RoleOperator, "o")
	if err != nil {
		t.Fatal(err)
	}
	blob := strings.Repeat("outpost binary bytes ", 100)
	sum := sha256.Sum256([]byte(blob))
	target := "/api/v1/ota/targets/linux/amd64/" + hex.EncodeToString(sum[:]) + ".outpost-1.0.0.zst"
	meta := func(typ string, v int) string {
		return `{"signed":{"_type":"` + typ + `","version":` + string(rune('0'+v)) + `,"expires":"2030-01-01T00:00:00Z"},"signatures":[{"keyid":"k","sig":"s"}]}`
	}
	for _, tc := range []struct {
		name, token, path, body string
		code                    int
		msg                     string
	}{
		{"no token", "", target, blob, 401, "API token"},
		{"viewer", viewer, target, blob, 403, "role"},
		{"target", operator, target, blob, 201, ""},
		{"same target again", admin, target, blob, 204, ""},
		{"hash does not match the name", operator, "/api/v1/ota/targets/linux/amd64/" + strings.Repeat("0", 64) + ".outpost-1.0.1.zst", blob, 400, "does not match the name"},
		{"name without hash", operator, "/api/v1/ota/targets/linux/amd64/outpost.zst", blob, 400, "sha256 of the content"},
		{"dot dot (the router cleans it: a redirect, nothing stored)", operator, "/api/v1/ota/targets/linux/../x/" + hex.EncodeToString(sum[:]) + ".a", blob, 307, ""},
		{"dot segment", operator, "/api/v1/ota/targets/linux/..x/" + hex.EncodeToString(sum[:]) + ".a", blob, 400, "segment 2"},
		{"hidden segment", operator, "/api/v1/ota/targets/.git/" + hex.EncodeToString(sum[:]) + ".a", blob, 400, "segment 1"},
		{"too large", operator, "/api/v1/ota/targets/x/" + strings.Repeat("1", 64) + ".big", strings.Repeat("x", 1<<16+1), 413, "at most 65536"},
		{"metadata", operator, "/api/v1/ota/metadata/1.root.json", meta("root", 1), 201, ""},
		{"mutable root", operator, "/api/v1/ota/metadata/root.json", meta("root", 1), 201, ""},
		{"timestamp", operator, "/api/v1/ota/metadata/timestamp.json", meta("timestamp", 1), 201, ""},
		{"timestamp replaced", operator, "/api/v1/ota/metadata/timestamp.json", meta("timestamp", 2), 201, ""},
		{"delegated role", operator, "/api/v1/ota/metadata/1.arm64-builds.json", meta("targets", 1), 201, ""},
		{"versioned metadata changed", operator, "/api/v1/ota/metadata/1.root.json", meta("root", 1) + " ", 409, "never change"},
		{"version does not match the name", operator, "/api/v1/ota/metadata/2.snapshot.json", meta("snapshot", 3), 400, "does not match the name"},
		{"wrong type", operator, "/api/v1/ota/metadata/3.snapshot.json", meta("targets", 3), 400, `signed._type \"targets\", want \"snapshot\"`},
		{"unsigned", operator, "/api/v1/ota/metadata/4.targets.json", `{"signed":{"_type":"targets","version":4},"signatures":[]}`, 400, "signatures: none"},
		{"not JSON", operator, "/api/v1/ota/metadata/5.targets.json", `nope`, 400, "not TUF metadata"},
		{"unversioned snapshot", operator, "/api/v1/ota/metadata/snapshot.json", meta("snapshot", 1), 400, "only root.json and timestamp.json"},
		{"bad metadata name", operator, "/api/v1/ota/metadata/Root.JSON", meta("root", 1), 400, "metadata name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := do(h, tc.token, "PUT", tc.path, tc.body)
			if code != tc.code || !strings.Contains(body, tc.msg) {
				t.Fatalf("PUT %s = %d %s, want %d %q", tc.path, code, body, tc.code, tc.msg)
			}
		})
	}

	// Served without a token, with Range.
	req := httptest.NewRequest("GET", target, nil)
	req.Header.Set("Range", "bytes=8-13")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusPartialContent || rec.Body.String() != blob[8:14] || rec.Header().Get("Content-Range") != "bytes 8-13/2100" {
		t.Fatalf("range GET = %d %q %q", rec.Code, rec.Body.String(), rec.Header().Get("Content-Range"))
	}
	if code, body := do(h, "", "GET", target, ""); code != 200 || body != blob {
		t.Fatalf("GET = %d (%d bytes)", code, len(body))
	}
	if code, body := do(h, "", "GET", "/api/v1/ota/metadata/timestamp.json", ""); code != 200 || !strings.Contains(body, `"version":2`) {
		t.Fatalf("GET timestamp = %d %s", code, body)
	}
	for _, p := range []string{"/api/v1/ota/metadata/9.root.json", "/api/v1/ota/targets/linux/amd64", "/api/v1/ota/targets/linux/%2e%2e/x"} {
		if code, _ := do(h, "", "GET", p, ""); code != 404 {
			t.Fatalf("GET %s = %d, want 404", p, code)
		}
	}
}

// FuzzOTAPut: any name and body is answered 2xx or 4xx, never 5xx or a
// crash (names are checked before any file is touched).
func FuzzOTAPut(f *testing.F) {
	f.Add("metadata", "1.root.json", `{"signed":{"_type":"root","version":1},"signatures":[{"keyid":"k","sig":"s"}]}`)
	f.Add("metadata", "timestamp.json", `{"signed":{"_type":"timestamp","version":"x"}}`)
	f.Add("targets", "linux/amd64/"+strings.Repeat("a", 64)+".x", "abc")
	f.Add("targets", "../../etc/passwd", "x")
	st, err := sqlite.Open(context.Background(), f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { st.Close() })
	srv, admin, err := server.Open(context.Background(), server.Options{Store: st, OTADir: f.TempDir(), OTAMaxTarget: 1 << 12})
	if err != nil {
		f.Fatal(err)
	}
	h := srv.Handler()
	f.Fuzz(func(t *testing.T, kind, name, body string) {
		if kind != "metadata" {
			kind = "targets"
		}
		req := httptest.NewRequest("PUT", "/api/v1/ota/"+kind+"/x", strings.NewReader(body))
		req.URL.Path = "/api/v1/ota/" + kind + "/" + name // raw, unescaped: what a client could send
		req.Header.Set("Authorization", "Bearer "+admin)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code >= 500 {
			t.Fatalf("PUT %s/%q = %d %s", kind, name, rec.Code, rec.Body.String())
		}
	})
}
