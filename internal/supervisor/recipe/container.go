package recipe

import (
	"encoding/hex"
	"fmt"
	"path"
	"regexp"
	"sort"
	"strings"
	"sync"

	"gopkg.in/yaml.v3"
)

// KindNative and KindContainer are the component kinds.
const (
	KindNative    = "native"
	KindContainer = "container"
)

// Container is the container section of a kind: container recipe.
type Container struct {
	// Image is the reference without digest ("vendor/app:1.4"); Digest
	// its pinned digest ("sha256:<hex>"): the image ID (sha256 of its
	// config) or its manifest (repository) digest. Digest is empty only
	// with AllowTag.
	Image    string
	Digest   string
	AllowTag bool
	// Entrypoint replaces the image's entrypoint; Args its command.
	Entrypoint []string
	Args       []string
	// SecretEnv maps environment variable names to secrets of the agent
	// (files in supervisor.containers.secrets_dir); values are never
	// logged.
	SecretEnv  map[string]string
	Mounts     []Mount
	Network    string // "host" (default) or "none"
	Privileged bool
	User       string // "uid[:gid]" or a name known to the image
	WorkingDir string // in the container
	// StopGrace overrides the agent's grace_period for this container.
	Pos Pos
}

// Mount is a bind mount into a container. Source is "data" (the
// component's data directory) or "data/<sub>", "artifacts" or
// "artifacts/<sub>" (always read-only), or an absolute host path, which
// the agent config must allow (supervisor.containers.host_paths).
type Mount struct {
	Source   string
	Target   string
	ReadOnly bool
	Pos      Pos
}

// HostPath reports whether the mount's source is an absolute host path.
func (m Mount) HostPath() bool { return strings.HasPrefix(m.Source, "/") }

// Reference returns what the runtime is asked for: the digest when the
// reference was pinned, else the tag.
func (c *Container) Reference() string {
	if c.Digest != "" {
		return c.Image + "@" + c.Digest
	}
	return c.Image
}

var imageRefRE = sync.OnceValue(func() *regexp.Regexp {
	// [registry[:port]/]path[:tag]; lower-case path components.
	return regexp.MustCompile(`^([a-zA-Z0-9.-]+(:[0-9]+)?/)?[a-z0-9]+([._-]+[a-z0-9]+)*(/[a-z0-9]+([._-]+[a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$`)
})

// ParseImageRef splits "name[:tag][@sha256:hex]" into the name with tag
// and the digest.
func ParseImageRef(s string) (ref, digest string, err error) {
	ref, digest, _ = strings.Cut(s, "@")
	if ref == "" || !imageRefRE().MatchString(ref) {
		return "", "", fmt.Errorf("%q is not an image reference (name[:tag][@sha256:<64 hex>])", s)
	}
	if strings.Contains(s, "@") {
		if err := checkDigest(digest); err != nil {
			return "", "", err
		}
	}
	return ref, digest, nil
}

func checkDigest(d string) error {
	h, ok := strings.CutPrefix(d, "sha256:")
	if b, err := hex.DecodeString(h); !ok || err != nil || len(b) != 32 || strings.ToLower(h) != h {
		return fmt.Errorf("digest %q must be sha256:<64 lower-case hex digits>", d)
	}
	return nil
}

func (d *decoder) container(n *yaml.Node, p string) {
	c := &Container{Pos: Pos{n.Line, n.Column}, Network: "host"}
	var imageNode, digestNode *yaml.Node
	d.fields(n, p, map[string]func(*yaml.Node, string){
		"image":      func(v *yaml.Node, p string) { imageNode = v; c.Image = d.str(v, p) },
		"digest":     func(v *yaml.Node, p string) { digestNode = v; c.Digest = d.str(v, p) },
		"allow_tag":  func(v *yaml.Node, p string) { c.AllowTag = d.boolean(v, p) },
		"entrypoint": func(v *yaml.Node, p string) { c.Entrypoint = d.strList(v, p) },
		"args":       func(v *yaml.Node, p string) { c.Args = d.strList(v, p) },
		"secret_env": func(v *yaml.Node, p string) { c.SecretEnv = d.strMap(v, p) },
		"mounts":     func(v *yaml.Node, p string) { c.Mounts = d.mounts(v, p) },
		"network": func(v *yaml.Node, p string) {
			switch s := d.str(v, p); s {
			case "host", "none":
				c.Network = s
			default:
				d.errAt(v, p, ErrInvalid, "network must be host or none, got %q", v.Value)
			}
		},
		"privileged":  func(v *yaml.Node, p string) { c.Privileged = d.boolean(v, p) },
		"user":        func(v *yaml.Node, p string) { c.User = d.str(v, p) },
		"working_dir": func(v *yaml.Node, p string) { c.WorkingDir = d.str(v, p) },
	})
	if n.Kind != yaml.MappingNode {
		return
	}
	switch {
	case imageNode == nil:
		d.errAt(n, p+".image", ErrInvalid, "image is required")
	case c.Image != "":
		ref, dig, err := ParseImageRef(c.Image)
		if err != nil {
			d.errAt(imageNode, p+".image", ErrInvalid, "%v", err)
			break
		}
		if dig != "" && digestNode != nil && c.Digest != dig {
			d.errAt(digestNode, p+".digest", ErrInvalid, "digest %s differs from the one in image (%s)", c.Digest, dig)
			break
		}
		c.Image = ref
		if dig != "" {
			c.Digest = dig
		}
	}
	if digestNode != nil && c.Digest != "" {
		if err := checkDigest(c.Digest); err != nil {
			d.errAt(digestNode, p+".digest", ErrInvalid, "%v", err)
		}
	}
	if imageNode != nil && c.Image != "" && c.Digest == "" && !c.AllowTag {
		d.errAt(imageNode, p+".image", ErrInvalid, "image %q is not pinned: add @sha256:<digest> (or digest:), or set allow_tag: true to run whatever the tag points to", c.Image)
	}
	if c.WorkingDir != "" && !path.IsAbs(c.WorkingDir) {
		d.errAt(nodeAt(n, "working_dir"), p+".working_dir", ErrInvalid, "working_dir must be an absolute path in the container")
	}
	for k, v := range c.SecretEnv {
		kp := p + ".secret_env." + k
		switch {
		case k == "" || strings.ContainsAny(k, "=\x00"):
			d.errs = append(d.errs, d.r.ErrorAt(kp, fmt.Errorf("%w: invalid environment variable name %q", ErrInvalid, k)))
		case strings.HasPrefix(k, "OUTPOST_"):
			d.errs = append(d.errs, d.r.ErrorAt(kp, fmt.Errorf("%w: names starting with OUTPOST_ are reserved for the supervisor", ErrInvalid)))
		case !ValidName(v):
			d.errs = append(d.errs, d.r.ErrorAt(kp, fmt.Errorf("%w: %q is not a valid secret name", ErrInvalid, v)))
		}
	}
	d.r.Container = c
}

