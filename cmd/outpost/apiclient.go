package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/internal/cli"
	"gopkg.in/yaml.v3"
)

// The one client of the running agent's local HTTP API, shared by every
// command that talks to it (components, update, diag, queue, rules): the
// same flags, environment variables and config lookup everywhere.
//
// Where the API is: --api, else $OUTPOST_API, else the config's
// telemetry.socket (unix://PATH), else its telemetry.address, else
// http://127.0.0.1:9100. The bearer token: --token, else $OUTPOST_TOKEN
// (or the agent's own override $OUTPOST_TELEMETRY__TOKEN), else the
// config's telemetry.token. The config is --config (default
// /etc/outpost/outpost.yaml, skipped when that default file does not
// exist or cannot be read).

// defaultAPI is where the agent's API is when nothing says otherwise: the
// telemetry HTTP endpoint's default address.
const defaultAPI = "http://127.0.0.1:9100"

// defaultConfigPath is the agent's usual config file.
const defaultConfigPath = "/etc/outpost/outpost.yaml"

// apiFlags are the API flags of a command.
type apiFlags struct {
	fs                 *flag.FlagSet
	api, token, config string
}

// addAPIFlags registers --api, --token and --config on fs.
func addAPIFlags(fs *flag.FlagSet) *apiFlags {
	f := &apiFlags{fs: fs}
	fs.StringVar(&f.api, "api", "", "the agent's API: http://host:port or unix:///path/api.sock (default $OUTPOST_API, else the config's telemetry.socket or telemetry.address, else "+defaultAPI+")")
	fs.StringVar(&f.token, "token", "", "API bearer token (default $OUTPOST_TOKEN, else the config's telemetry.token)")
	fs.StringVar(&f.config, "config", defaultConfigPath, "the agent's config file, read for telemetry.address, .socket and .token (components check: for its supervisor.containers policy)")
	return f
}

// telemetrySection is what the client reads from the agent's config.
type telemetrySection struct {
	Telemetry struct {
		Address string `yaml:"address"`
		Token   string `yaml:"token"`
		Socket  string `yaml:"socket"`
	} `yaml:"telemetry"`
}

// client resolves the API address and token and returns a client.
func (f *apiFlags) client() (*apiClient, error) {
	explicit := map[string]bool{}
	f.fs.Visit(func(fl *flag.Flag) { explicit[fl.Name] = true })
	var cfg telemetrySection
	raw, err := os.ReadFile(f.config)
	switch {
	case err == nil:
		if err := yaml.Unmarshal(raw, &cfg); err != nil {
			return nil, fmt.Errorf("--config %s: %w", f.config, err)
		}
	case explicit["config"]:
		return nil, fmt.Errorf("--config: %w", err)
	}
	api, from := f.api, "--api"
	if api == "" {
		api, from = os.Getenv("OUTPOST_API"), "$OUTPOST_API"
	}
	if api == "" && cfg.Telemetry.Socket != "" {
		api, from = "unix://"+cfg.Telemetry.Socket, f.config+" telemetry.socket"
	}
	if api == "" && cfg.Telemetry.Address != "" && cfg.Telemetry.Address != "off" {
		host, port, err := net.SplitHostPort(cfg.Telemetry.Address)
		if err == nil {
			if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
				host = "127.0.0.1"
			}
			api, from = "http://"+net.JoinHostPort(host, port), f.config+" telemetry.address"
		}
	}
	if api == "" {
		api, from = defaultAPI, "default"
	}
	token := f.token
	for _, env := range []string{"OUTPOST_TOKEN", "OUTPOST_TELEMETRY__TOKEN"} {
		if token == "" {
			token = os.Getenv(env)
		}
	}
	if token == "" {
		token = cfg.Telemetry.Token
	}
	c, err := newAPIClient(api, token)
	if err != nil {
		return nil, fmt.Errorf("%w (from %s)", err, from)
	}
	return c, nil
}

// apiClient talks to the agent's local HTTP API over TCP or a unix socket.
type apiClient struct {
	base  string // http://host:port, or http://agent for a socket
	where string // what to show in errors
	token string
	hc    *http.Client
}

func newAPIClient(api, token string) (*apiClient, error) {
	u, err := url.Parse(api)
	if err != nil {
		return nil, fmt.Errorf("bad API address %q: %w", api, err)
	}
	switch u.Scheme {
	case "unix":
		sock := u.Path
		if sock == "" {
			sock = u.Opaque
		}
		return &apiClient{base: "http://agent", where: api, token: token, hc: &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", sock)
			},
		}}}, nil
	case "http", "https":
		if u.Host == "" {
			break
		}
		return &apiClient{base: strings.TrimRight(api, "/"), where: api, token: token, hc: &http.Client{}}, nil
	}
	return nil, fmt.Errorf("bad API address %q: want http://host:port or unix:///path", api)
}

// APIError is an answer of the agent with an HTTP error status.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string { return e.Message }

// ErrAgentUnreachable is returned when no agent answers.
var ErrAgentUnreachable = errors.New("cannot reach the agent")

// stream sends a request and returns the response body of a successful
// answer (the caller closes it). Errors: ErrAgentUnreachable, *APIError.
func (c *apiClient) stream(ctx context.Context, method, path string) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, nil)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("%w at %s: %v (is `outpost run` running? set --api or $OUTPOST_API)", ErrAgentUnreachable, c.where, err)
	}
	if resp.StatusCode < 300 {
		return resp.Body, nil
	}
	defer resp.Body.Close()
	msg := cli.AnswerError(resp)
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		if c.token == "" {
			msg = "unauthorized: the agent requires its telemetry.token; pass --token, set $OUTPOST_TOKEN or --config"
		} else {
			msg = "unauthorized: the token was refused"
		}
	case http.StatusServiceUnavailable:
		// /readyz answers 503 with a body worth keeping; callers that want
		// it use streamAny.
	}
	return nil, &APIError{Status: resp.StatusCode, Message: fmt.Sprintf("%s (HTTP %d)", msg, resp.StatusCode)}
}

// call sends a request and decodes the JSON answer into out (nil: discard).
func (c *apiClient) call(ctx context.Context, method, path string, out any) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	body, err := c.stream(ctx, method, path)
	if err != nil {
		return err
	}
	defer body.Close()
	b, err := io.ReadAll(io.LimitReader(body, 64<<20))
	if err != nil {
		return fmt.Errorf("reading the agent's answer: %w", err)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("bad answer from the agent to %s %s: %w", method, path, err)
	}
	return nil
}

// exitCode maps an API error to an exit status: a 404 (no such
// component, rule) is bad input, anything else a runtime failure.
func exitCode(err error) int {
	var ae *APIError
	if errors.As(err, &ae) && ae.Status == http.StatusNotFound {
		return exitUsage
	}
	return exitFailure
}
