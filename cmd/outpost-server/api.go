package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/internal/cli"
)

// apiFlags are the connection flags every API command shares.
type apiFlags struct {
	server, ca, token string
	json              bool
}

func (a *apiFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&a.server, "server", envOr("OUTPOST_SERVER", "https://127.0.0.1:8443"), "server URL (env OUTPOST_SERVER)")
	fs.StringVar(&a.ca, "ca", envOr("OUTPOST_SERVER_CA", "fleet-data/ca.pem"), "the fleet CA certificate (env OUTPOST_SERVER_CA)")
	fs.StringVar(&a.token, "token", "", "API token (default: env OUTPOST_SERVER_TOKEN; never put it on a shared command line)")
	fs.BoolVar(&a.json, "json", false, "print the raw JSON answer")
}

// apiArgs parses the command line of a command that takes the API flags
// and exactly n positional arguments (want describes them in the usage
// error). ok=false: return code.
func apiArgs(name string, args []string, n int, want string) (a apiFlags, pos []string, code int, ok bool) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	a.register(fs)
	pos, code, ok = interspersed(fs, args)
	if !ok {
		return a, nil, code, false
	}
	if len(pos) != n {
		return a, nil, fail(name, fmt.Errorf("%w: %s", errUsage, want)), false
	}
	return a, pos, 0, true
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// errUsage marks errors that exit 2.
var errUsage = errors.New("usage")

// call performs one API request and decodes the answer into out.
func (a *apiFlags) call(ctx context.Context, method, path string, body, out any) error {
	tok := a.token
	if tok == "" {
		tok = os.Getenv("OUTPOST_SERVER_TOKEN")
	}
	if tok == "" {
		return fmt.Errorf("%w: no API token: set OUTPOST_SERVER_TOKEN (printed by the first 'outpost-server run')", errUsage)
	}
	caPEM, err := os.ReadFile(a.ca)
	if err != nil {
		return fmt.Errorf("%w: --ca: %v", errUsage, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("%w: --ca %s holds no certificate", errUsage, a.ca)
	}
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, ForceAttemptHTTP2: true}}
	// A client per call: close its connection after the answer (a sim
	// making thousands of calls kept one idle connection each).
	defer hc.CloseIdleConnections()
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(a.server, "/")+path, r)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		msg := cli.AnswerError(resp)
		if resp.StatusCode/100 == 4 && resp.StatusCode != 401 && resp.StatusCode != 403 && resp.StatusCode != 404 && resp.StatusCode != 409 {
			return fmt.Errorf("%w: %s (%d)", errUsage, msg, resp.StatusCode)
		}
		return fmt.Errorf("%s (%d)", msg, resp.StatusCode)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("reading the answer: %w", err)
	}
	if a.json {
		os.Stdout.Write(data)
		return nil
	}
	if out != nil && len(data) > 0 {
		return json.Unmarshal(data, out)
	}
	return nil
}

// fail prints err and returns its exit code.
func fail(cmd string, err error) int {
	fmt.Fprintf(os.Stderr, "outpost-server %s: %s\n", cmd, strings.TrimPrefix(err.Error(), "usage: "))
	if errors.Is(err, errUsage) {
		return exitUsage
	}
	return exitFailure
}
