package supervisor

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/outpost-edge/outpost/internal/config"
	"github.com/outpost-edge/outpost/internal/supervisor/cgroup"
	"github.com/outpost-edge/outpost/internal/supervisor/container"
	"github.com/outpost-edge/outpost/internal/supervisor/recipe"
)

// ContainersConfig is the supervisor's containers section: how kind:
// container components reach the host's container runtime and what they
// may ask of the host.
type ContainersConfig struct {
	// Runtime is the API the agent speaks: "docker" (default; the Docker
	// Engine API of Docker, Moby, `podman system service`) or
	// "containerd" (containerd's gRPC API; only in binaries built with
	// -tags containerd).
	Runtime string `yaml:"runtime"`
	// Socket is the runtime's socket. Empty: for docker the first that
	// exists of DefaultSockets, looked up at every start; for containerd
	// /run/containerd/containerd.sock.
	Socket string `yaml:"socket"`
	// Namespace is the containerd namespace the agent's containers and
	// images live in (default "outpost"); containerd only.
	Namespace string `yaml:"namespace"`
	// HostPaths are the host paths (and everything below them) that
	// recipes may mount. A recipe mounting any other absolute host path is
	// refused.
	HostPaths []string `yaml:"host_paths"`
	// AllowPrivileged names the components that may run privileged.
	AllowPrivileged []string `yaml:"allow_privileged"`
	// SecretsDir holds the agent's secrets, one file per secret named by
	// the secret; container.secret_env refers to them.
	SecretsDir string `yaml:"secrets_dir"` // default /etc/outpost/secrets
	// RetryMax caps the backoff between attempts to reach a runtime that
	// is down (1s doubling).
	RetryMax config.Duration `yaml:"retry_max"` // default 30s
	// Pull is what happens to a pinned image that is neither in the
	// runtime nor in the recipe's image archives: "missing" (default)
	// has the runtime pull it from its registry (the digest is checked
	// after the pull as after a load); "never" refuses it (air-gapped
	// gateways: images come only as archives).
	Pull string `yaml:"pull"`
	// Registries are the credentials of private registries. Anonymous
	// pulls need no entry. The registry's TLS trust and mirrors are the
	// runtime's own configuration.
	Registries []RegistryCredential `yaml:"registries"`
}

// RegistryCredential is the login to one registry.
type RegistryCredential struct {
	// Host is the registry as image references name it:
	// "registry.example.com", "10.0.0.5:5000" ("docker.io" for Docker Hub).
	Host     string `yaml:"host"`
	Username string `yaml:"username"`
	// PasswordSecret names the secret (a file in secrets_dir) that holds
	// the password or token; it is never logged or shown.
	PasswordSecret string `yaml:"password_secret"`
}

// Pull policies (ContainersConfig.Pull).
const (
	PullMissing = "missing"
	PullNever   = "never"
)

// DefaultSockets are tried in order when containers.socket is empty.
var DefaultSockets = []string{"/run/podman/podman.sock", "/var/run/docker.sock"}

func (c *ContainersConfig) setDefaults() {
	if c.SecretsDir == "" {
		c.SecretsDir = "/etc/outpost/secrets"
	}
	if c.RetryMax == 0 {
		c.RetryMax = config.Duration(30 * time.Second)
	}
	if c.Pull == "" {
		c.Pull = PullMissing
	}
	if c.Runtime == "" {
		c.Runtime = RuntimeDocker
	}
	if c.Runtime == RuntimeContainerd && c.Namespace == "" {
		c.Namespace = "outpost"
	}
}

// Container runtimes (ContainersConfig.Runtime).
const (
	RuntimeDocker     = "docker"
	RuntimeContainerd = "containerd"
)

func (c ContainersConfig) validate() []error {
	var errs []error
	switch c.Runtime {
	case "", RuntimeDocker:
		if c.Namespace != "" {
			errs = append(errs, fmt.Errorf("containers.namespace: only for runtime containerd"))
		}
	case RuntimeContainerd:
		if !containerdBuilt {
			errs = append(errs, fmt.Errorf("containers.runtime: containerd: this outpost binary was built without containerd support (build with -tags containerd)"))
		}
		if c.Namespace != "" && !validNamespace(c.Namespace) {
			errs = append(errs, fmt.Errorf("containers.namespace: %q: want 1-76 of a-z A-Z 0-9 . _ -, starting with a letter or digit", c.Namespace))
		}
	default:
		errs = append(errs, fmt.Errorf("containers.runtime: %q: want %s or %s", c.Runtime, RuntimeDocker, RuntimeContainerd))
	}
	if c.Socket != "" && !filepath.IsAbs(c.Socket) {
		errs = append(errs, fmt.Errorf("containers.socket: must be an absolute path"))
	}
	for i, p := range c.HostPaths {
		if !filepath.IsAbs(p) || filepath.Clean(p) != p {
			errs = append(errs, fmt.Errorf("containers.host_paths[%d]: %q must be a clean absolute path", i, p))
		}
	}
	if c.Pull != "" && c.Pull != PullMissing && c.Pull != PullNever {
		errs = append(errs, fmt.Errorf("containers.pull: %q: want %s or %s", c.Pull, PullMissing, PullNever))
	}
	hosts := map[string]int{}
	for i, r := range c.Registries {
		p := fmt.Sprintf("containers.registries[%d]", i)
		switch {
		case r.Host == "" || strings.ContainsAny(r.Host, "/@ ") || strings.Contains(r.Host, "://"):
			errs = append(errs, fmt.Errorf("%s.host: %q: want host[:port] as image references name it (no scheme, no path)", p, r.Host))
		case hosts[r.Host] > 0:
			errs = append(errs, fmt.Errorf("%s.host: %q is also registries[%d]", p, r.Host, hosts[r.Host]-1))
		}
		hosts[r.Host] = i + 1
		if r.Username == "" {
			errs = append(errs, fmt.Errorf("%s.username: required", p))
		}
		if r.PasswordSecret == "" || strings.ContainsAny(r.PasswordSecret, "/\\") || strings.HasPrefix(r.PasswordSecret, ".") {
			errs = append(errs, fmt.Errorf("%s.password_secret: %q: want the name of a file in secrets_dir", p, r.PasswordSecret))
		}
	}
	for i, n := range c.AllowPrivileged {
		if !validName(n) {
			errs = append(errs, fmt.Errorf("containers.allow_privileged[%d]: %q is not a component name", i, n))
		}
	}
	return errs
}