// containerTargets are paths the supervisor mounts itself.
var reservedTargets = []string{"/run/outpost"}

func (d *decoder) mounts(n *yaml.Node, p string) []Mount {
	if !d.kind(n, p, yaml.SequenceNode, "a list of mounts") {
		return nil
	}
	var out []Mount
	targets := map[string]bool{}
	for i, e := range n.Content {
		ep := fmt.Sprintf("%s[%d]", p, i)
		d.mark(e, ep)
		m := Mount{Pos: Pos{e.Line, e.Column}}
		d.fields(e, ep, map[string]func(*yaml.Node, string){
			"source":    func(v *yaml.Node, p string) { m.Source = d.str(v, p) },
			"target":    func(v *yaml.Node, p string) { m.Target = d.str(v, p) },
			"read_only": func(v *yaml.Node, p string) { m.ReadOnly = d.boolean(v, p) },
		})
		if e.Kind != yaml.MappingNode {
			continue
		}
		src, tgt := nodeAt(e, "source"), nodeAt(e, "target")
		switch {
		case m.Source == "":
			d.errAt(e, ep+".source", ErrInvalid, "source is required")
		case strings.ContainsAny(m.Source, ":,\x00"):
			d.errAt(src, ep+".source", ErrInvalid, "source must not contain ':', ',' or NUL")
		case m.HostPath():
			if path.Clean(m.Source) != m.Source {
				d.errAt(src, ep+".source", ErrInvalid, "host path %q is not clean (no '..', '//' or trailing '/')", m.Source)
			}
		default:
			base, rest, _ := strings.Cut(m.Source, "/")
			if (base != "data" && base != "artifacts") || strings.Contains("/"+rest+"/", "/../") || path.Clean(m.Source) != m.Source {
				d.errAt(src, ep+".source", ErrInvalid, "source must be data[/sub], artifacts[/sub] or an absolute host path, got %q", m.Source)
			}
			if base == "artifacts" {
				m.ReadOnly = true
			}
		}
		switch {
		case m.Target == "":
			d.errAt(e, ep+".target", ErrInvalid, "target is required")
		case !path.IsAbs(m.Target) || path.Clean(m.Target) != m.Target || m.Target == "/" || strings.ContainsAny(m.Target, ":,\x00"):
			d.errAt(tgt, ep+".target", ErrInvalid, "target must be a clean absolute path other than / (no ':' or ',')")
		case targets[m.Target]:
			d.errAt(tgt, ep+".target", ErrInvalid, "target %s is mounted twice", m.Target)
		default:
			for _, r := range reservedTargets {
				if m.Target == r || strings.HasPrefix(m.Target, r+"/") || strings.HasPrefix(r, m.Target+"/") {
					d.errAt(tgt, ep+".target", ErrInvalid, "target %s overlaps %s, where the supervisor mounts the bus socket and credentials", m.Target, r)
				}
			}
		}
		targets[m.Target] = true
		out = append(out, m)
	}
	return out
}

// validateContainer checks what a container recipe must not have.
func (d *decoder) validateContainer(errAt func(path, format string, args ...any)) {
	r := d.r
	if r.Container == nil {
		errAt("container", "kind container needs a container section (image, ...)")
		return
	}
	l := r.Lifecycle
	for _, f := range []struct {
		name string
		set  bool
	}{{"lifecycle.install", l.Install != nil}, {"lifecycle.run", l.Run != nil}, {"lifecycle.startup", l.Startup != nil}, {"lifecycle.shutdown", l.Shutdown != nil}} {
		if f.set {
			errAt(f.name, "a container component has no lifecycle steps: use container.entrypoint and container.args")
		}
	}
	if r.User != "" || r.Group != "" {
		errAt("user", "use container.user for a container component")
	}
	if r.WorkingDir != "" {
		errAt("working_dir", "use container.working_dir for a container component")
	}
	for i, a := range r.Artifacts {
		if a.Image && a.SHA256 == "" {
			errAt(fmt.Sprintf("artifacts[%d].sha256", i), "an image archive needs its sha256")
		}
	}
	for k := range r.Container.SecretEnv {
		if _, dup := r.Env[k]; dup {
			errAt("container.secret_env."+k, "%s is also set in env", k)
		}
	}
}

// HostPaths returns the recipe's absolute host mount sources, sorted.
func (c *Container) HostPaths() []string {
	var out []string
	for _, m := range c.Mounts {
		if m.HostPath() {
			out = append(out, m.Source)
		}
	}
	sort.Strings(out)
	return out
}
