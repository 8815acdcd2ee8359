package postgres_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"testing"

	"github.com/outpost-edge/outpost/internal/fleet/fleettest"
	"github.com/outpost-edge/outpost/internal/fleet/server"
)

// TestOTASharedByReplicas: in PostgreSQL mode the hosted OTA repository is
// in the database, so a release pushed through one replica is served by
// the other (each has its own empty --data directory), with Range across
// the 1 MiB pieces it is stored in; versioned files stay immutable across
// replicas and root.json is replaced for all of them.
func TestOTASharedByReplicas(t *testing.T) {
	db := database(t)
	a := fleettest.StartWith(t, open(t, db), "", server.Options{OTADir: t.TempDir()})
	b := fleettest.StartWith(t, open(t, db), "", server.Options{OTADir: t.TempDir()})
	admin := a.Admin + b.Admin
	if admin == "" {
		tok, err := a.CreateAPIToken(context.Background(), "admin", "test")
		if err != nil {
			t.Fatal(err)
		}
		admin = tok
	}
	blob := make([]byte, 2<<20+12345) // three pieces
	for i := range blob {
		blob[i] = byte(i*7 + i/1000)
	}
	sum := sha256.Sum256(blob)
	target := "/api/v1/ota/targets/linux/amd64/" + hex.EncodeToString(sum[:]) + ".outpost-2.0.0"
	if code, body := a.Do(t, admin, "PUT", target, blob); code != http.StatusCreated {
		t.Fatalf("PUT on A = %d %s", code, body)
	}
	if code, body := b.Do(t, admin, "PUT", target, blob); code != http.StatusNoContent {
		t.Fatalf("the same target again on B = %d %s, want 204", code, body)
	}
	if code, body := b.Do(t, "", "GET", target, nil); code != http.StatusOK || !bytes.Equal(body, blob) {
		t.Fatalf("GET on B = %d, %d bytes (want %d)", code, len(body), len(blob))
	}
	// A range that starts in the first piece and ends in the third.
	from, to := 1<<20-10, 2<<20+100
	req, _ := http.NewRequest("GET", b.URL+target, nil)
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", from, to))
	resp, err := b.HC.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(got, blob[from:to+1]) {
		t.Fatalf("range GET on B = %d, %d bytes", resp.StatusCode, len(got))
	}
	meta := func(typ string, v int) []byte {
		return []byte(fmt.Sprintf(`{"signed":{"_type":%q,"version":%d,"expires":"2030-01-01T00:00:00Z"},"signatures":[{"keyid":"k","sig":"s"}]}`, typ, v))
	}
	for _, step := range []struct {
		srv  *fleettest.Server
		path string
		body []byte
		code int
	}{
		{a, "/api/v1/ota/metadata/1.root.json", meta("root", 1), http.StatusCreated},
		{b, "/api/v1/ota/metadata/1.root.json", append(meta("root", 1), ' '), http.StatusConflict},
		{a, "/api/v1/ota/metadata/root.json", meta("root", 1), http.StatusCreated},
		{b, "/api/v1/ota/metadata/root.json", meta("root", 2), http.StatusCreated},
	} {
		if code, body := step.srv.Do(t, admin, "PUT", step.path, step.body); code != step.code {
			t.Fatalf("PUT %s = %d %s, want %d", step.path, code, body, step.code)
		}
	}
	if code, body := a.Do(t, "", "GET", "/api/v1/ota/metadata/root.json", nil); code != http.StatusOK || !bytes.Equal(body, meta("root", 2)) {
		t.Fatalf("root.json on A = %d %s, want version 2 (replaced through B)", code, body)
	}
	if code, _ := a.Do(t, "", "GET", "/api/v1/ota/metadata/2.root.json", nil); code != http.StatusNotFound {
		t.Fatalf("a file never stored = %d, want 404", code)
	}
}