// validNamespace reports whether n is a valid containerd namespace
// (containerd's own rule: a label-like identifier).
func validNamespace(n string) bool {
	if len(n) == 0 || len(n) > 76 {
		return false
	}
	for i, r := range n {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || i > 0 && (r == '.' || r == '_' || r == '-')
		if !ok {
			return false
		}
	}
	return true
}

// ContainerStatus describes a container component's current container.
type ContainerStatus struct {
	ID         string  `json:"id,omitempty"`
	Image      string  `json:"image"`   // the image ID it runs
	Runtime    string  `json:"runtime"` // e.g. "docker-api unix:///run/podman/podman.sock"
	Adopted    bool    `json:"adopted"` // found running at agent start and kept
	CPUSeconds float64 `json:"cpu_seconds,omitempty"`
}

// Paths inside the container.
const (
	ctrRunDir       = "/run/outpost/component" // credentials and configuration (read-only)
	ctrBusDir       = "/run/outpost/bus"       // the broker's unix socket directory (read-only)
	ctrDataDir      = "/var/lib/outpost/data"
	ctrArtifactsDir = "/var/lib/outpost/artifacts"
	// EnvMQTTCredentialsFile names the credentials file in a container:
	// JSON {"url", "username", "password"}. It is rewritten with fresh
	// credentials when the agent restarts and re-adopts the container, so
	// a client reads it again before every (re)connect.
	EnvMQTTCredentialsFile = "OUTPOST_MQTT_CREDENTIALS_FILE"
)

