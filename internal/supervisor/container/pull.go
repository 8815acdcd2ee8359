package container

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// ErrPull is returned when the runtime could not pull an image from its
// registry (unreachable, unauthorized, unknown manifest); the message is
// the runtime's.
var ErrPull = errors.New("image pull failed")

// RegistryAuth are the credentials for one registry. Never log them.
type RegistryAuth struct {
	Username, Password string
	// ServerAddress is the registry's host[:port], as in the reference.
	ServerAddress string
}

// Puller is implemented by runtimes that pull images from registries.
type Puller interface {
	// Pull fetches ref ("registry/repo@sha256:..." or ":tag") into the
	// runtime, with auth for a private registry (nil: anonymous). The
	// registry's TLS trust and mirrors are the runtime's own configuration.
	Pull(ctx context.Context, ref string, auth *RegistryAuth) error
}

var _ Puller = (*Docker)(nil)

// Pull implements Puller: POST /images/create with the credentials in
// X-Registry-Auth (base64url JSON, as Docker's CLI sends them). Progress
// and errors arrive in a JSON message stream with status 200.
func (d *Docker) Pull(ctx context.Context, ref string, auth *RegistryAuth) error {
	name, tag := splitRef(ref)
	q := url.Values{"fromImage": {name}}
	if tag != "" {
		q.Set("tag", tag)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.url("/images/create", q), nil)
	if err != nil {
		return err
	}
	if auth != nil {
		b, _ := json.Marshal(map[string]string{"username": auth.Username, "password": auth.Password, "serveraddress": auth.ServerAddress})
		req.Header.Set("X-Registry-Auth", base64.URLEncoding.EncodeToString(b))
	}
	// A pull may take minutes: the stream client has no overall timeout,
	// ctx bounds it.
	resp, err := d.send(ctx, d.stream, req, http.MethodPost, "/images/create")
	if err != nil {
		if IsUnavailable(err) || ctx.Err() != nil {
			return err
		}
		return fmt.Errorf("%w: %w", ErrPull, err)
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(io.LimitReader(resp.Body, 16<<20))
	for {
		var m struct {
			Error       string `json:"error"`
			ErrorDetail struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			if ctx.Err() != nil {
				return fmt.Errorf("container: pull %s: %w", ref, ctx.Err())
			}
			return fmt.Errorf("container: pull %s: %w: reading the runtime's progress: %v", ref, ErrPull, err)
		}
		if m.Error != "" {
			return fmt.Errorf("container: pull %s: %w: %s", ref, ErrPull, m.Error)
		}
	}
}

// splitRef splits "host/repo:tag" or "host/repo@sha256:..." into the
// repository and the tag or digest (empty: none).
// A digest wins over a tag ("repo:1@sha256:..." -> "repo", "sha256:..."):
// the Docker API takes one or the other.
func splitRef(ref string) (name, tagOrDigest string) {
	if i := strings.IndexByte(ref, '@'); i >= 0 {
		name, _ := splitRef(ref[:i])
		return name, ref[i+1:]
	}
	slash := strings.LastIndexByte(ref, '/')
	if i := strings.LastIndexByte(ref, ':'); i > slash {
		return ref[:i], ref[i+1:]
	}
	return ref, ""
}

// Repository returns a reference without its tag or digest
// ("host:5000/repo:1" -> "host:5000/repo").
func Repository(ref string) string {
	name, _ := splitRef(ref)
	return name
}

// RegistryHost returns the registry a reference names: its first path
// component when that looks like a host (has a dot or a port, or is
// localhost), else Docker Hub's "docker.io".
func RegistryHost(ref string) string {
	i := strings.IndexByte(ref, '/')
	if i < 0 {
		return "docker.io"
	}
	h := ref[:i]
	if strings.ContainsAny(h, ".:") || h == "localhost" {
		return h
	}
	return "docker.io"
}
