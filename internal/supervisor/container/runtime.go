// Package container is the supervisor's runtime-neutral interface to a
// container runtime that already exists on the host, and its backends.
//
// # Usage
//
//	rt := container.NewDocker("/run/podman/podman.sock") // Docker Engine API: Docker, Moby, podman
//	// or, with -tags containerd: container.NewContainerd(sock, "outpost", logDir)
//	if err := rt.Ping(ctx); err != nil { ... }          // errors.Is(err, container.ErrUnavailable)
//	_ = rt.LoadImage(ctx, archive)                       // docker-archive or oci-archive tar
//	id, _ := rt.Create(ctx, container.Spec{...})
//	_ = rt.Start(ctx, id)
//	info, _ := rt.Wait(ctx, id)                          // blocks until it is no longer running
//	_ = rt.Stop(ctx, id, 10*time.Second)                 // SIGTERM, grace, SIGKILL; never hangs
//	_ = rt.Remove(ctx, id)
//
// # Invariants
//
//   - Every call is bounded by its context; Stop additionally bounds itself
//     (grace plus a fixed margin) so a stuck runtime cannot hang a stop.
//   - Errors wrap ErrUnavailable when the runtime cannot be reached (socket
//     missing, daemon down), ErrNotFound for a missing container or image,
//     so callers can tell "wait for the runtime" from "this is wrong".
//   - Nothing here logs: request bodies carry secrets (environment).
//   - The Docker Engine API backend (Docker) uses only the standard
//     library (net/http over a unix socket). The containerd backend
//     (Containerd, containerd.go) uses containerd's Go client and exists
//     only in builds with -tags containerd: it adds about 9 MB.
package container

import (
	"context"
	"errors"
	"io"
	"time"
)

// Sentinel errors; check with errors.Is.
var (
	// ErrUnavailable is returned when the runtime's socket is missing or
	// the daemon does not answer.
	ErrUnavailable = errors.New("container runtime unavailable")
	// ErrNotFound is returned for a container or image the runtime does not
	// have.
	ErrNotFound = errors.New("not found in the container runtime")
	// ErrRuntime is returned when the runtime answered with an error.
	ErrRuntime = errors.New("container runtime error")
)

// Labels set on every container the supervisor creates.
const (
	LabelOwner     = "io.outpost.owner"     // always "outpost"
	LabelAgent     = "io.outpost.agent"     // the agent instance (hash of its state directory)
	LabelComponent = "io.outpost.component" // the component name
	LabelSpec      = "io.outpost.spec"      // hash of what the container was created from
	LabelImage     = "io.outpost.image"     // the pinned image reference
	OwnerValue     = "outpost"
)

// Mount is a bind mount of a host path into the container.
type Mount struct {
	Source   string // absolute host path
	Target   string // absolute path in the container
	ReadOnly bool
}

// Spec is what a container is created from.
type Spec struct {
	Name       string // container name (unique per runtime)
	Image      string // image ID or reference
	Entrypoint []string
	Cmd        []string
	Env        []string // KEY=VALUE; may hold secrets: never log a Spec
	Labels     map[string]string
	Mounts     []Mount
	Network    string  // "host" or "none"
	Memory     int64   // bytes, 0 = unlimited (swap is not allowed on top)
	CPU        float64 // cores, 0 = unlimited
	Pids       int64   // 0 = unlimited
	Privileged bool
	// CgroupParent places the container's cgroup under this one (a path
	// from the hierarchy's root, e.g. "/outpost.containers/name"). The
	// supervisor sets its limits there and reads OOM kills from it: some
	// runtimes (podman with cgroupfs on cgroup v1) do not report them.
	CgroupParent string
	User         string // "uid[:gid]" or a name known in the image; "" = the image's
	WorkingDir   string
}

// Info is a container's state as the runtime reports it.
type Info struct {
	ID         string
	Name       string
	Image      string // image ID
	Labels     map[string]string
	Running    bool
	Status     string // runtime's word: created, running, exited, ...
	ExitCode   int
	OOMKilled  bool
	Pid        int
	StartedAt  time.Time
	FinishedAt time.Time
}

// Image is an image known to the runtime.
type Image struct {
	ID          string // sha256:<hex> of its config
	RepoTags    []string
	RepoDigests []string
	Size        int64
}

// Stats is a container's resource use.
type Stats struct {
	MemoryBytes int64
	MemoryLimit int64
	CPUNanos    uint64 // cumulative CPU time
	At          time.Time
}

// Runtime is a container runtime. Implementations are safe for concurrent
// use.
type Runtime interface {
	// Name identifies the runtime and its endpoint, e.g.
	// "docker-api unix:///run/podman/podman.sock".
	Name() string
	Ping(ctx context.Context) error
	// LoadImage loads an image archive (docker-archive or oci-archive
	// tar, optionally gzip-compressed) into the runtime.
	LoadImage(ctx context.Context, archive io.Reader) error
	Image(ctx context.Context, ref string) (Image, error)
	RemoveImage(ctx context.Context, ref string) error
	Create(ctx context.Context, s Spec) (id string, err error)
	Start(ctx context.Context, id string) error
	// Stop sends SIGTERM, waits up to grace, then SIGKILLs. It returns
	// within grace plus a fixed margin even when the runtime hangs.
	Stop(ctx context.Context, id string, grace time.Duration) error
	Inspect(ctx context.Context, id string) (Info, error)
	// Wait blocks until the container is not running (or ctx ends) and
	// returns its final state.
	Wait(ctx context.Context, id string) (Info, error)
	// Logs copies the container's output since the given time to stdout
	// and stderr, following it until the container stops or ctx ends.
	Logs(ctx context.Context, id string, since time.Time, stdout, stderr io.Writer) error
	Stats(ctx context.Context, id string) (Stats, error)
	// Exec runs argv in the running container and returns its exit code
	// and (bounded) output.
	Exec(ctx context.Context, id string, argv []string) (code int, output string, err error)
	Remove(ctx context.Context, id string) error
	// List returns the containers (running or not) carrying all labels.
	List(ctx context.Context, labels map[string]string) ([]Info, error)
}