// runtime returns the container runtime to use, or an error saying why
// there is none.
func (s *Supervisor) runtime() (container.Runtime, error) {
	if s.opts.Runtime != nil {
		return s.opts.Runtime, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sock := s.cfg.Containers.Socket
	if s.cfg.Containers.Runtime == RuntimeContainerd {
		ns := s.cfg.Containers.Namespace
		key := "containerd " + sock + " " + ns
		if s.rt == nil || s.rtSocket != key {
			rt, err := newContainerd(sock, ns, filepath.Join(s.cfg.StateDir, ".containerd"))
			if err != nil {
				return nil, err
			}
			s.rt, s.rtSocket = rt, key
		}
		return s.rt, nil
	}
	if sock == "" {
		for _, p := range DefaultSockets {
			if _, err := os.Stat(p); err == nil {
				sock = p
				break
			}
		}
		if sock == "" {
			return nil, fmt.Errorf("%w: no runtime socket (set supervisor.containers.socket; tried %s)", container.ErrUnavailable, strings.Join(DefaultSockets, ", "))
		}
	}
	if s.rt == nil || s.rtSocket != sock {
		s.rt, s.rtSocket = container.NewDocker(sock), sock
	}
	return s.rt, nil
}

// agentID distinguishes this agent's containers from another agent's on
// the same runtime (a hash of its state directory).
func (s *Supervisor) agentID() string {
	sum := sha256.Sum256([]byte(s.cfg.StateDir))
	return hex.EncodeToString(sum[:6])
}

func (s *Supervisor) containerName(component string) string {
	return "outpost-" + s.agentID() + "-" + component
}

func (s *Supervisor) ownLabels() map[string]string {
	return map[string]string{container.LabelOwner: container.OwnerValue, container.LabelAgent: s.agentID()}
}

// checkContainerPolicy refuses what the agent config does not allow:
// host paths outside containers.host_paths, privileged mode.
func (s *Supervisor) checkContainerPolicy(r *recipe.Recipe, cc ContainersConfig) error {
	return CheckContainerPolicy(r, cc)
}

// ExecCheckMinInterval is the shortest interval ContainerWarnings accepts
// for an exec health check of a container: podman keeps every exec
// session's conmon (2-3 MB) for 5 minutes after the command ends, so a
// check every 10 s holds about 30 of them per container.
const ExecCheckMinInterval = time.Minute

// ContainerWarnings returns advice about a recipe that is valid but
// costly: an exec health check on a container more often than
// ExecCheckMinInterval. Each is located like a recipe error.
func ContainerWarnings(r *recipe.Recipe) []error {
	if r.Kind != recipe.KindContainer || r.Health == nil || r.Health.Kind != recipe.HealthExec {
		return nil
	}
	if r.Health.Interval >= ExecCheckMinInterval {
		return nil
	}
	return []error{r.ErrorAt("health.interval", fmt.Errorf("an exec check on a container every %s: through podman each exec keeps a conmon process (2-3 MB) for 5 minutes, about %d per container; prefer an http or mqtt check, or an interval of at least %s",
		r.Health.Interval, int((5*time.Minute)/max(r.Health.Interval, time.Second)), ExecCheckMinInterval))}
}

// CheckContainerPolicy refuses what an agent's containers section does
// not allow: host paths outside host_paths, privileged mode for a
// component not in allow_privileged. The errors are located in the
// recipe (file:line:column).
func CheckContainerPolicy(r *recipe.Recipe, cc ContainersConfig) error {
	if r.Container == nil {
		return nil
	}
	var errs []error
	for i, m := range r.Container.Mounts {
		if !m.HostPath() {
			continue
		}
		ok := false
		for _, p := range cc.HostPaths {
			if m.Source == p || strings.HasPrefix(m.Source, strings.TrimSuffix(p, "/")+"/") {
				ok = true
			}
		}
		if !ok {
			errs = append(errs, r.ErrorAt(fmt.Sprintf("container.mounts[%d].source", i),
				fmt.Errorf("%w: host path %s is not under the agent's supervisor.containers.host_paths", recipe.ErrInvalid, m.Source)))
		}
	}
	if r.Container.Privileged {
		ok := false
		for _, n := range cc.AllowPrivileged {
			ok = ok || n == r.Name
		}
		if !ok {
			errs = append(errs, r.ErrorAt("container.privileged",
				fmt.Errorf("%w: privileged mode needs the component in the agent's supervisor.containers.allow_privileged", recipe.ErrInvalid)))
		}
	}
	return errors.Join(errs...)
}

// runContainer is runOnce for kind: container.
func (c *component) runContainer(ctx context.Context, r *recipe.Recipe, ov Override, gen uint64) (outcome, *exitInfo, string) {
	rt, ok := c.awaitRuntime(ctx, gen)
	if !ok {
		return outInterrupted, nil, ""
	}
	image, err := c.ensureImage(ctx, rt, r)
	if err != nil {
		if container.IsUnavailable(err) {
			return outInterrupted, nil, "" // the next round waits for the runtime
		}
		c.setState(StateInstallFailed, err.Error())
		if errors.Is(err, errPull) {
			// The registry or the network may come back: try again
			// after a backoff (or at once on a new recipe or kick).
			c.sleep(ctx, gen, c.pullBackoff())
			return outInterrupted, nil, ""
		}
		c.waitKick(ctx, gen)
		return outInterrupted, nil, ""
	}
	c.mu.Lock()
	c.pullFails = 0
	c.mu.Unlock()
	home, art, data := c.dirs(r)
	runDir := filepath.Join(home, "run")
	for _, d := range []string{runDir, data, art} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return c.startFailed(err)
		}
	}
	var creds *Credentials
	if id := c.s.opts.Identity; id != nil {
		cr, err := id.Issue(ctx, c.name, Access{Publish: r.Access.Publish, Subscribe: r.Access.Subscribe})
		if err != nil {
			return c.startFailed(fmt.Errorf("issue bus credentials: %w", err))
		}
		creds = &cr
		defer id.Revoke(c.name)
	}
	spec, err := c.containerSpec(r, ov, image, creds, runDir, art, data)
	if err != nil {
		return c.startFailed(err)
	}
	c.mu.Lock()
	c.health = ""
	if r.Health != nil {
		c.health = "starting"
	}
	c.output = ""
	c.limits = &LimitsStatus{Memory: r.Resources.Memory, CPU: r.Resources.CPU, Pids: r.Resources.Pids, Enforced: true, Note: "enforced by the container runtime"}
	c.mu.Unlock()
	c.out.resetTail()
	c.setState(StateStarting, "")

	id, adopted, err := c.createOrAdopt(ctx, rt, spec)
	if err != nil {
		if container.IsUnavailable(err) {
			return outInterrupted, nil, ""
		}
		return c.startFailed(err)
	}
	started := time.Now()
	info, _ := rt.Inspect(ctx, id)
	if !info.StartedAt.IsZero() && adopted {
		started = info.StartedAt
	}
	c.mu.Lock()
	c.pid = info.Pid
	c.ctr = &ContainerStatus{ID: id, Image: image, Runtime: rt.Name(), Adopted: adopted}
	c.gen++
	c.mu.Unlock()
	c.s.metrics.GetOrCreateCounter(fmt.Sprintf(`outpost_supervisor_starts_total{component=%q}`, c.name)).Inc()

	oom, oerr := cgroup.WatchProcessOOM(info.Pid)
	if oerr != nil {
		c.log.Debug("no OOM watch; relying on the runtime's report", "err", oerr)
	}
	defer oom.Close()

	// Output: followed from the runtime into the component's log.
	lctx, lcancel := context.WithCancel(context.Background())
	defer lcancel()
	var pipes []<-chan struct{}
	if stdout, doneOut, err := c.out.capture("stdout"); err == nil {
		if stderr, doneErr, err := c.out.capture("stderr"); err == nil {
			since := time.Time{}
			if adopted {
				// What it printed up to the last line in the log is there
				// already; what it printed while no agent followed it is
				// fetched from the runtime.
				since = c.resumeLogsAt()
			}
			pipes = []<-chan struct{}{doneOut, doneErr}
			go func() {
				defer stdout.Close()
				defer stderr.Close()
				_ = rt.Logs(lctx, id, since, stdout, stderr)
			}()
		} else {
			stdout.Close()
		}
	}

	waitCtx, waitCancel := context.WithCancel(context.Background())
	defer waitCancel()
	exited := make(chan container.Info, 1)
	go func() {
		info, err := rt.Wait(waitCtx, id)
		if err == nil || errors.Is(err, container.ErrNotFound) {
			exited <- info
		}
	}()

	depGens := c.s.depGens(r)
	var hc <-chan healthEvent
	hctx, hcancel := context.WithCancel(ctx)
	defer hcancel()
	if r.Health != nil {
		ch := make(chan healthEvent)
		hc = ch
		check := c.checker(hctx, r, nil, nil)
		if r.Health.Kind == recipe.HealthExec {
			argv := r.Health.Exec.Argv()
			check = func(timeout time.Duration) error {
				// Not cut short by a stop: an exec aborted mid-flight left
				// podman's exec conmon behind, sleeping, after the
				// container was gone. Bounded by the check's timeout.
				cctx, cancel := context.WithTimeout(context.WithoutCancel(hctx), timeout)
				defer cancel()
				code, out, err := rt.Exec(cctx, id, argv)
				if err != nil {
					return fmt.Errorf("exec in container: %w", err)
				}
				if code != 0 {
					if msg := strings.TrimSpace(out); msg != "" {
						return fmt.Errorf("check exited with code %d: %s", code, lastLine(msg))
					}
					return fmt.Errorf("check exited with code %d", code)
				}
				return nil
			}
		}
		go c.runHealth(hctx, r.Health, check, ch)
	} else {
		c.setState(StateRunning, "")
	}

	exitOf := func(i container.Info) *exitInfo {
		e := exitInfo{Code: i.ExitCode, Runtime: time.Since(started), OOMKilled: i.OOMKilled || oom.Count() > 0}
		if i.ExitCode > 128 && i.ExitCode < 160 {
			e.Signal = signalName(syscall.Signal(i.ExitCode - 128))
		}
		return &e
	}
	stop := func(why string) {
		c.setState(StateStopping, why)
		hcancel()
		c.stopContainer(rt, id)
	}
	var (
		res    outcome
		ex     *exitInfo
		reason string
	)
