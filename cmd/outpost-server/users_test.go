package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func runIn(t *testing.T, env []string, stdin string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(serverBin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return o.String(), e.String(), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), 0
}

// TestUsersCommandAndDashboardLogin: `outpost-server users` against a real
// server process, then a login on its dashboard with the user it made.
func TestUsersCommandAndDashboardLogin(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "server")
	os.MkdirAll(data, 0o700)
	listen := freeAddr(t)
	_, admin := startServer(t, data, listen)
	env := []string{"OUTPOST_SERVER=https://" + listen, "OUTPOST_SERVER_CA=" + filepath.Join(data, "ca.pem"), "OUTPOST_SERVER_TOKEN=" + admin}

	for _, c := range []struct {
		name  string
		stdin string
		args  []string
		code  int
		want  string
	}{
		{"add", "s3cret-pass-1\n", []string{"users", "add", "alice", "--role", "operator", "--password-stdin"}, 0, "user alice added (operator)"},
		{"duplicate", "s3cret-pass-1\n", []string{"users", "add", "alice", "--role", "viewer", "--password-stdin"}, 1, "name: user alice exists"},
		{"bad name", "s3cret-pass-1\n", []string{"users", "add", "Alice Smith", "--password-stdin"}, 2, "user: \"Alice Smith\""},
		{"bad role", "s3cret-pass-1\n", []string{"users", "add", "bob", "--role", "root", "--password-stdin"}, 2, "role: \"root\""},
		{"short password", "short\n", []string{"users", "add", "bob", "--password-stdin"}, 2, "password: at least 8 characters"},
		{"no name", "", []string{"users", "delete"}, 2, "want exactly one user NAME"},
		{"list", "", []string{"users", "list"}, 0, "alice  operator"},
		{"passwd", "s3cret-pass-2\n", []string{"users", "passwd", "alice", "--password-stdin"}, 0, "password of alice changed"},
		{"passwd unknown", "s3cret-pass-2\n", []string{"users", "passwd", "carol", "--password-stdin"}, 1, "name: no user carol"},
	} {
		out, errOut, code := runIn(t, env, c.stdin, c.args...)
		if code != c.code || !strings.Contains(out+errOut, c.want) {
			t.Errorf("%s: exit %d, want %d with %q:\n%s%s", c.name, code, c.code, c.want, out, errOut)
		}
	}

	// The dashboard of the real process accepts the new password only.
	caPEM, _ := os.ReadFile(filepath.Join(data, "ca.pem"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	login := func(pw string) int {
		jar, _ := cookiejar.New(nil)
		hc := &http.Client{Jar: jar, Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		resp, err := hc.Get("https://" + listen + "/login")
		if err != nil {
			t.Fatal(err)
		}
		page, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		m := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindSubmatch(page)
		if m == nil {
			t.Fatalf("login page without csrf:\n%s", page)
		}
		resp, err = hc.PostForm("https://"+listen+"/login", url.Values{"csrf": {string(m[1])}, "user": {"alice"}, "password": {pw}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := login("s3cret-pass-1"); code != http.StatusUnauthorized {
		t.Fatalf("old password: %d, want 401", code)
	}
	if code := login("s3cret-pass-2"); code != http.StatusSeeOther {
		t.Fatalf("new password: %d, want 303", code)
	}
	if out, errOut, code := runIn(t, env, "", "users", "delete", "alice"); code != 0 {
		t.Fatalf("delete: %d %s%s", code, out, errOut)
	}
	if code := login("s3cret-pass-2"); code != http.StatusUnauthorized {
		t.Fatalf("deleted user: %d, want 401", code)
	}
	if _, _, code := runIn(t, []string{"OUTPOST_SERVER_TOKEN="}, "", "users", "list"); code != exitUsage {
		t.Fatalf("without a token: exit %d", code)
	}
}