loop:
	for {
		changes := c.s.changes()
		select {
		case i := <-exited:
			hcancel()
			if i.ExitCode == 137 && !i.OOMKilled {
				// The kernel's OOM event can trail the runtime's report.
				deadline := time.Now().Add(300 * time.Millisecond)
				for oom.Count() == 0 && time.Now().Before(deadline) {
					time.Sleep(10 * time.Millisecond)
				}
			}
			ex, res = exitOf(i), outExited
			reason = ex.String()
			c.removeContainer(rt, id)
			break loop
		case ev := <-hc:
			switch {
			case ev.ok:
				c.mu.Lock()
				c.health = "passing"
				c.mu.Unlock()
				c.setState(StateHealthy, "")
			case ev.unhealthy:
				reason = "health check failed: " + ev.detail
				c.mu.Lock()
				c.health = "failing"
				c.mu.Unlock()
				c.setState(StateUnhealthy, reason)
				if !shouldRestart(r.Restart.Policy, false) {
					continue
				}
				stop(reason)
				res = outUnhealthy
				ex = &exitInfo{Code: -1, Runtime: time.Since(started)}
				break loop
			default:
				c.mu.Lock()
				c.health = "failing"
				c.mu.Unlock()
			}
		case <-c.wake:
			if c.interrupted(gen) {
				stop("stop requested")
				res = outInterrupted
				break loop
			}
		case <-changes:
			if dep := c.s.depLost(r, depGens); dep != "" {
				reason = "hard dependency " + dep + " stopped or restarted"
				stop(reason)
				res = outDepLost
				break loop
			}
		case <-ctx.Done():
			stop("agent stopping")
			res = outInterrupted
			break loop
		}
	}
	hcancel()
	waitCancel()
	lcancel()
	waitPipes(pipes...)
	c.mu.Lock()
	c.pid = 0
	if c.ctr != nil {
		c.ctr.ID = ""
	}
	c.mu.Unlock()
	if ex != nil && res != outInterrupted {
		c.recordExit(*ex)
		if ex.OOMKilled {
			c.log.Warn("component OOM-killed", "limit", r.Resources.Memory)
			c.s.metrics.GetOrCreateCounter(fmt.Sprintf(`outpost_supervisor_oom_kills_total{component=%q}`, c.name)).Inc()
		}
	}
	if res == outInterrupted || res == outDepLost {
		c.setState(StateStopped, reason)
	}
	return res, ex, reason
}

// waitingForRuntime starts the reason of a container component waiting
// for its runtime (Health reports them).
const waitingForRuntime = "waiting for runtime: "

// awaitRuntime waits until the runtime answers, retrying with backoff
// (1s doubling to containers.retry_max) in state waiting with the reason. It returns false
// when interrupted.
func (c *component) awaitRuntime(ctx context.Context, gen uint64) (container.Runtime, bool) {
	c.s.mu.Lock()
	retryMax := c.s.cfg.Containers.RetryMax.D()
	c.s.mu.Unlock()
	delay := min(time.Second, retryMax)
	for {
		rt, err := c.s.runtime()
		if err == nil {
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err = rt.Ping(pctx)
			cancel()
			if err == nil {
				return rt, true
			}
		}
		if ctx.Err() != nil || c.interrupted(gen) {
			return nil, false
		}
		c.setState(StateWaiting, waitingForRuntime+err.Error()+fmt.Sprintf("; retrying in %s", delay))
		c.sleep(ctx, gen, delay)
		if ctx.Err() != nil || c.interrupted(gen) {
			return nil, false
		}
		delay = min(delay*2, retryMax)
	}
}

// ensureImage makes sure the pinned image is in the runtime, loading the
// recipe's image archives (verified by sha256 at install) when it is not,
// and returns the image ID. A digest that matches neither the image ID nor
// one of its repository digests is refused.
func (c *component) ensureImage(ctx context.Context, rt container.Runtime, r *recipe.Recipe) (string, error) {
	ct := r.Container
	ref := ct.Image
	if ct.Digest != "" && strings.HasPrefix(ct.Digest, "sha256:") {
		ref = ct.Digest // an image ID resolves directly; a repo digest through the name below
	}
	img, err := rt.Image(ctx, ref)
	if errors.Is(err, container.ErrNotFound) && ref != ct.Image {
		img, err = rt.Image(ctx, ct.Image+"@"+ct.Digest)
	}
	if errors.Is(err, container.ErrNotFound) {
		// One load at a time: components sharing an image wait for the
		// first load instead of each loading the same archive.
		c.s.imageMu.Lock()
		defer c.s.imageMu.Unlock()
		img, err = rt.Image(ctx, ref)
		if errors.Is(err, container.ErrNotFound) && ref != ct.Image {
			img, err = rt.Image(ctx, ct.Image+"@"+ct.Digest)
		}
	}
	if errors.Is(err, container.ErrNotFound) {
		_, art, _ := c.dirs(r)
		loaded := false
		for i, a := range r.Artifacts {
			if !a.Image {
				continue
			}
			p := filepath.Join(art, artifactName(a))
			if err := c.loadArchive(ctx, rt, p, a.SHA256); err != nil {
				return "", r.ErrorAt(fmt.Sprintf("artifacts[%d]", i), err)
			}
			loaded = true
		}
		if !loaded {
			if err := c.pull(ctx, rt, r); err != nil {
				return "", err
			}
		}
		img, err = rt.Image(ctx, ref)
		if errors.Is(err, container.ErrNotFound) && ct.Digest != "" {
			// A pull by digest leaves the image named repo@digest (no tag).
			img, err = rt.Image(ctx, container.Repository(ct.Image)+"@"+ct.Digest)
		}
		if errors.Is(err, container.ErrNotFound) {
			img, err = rt.Image(ctx, ct.Image)
		}
		if errors.Is(err, container.ErrNotFound) {
			where := "the loaded archive(s)"
			if !loaded {
				where = "the runtime after the pull"
			}
			return "", r.ErrorAt("container.image", fmt.Errorf("image %s is not in %s", ct.Reference(), where))
		}
	}
	if err != nil {
		return "", fmt.Errorf("image %s: %w", ct.Reference(), err)
	}
	if ct.Digest != "" && img.ID != ct.Digest && !hasDigest(img.RepoDigests, ct.Digest) {
		return "", r.ErrorAt("container.image", fmt.Errorf("image %s has ID %s, not the pinned digest %s", ct.Image, img.ID, ct.Digest))
	}
	home, _, _ := c.dirs(r)
	prev, _ := os.ReadFile(filepath.Join(home, "image"))
	if old := strings.TrimSpace(string(prev)); old != "" && old != img.ID && !c.s.imageInUse(old, c.name) {
		if err := rt.RemoveImage(ctx, old); err == nil {
			c.log.Info("removed the previous version's image", "image", old)
		}
	}
	if err := writeFileAtomic(filepath.Join(home, "image"), []byte(img.ID+"\n"), 0o644, false); err != nil {
		return "", err
	}
	return img.ID, nil
}

// pullBackoff returns the wait before the next pull attempt: 2 s
// doubling per failure in a row, up to 5 minutes.
func (c *component) pullBackoff() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := 2 * time.Second << min(c.pullFails, 8)
	c.pullFails++
	return min(d, 5*time.Minute)
}

// logOverlap is how far before the last logged line an adopted
// container's output is fetched again: a line printed just before the
// agent died may not have reached the log yet (it may then appear twice;
// losing it is worse).
const logOverlap = 50 * time.Millisecond

// resumeLogsAt returns when the component's last logged line was written
// (less logOverlap), or now when the log has no line to go by.
func (c *component) resumeLogsAt() time.Time {
	c.s.mu.Lock()
	path, files := c.s.logPath(c.name), c.s.cfg.Log.MaxFiles
	c.s.mu.Unlock()
	lines, err := tailFile(path, 1, files)
	if err != nil || len(lines) == 0 {
		return time.Now()
	}
	ts, _, _ := strings.Cut(lines[0], " ")
	t, err := time.Parse("2006-01-02T15:04:05.000Z", ts)
	if err != nil || time.Since(t) < 0 {
		return time.Now()
	}
	return t.Add(-logOverlap)
}

// errPull marks a failed registry pull: retried with backoff (the
// registry or the network may come back), unlike a wrong recipe.
var errPull = container.ErrPull

// pull has the runtime pull the recipe's image from its registry, with the
// agent's credentials for that registry (containers.registries), unless
// containers.pull is never.
func (c *component) pull(ctx context.Context, rt container.Runtime, r *recipe.Recipe) error {
	ct := r.Container
	c.s.mu.Lock()
	cc := c.s.cfg.Containers
	c.s.mu.Unlock()
	p, ok := rt.(container.Puller)
	switch {
	case cc.Pull == PullNever:
		return r.ErrorAt("container.image", fmt.Errorf("image %s is not in the runtime and the recipe has no image archive (artifacts with image: true); the agent's supervisor.containers.pull is never", ct.Reference()))
	case !ok:
		return r.ErrorAt("container.image", fmt.Errorf("image %s is not in the runtime and the recipe has no image archive (artifacts with image: true); %s cannot pull from registries", ct.Reference(), rt.Name()))
	}
	host := container.RegistryHost(ct.Image)
	var auth *container.RegistryAuth
	for _, rc := range cc.Registries {
		if rc.Host != host {
			continue
		}
		b, err := os.ReadFile(filepath.Join(cc.SecretsDir, rc.PasswordSecret))
		if err != nil {
			return r.ErrorAt("container.image", fmt.Errorf("%w: credentials for %s: secret %q: %w", errPull, host, rc.PasswordSecret, errors.Unwrap(err)))
		}
		auth = &container.RegistryAuth{Username: rc.Username, Password: strings.TrimRight(string(b), "\r\n"), ServerAddress: host}
	}
	t0 := time.Now()
	c.log.Info("pulling image", "image", ct.Reference(), "registry", host, "authenticated", auth != nil)
	if err := p.Pull(ctx, ct.Reference(), auth); err != nil {
		if container.IsUnavailable(err) {
			return err
		}
		return r.ErrorAt("container.image", err)
	}
	c.log.Info("pulled image", "image", ct.Reference(), "took", time.Since(t0).Round(time.Millisecond))
	return nil
}

func hasDigest(repoDigests []string, d string) bool {
	for _, rd := range repoDigests {
		if strings.HasSuffix(rd, "@"+d) {
			return true
		}
	}
	return false
}

// loadArchive verifies an image archive's sha256 again (it may have
// changed on disk since install) and loads it.
func (c *component) loadArchive(ctx context.Context, rt container.Runtime, path, sum string) error {
	got, err := recipe.FileSHA256(path)
	if err != nil {
		return fmt.Errorf("%w: image archive: %v", recipe.ErrArtifact, err)
	}
	if got != sum {
		return fmt.Errorf("%w: image archive %s has sha256 %s, recipe says %s", recipe.ErrHashMismatch, filepath.Base(path), got, sum)
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	t0 := time.Now()
	if err := rt.LoadImage(ctx, f); err != nil {
		return fmt.Errorf("load image archive %s: %w", filepath.Base(path), err)
	}
	c.log.Info("loaded image archive", "file", filepath.Base(path), "took", time.Since(t0).Round(time.Millisecond))
	return nil
}

// artifactName is the file name an artifact gets in the artifacts
// directory (see fetchArtifact).
func artifactName(a recipe.Artifact) string {
	if a.Path != "" {
		return filepath.Base(a.Path)
	}
	u := a.URL
	if i := strings.IndexAny(u, "?#"); i >= 0 {
		u = u[:i]
	}
	return filepath.Base(u)
}

// imageInUse reports whether another component's current image is id.
func (s *Supervisor) imageInUse(id, except string) bool {
	s.mu.Lock()
	names := make([]string, 0, len(s.comps))
	for n := range s.comps {
		if n != except {
			names = append(names, n)
		}
	}
	dir := s.cfg.StateDir
	s.mu.Unlock()
	for _, n := range names {
		b, _ := os.ReadFile(filepath.Join(dir, n, "image"))
		if strings.TrimSpace(string(b)) == id {
			return true
		}
	}
	return false
}

// containerSpec builds what the container is created from. Credentials
// and configuration go in files under runDir (mounted read-only): they are
// not part of the spec, so a restarted agent can re-adopt the container
// and hand it fresh credentials.
func (c *component) containerSpec(r *recipe.Recipe, ov Override, image string, creds *Credentials, runDir, art, data string) (container.Spec, error) {
	ct := r.Container
	env := map[string]string{
		EnvName:         c.name,
		EnvVersion:      r.Version.String(),
		EnvArtifactsDir: ctrArtifactsDir,
		EnvDataDir:      ctrDataDir,
		EnvTopicPrefix:  "components/" + c.name + "/",
	}
	mounts := []container.Mount{
		{Source: runDir, Target: ctrRunDir, ReadOnly: true},
		{Source: data, Target: ctrDataDir},
		{Source: art, Target: ctrArtifactsDir, ReadOnly: true},
	}
	if cfg := effectiveConfig(r, ov); cfg != nil {
		b, err := json.Marshal(cfg)
		if err != nil {
			return container.Spec{}, fmt.Errorf("configuration: %w", err)
		}
		if err := writeFileAtomic(filepath.Join(runDir, "config.json"), b, 0o644, false); err != nil {
			return container.Spec{}, err
		}
		env[EnvConfigFile] = ctrRunDir + "/config.json"
		if len(b) <= maxEnvConfig {
			env[EnvConfig] = string(b)
		}
	}
	if creds != nil {
		url := creds.URL
		if p, ok := strings.CutPrefix(url, "unix://"); ok {
			mounts = append(mounts, container.Mount{Source: filepath.Dir(p), Target: ctrBusDir, ReadOnly: true})
			url = "unix://" + ctrBusDir + "/" + filepath.Base(p)
		}
		if err := c.writeCredentials(runDir, url, creds, ct.User); err != nil {
			return container.Spec{}, err
		}
		env[EnvMQTTURL] = url
		env[EnvMQTTCredentialsFile] = ctrRunDir + "/mqtt.json"
	}
	for k, v := range r.Env {
		env[k] = v
	}
	for k, v := range ov.Env {
		if !strings.HasPrefix(k, "OUTPOST_") {
			env[k] = v
		}
	}
	c.s.mu.Lock()
	secretsDir := c.s.cfg.Containers.SecretsDir
	c.s.mu.Unlock()
	for k, name := range ct.SecretEnv {
		b, err := os.ReadFile(filepath.Join(secretsDir, name))
		if err != nil {
			return container.Spec{}, r.ErrorAt("container.secret_env."+k, fmt.Errorf("secret %q: %w", name, errors.Unwrap(err)))
		}
		env[k] = strings.TrimRight(string(b), "\r\n")
	}
	for _, m := range ct.Mounts {
		src := m.Source
		switch {
		case m.HostPath():
		case strings.HasPrefix(src, "artifacts"):
			src = filepath.Join(art, strings.TrimPrefix(src, "artifacts"))
		default:
			src = filepath.Join(data, strings.TrimPrefix(src, "data"))
			if err := os.MkdirAll(src, 0o755); err != nil {
				return container.Spec{}, err
			}
		}
		mounts = append(mounts, container.Mount{Source: src, Target: m.Target, ReadOnly: m.ReadOnly})
	}
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	envList := make([]string, 0, len(keys))
	for _, k := range keys {
		envList = append(envList, k+"="+env[k])
	}
	spec := container.Spec{
		Name: c.s.containerName(c.name), Image: image, Entrypoint: ct.Entrypoint, Cmd: ct.Args, Env: envList,
		Mounts: mounts, Network: ct.Network, Memory: r.Resources.Memory, CPU: r.Resources.CPU, Pids: r.Resources.Pids,
		Privileged: ct.Privileged, User: ct.User, WorkingDir: ct.WorkingDir,
	}
	spec.Labels = c.s.ownLabels()
	spec.Labels[container.LabelComponent] = c.name
	spec.Labels[container.LabelImage] = ct.Reference()
	spec.Labels[container.LabelSpec] = specHash(spec)
	return spec, nil
}

// specHash identifies a spec: a container created from another spec is
// replaced, not adopted. It covers secrets' values only through the hash.
func specHash(s container.Spec) string {
	b, _ := json.Marshal(s)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:12])
}

// writeCredentials writes the credentials file (mode 0600, owned by the
// container's numeric user if it has one).
func (c *component) writeCredentials(runDir, url string, creds *Credentials, user string) error {
	b, _ := json.Marshal(map[string]string{"url": url, "username": creds.Username, "password": creds.Password})
	p := filepath.Join(runDir, "mqtt.json")
	if err := writeFileAtomic(p, b, 0o600, false); err != nil {
		return fmt.Errorf("write credentials file: %w", err)
	}
	uid, gid, _ := strings.Cut(user, ":")
	if u, err := strconv.Atoi(uid); err == nil {
		g, err := strconv.Atoi(gid)
		if err != nil {
			g = u
		}
		_ = os.Chown(p, u, g)
	}
	return nil
}

// createOrAdopt returns the component's container: the one already
// running from the same spec (left by a previous agent run), or a new one.
// Any other container of this component is removed first.
func (c *component) createOrAdopt(ctx context.Context, rt container.Runtime, spec container.Spec) (string, bool, error) {
	labels := c.s.ownLabels()
	labels[container.LabelComponent] = c.name
	existing, err := rt.List(ctx, labels)
	if err != nil {
		return "", false, err
	}
	adopt := ""
	for _, e := range existing {
		if adopt == "" && e.Running && e.Labels[container.LabelSpec] == spec.Labels[container.LabelSpec] {
			adopt = e.ID
			continue
		}
		c.log.Info("removing a container of a previous run", "container", shortID(e.ID), "status", e.Status)
		c.removeContainer(rt, e.ID)
	}
	if adopt != "" {
		c.log.Info("re-adopted running container", "container", shortID(adopt))
		return adopt, true, nil
	}
	id, err := rt.Create(ctx, spec)
	if err != nil {
		return "", false, fmt.Errorf("create container: %w", err)
	}
	if err := rt.Start(ctx, id); err != nil {
		c.removeContainer(rt, id)
		return "", false, fmt.Errorf("start container: %w", err)
	}
	return id, false, nil
}

func shortID(id string) string { return id[:min(12, len(id))] }

// stopContainer stops (SIGTERM, grace, SIGKILL) and removes a container;
// bounded even when the runtime hangs.
func (c *component) stopContainer(rt container.Runtime, id string) {
	t0 := time.Now()
	grace := c.s.cfg.GracePeriod.D()
	ctx, cancel := context.WithTimeout(context.Background(), grace+20*time.Second)
	defer cancel()
	if err := rt.Stop(ctx, id, grace); err != nil && !errors.Is(err, container.ErrNotFound) {
		c.log.Warn("stop container", "container", shortID(id), "err", err)
	}
	c.removeContainer(rt, id)
	c.log.Info("component stopped", "took", time.Since(t0).Round(time.Microsecond))
}

func (c *component) removeContainer(rt container.Runtime, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := rt.Remove(ctx, id); err != nil && !errors.Is(err, container.ErrNotFound) {
		c.log.Warn("remove container", "container", shortID(id), "err", err)
	}
}

// collectContainers removes this agent's containers whose component is
// gone, and the images of removed components no other component uses.
// It runs after every reload; a runtime that cannot be reached is left
// alone (the next reload tries again).
func (s *Supervisor) collectContainers(ctx context.Context, removed []string) {
	rt, err := s.runtime()
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	list, err := rt.List(ctx, s.ownLabels())
	if err != nil {
		return
	}
	for _, e := range list {
		name := e.Labels[container.LabelComponent]
		s.mu.Lock()
		_, known := s.comps[name]
		s.mu.Unlock()
		if known {
			continue
		}
		s.log.Info("removing a container whose component is gone", "component", name, "container", shortID(e.ID))
		grace := s.cfg.GracePeriod.D()
		sctx, scancel := context.WithTimeout(ctx, grace+20*time.Second)
		_ = rt.Stop(sctx, e.ID, grace)
		_ = rt.Remove(sctx, e.ID)
		scancel()
	}
	for _, name := range removed {
		p := filepath.Join(s.cfg.StateDir, name, "image")
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		id := strings.TrimSpace(string(b))
		if id != "" && !s.imageInUse(id, name) {
			if err := rt.RemoveImage(ctx, id); err != nil && !errors.Is(err, container.ErrNotFound) {
				s.log.Warn("remove image of a removed component", "component", name, "image", id, "err", err)
				continue
			}
			s.log.Info("removed the image of a removed component", "component", name, "image", id)
		}
		_ = os.Remove(p)
	}
}

// containerStats fills container components' memory and CPU from the
// runtime's stats (for the API's listing): concurrently, each bounded.
func (s *Supervisor) containerStats(sts []Status) {
	var wg sync.WaitGroup
	for i := range sts {
		st := &sts[i]
		if st.Container == nil || st.Container.ID == "" || !st.State.up() {
			continue
		}
		rt, err := s.runtime()
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if cs, err := rt.Stats(ctx, st.Container.ID); err == nil {
				st.Memory = cs.MemoryBytes
				st.Container.CPUSeconds = float64(cs.CPUNanos) / 1e9
			}
		}()
	}
	wg.Wait()
}

// applyContainerPolicy moves container recipes the agent config does not
// allow from loaded to fileErrs.
func (s *Supervisor) applyContainerPolicy(loaded []*recipe.Recipe, fileErrs map[string]error, cc ContainersConfig) []*recipe.Recipe {
	out := loaded[:0]
	for _, r := range loaded {
		if err := s.checkContainerPolicy(r, cc); err != nil {
			fileErrs[r.File] = err
			continue
		}
		out = append(out, r)
	}
	return out
}

// afterReload garbage-collects containers and images of removed
// components (in the background: the runtime may be slow or down).
func (s *Supervisor) afterReload(stopped []*component) {
	var removed []string
	for _, c := range stopped {
		c.mu.Lock()
		r := c.recipe
		c.mu.Unlock()
		if r.Kind == recipe.KindContainer {
			removed = append(removed, c.name)
		}
	}
	s.mu.Lock()
	hasContainers := len(removed) > 0
	for _, c := range s.comps {
		c.mu.Lock()
		hasContainers = hasContainers || c.recipe.Kind == recipe.KindContainer
		c.mu.Unlock()
	}
	ctx := s.ctx
	s.mu.Unlock()
	if !hasContainers && s.opts.Runtime == nil {
		return // an agent without container components does not touch the runtime
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.collectContainers(ctx, removed)
	}()
}
