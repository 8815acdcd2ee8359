//go:build containerd

package container

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	v1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/containerd"
	apievents "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/cio"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/images"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/oci"
	"github.com/containerd/containerd/remotes/docker"
	"github.com/containerd/typeurl/v2"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// DefaultContainerdSocket is containerd's usual socket.
const DefaultContainerdSocket = "/run/containerd/containerd.sock"

// labelStarted records when a container's task was started (containerd
// keeps no start time).
const labelStarted = "io.outpost.started"

// snapshotter is the snapshotter images are unpacked for and containers
// run on.
const snapshotter = "overlayfs"

// Containerd talks to containerd over its gRPC socket with containerd's
// own Go client (built only with -tags containerd: it adds about 9 MB to
// the binary, docs/bench/binary-size.md).
//
// containerd keeps no container output: the shim writes a container's
// stdout and stderr (merged, in the order written) to a file in logDir,
// which outlives the agent (re-adoption after kill -9 loses nothing) and
// is removed with the container. Logs follows that file; a side index of
// (time, offset) pairs maps Logs' since to an offset.
type Containerd struct {
	socket, ns, logDir string

	mu     sync.Mutex
	client *containerd.Client

	oomMu sync.Mutex
	oom   map[string]bool // containers whose task the OOM killer hit
}

var (
	_ Runtime = (*Containerd)(nil)
	_ Puller  = (*Containerd)(nil)
)

// NewContainerd returns a client for containerd at socket, working in
// namespace, keeping container output files in logDir. It does not
// connect.
func NewContainerd(socket, namespace, logDir string) *Containerd {
	return &Containerd{socket: socket, ns: namespace, logDir: logDir, oom: map[string]bool{}}
}

// Name implements Runtime.
func (c *Containerd) Name() string { return "containerd unix://" + c.socket + " namespace " + c.ns }

// Close closes the connection (if any).
func (c *Containerd) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.client == nil {
		return nil
	}
	err := c.client.Close()
	c.client = nil
	return err
}

func (c *Containerd) conn(ctx context.Context) (*containerd.Client, context.Context, error) {
	ctx = namespaces.WithNamespace(ctx, c.ns)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.client != nil {
		return c.client, ctx, nil
	}
	if _, err := os.Stat(c.socket); err != nil {
		return nil, ctx, fmt.Errorf("container: containerd: %w: %w", ErrUnavailable, err)
	}
	cl, err := containerd.New(c.socket, containerd.WithDefaultNamespace(c.ns), containerd.WithTimeout(5*time.Second))
	if err != nil {
		return nil, ctx, fmt.Errorf("container: containerd: %w: %w", ErrUnavailable, err)
	}
	c.client = cl
	return cl, ctx, nil
}

// wrap maps containerd's errors to the package's sentinels.
func wrap(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrUnavailable), errors.Is(err, ErrNotFound), errors.Is(err, ErrRuntime):
		return err
	case errdefs.IsNotFound(err):
		return fmt.Errorf("container: containerd: %s: %w: %v", op, ErrNotFound, err)
	case errdefs.IsUnavailable(err), status.Code(err) == codes.Unavailable:
		return fmt.Errorf("container: containerd: %s: %w: %v", op, ErrUnavailable, err)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("container: containerd: %s: %w", op, err)
	}
	return fmt.Errorf("container: containerd: %s: %w: %v", op, ErrRuntime, err)
}

// Ping implements Runtime.
func (c *Containerd) Ping(ctx context.Context) error {
	cl, ctx, err := c.conn(ctx)
	if err != nil {
		return err
	}
	_, err = cl.Version(ctx)
	return wrap("version", err)
}

// LoadImage implements Runtime: imports a docker-archive or oci-archive
// (gzip allowed) and unpacks it for the snapshotter.
func (c *Containerd) LoadImage(ctx context.Context, archive io.Reader) error {
	cl, ctx, err := c.conn(ctx)
	if err != nil {
		return err
	}
	br := bufio.NewReader(archive)
	var r io.Reader = br
	if b, _ := br.Peek(2); len(b) == 2 && b[0] == 0x1f && b[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("container: containerd: import: %w: %v", ErrRuntime, err)
		}
		r = zr
	}
	imgs, err := cl.Import(ctx, r,
		containerd.WithDigestRef(func(d digest.Digest) string { return "import.outpost.local/image@" + d.String() }),
		containerd.WithSkipDigestRef(func(name string) bool { return name != "" }))
	if err != nil {
		return wrap("import", err)
	}
	if len(imgs) == 0 {
		return fmt.Errorf("container: containerd: import: %w: the archive holds no image", ErrRuntime)
	}
	for _, im := range imgs {
		if err := containerd.NewImage(cl, im).Unpack(ctx, snapshotter); err != nil {
			return wrap("unpack "+im.Name, err)
		}
	}
	return nil
}

// resolve finds an image by name, normalized Docker name, config digest
// (the image ID) or manifest digest.
func (c *Containerd) resolve(ctx context.Context, cl *containerd.Client, ref string) ([]containerd.Image, error) {
	if !strings.HasPrefix(ref, "sha256:") {
		names := []string{ref}
		if n := normalizeRef(ref); n != ref {
			names = append(names, n)
		}
		for _, n := range names {
			im, err := cl.GetImage(ctx, n)
			if err == nil {
				return []containerd.Image{im}, nil
			}
			if !errdefs.IsNotFound(err) {
				return nil, wrap("image "+ref, err)
			}
		}
		return nil, fmt.Errorf("container: containerd: image %s: %w", ref, ErrNotFound)
	}
	all, err := cl.ListImages(ctx)
	if err != nil {
		return nil, wrap("list images", err)
	}
	var out []containerd.Image
	for _, im := range all {
		if im.Target().Digest.String() == ref {
			out = append(out, im)
			continue
		}
		if cfg, err := im.Config(ctx); err == nil && cfg.Digest.String() == ref {
			out = append(out, im)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("container: containerd: image %s: %w", ref, ErrNotFound)
	}
	return out, nil
}

// normalizeRef adds Docker's defaults: "alpine" is
// "docker.io/library/alpine:latest".
func normalizeRef(ref string) string {
	name, rest := ref, ""
	if i := strings.IndexAny(ref, "@"); i >= 0 {
		name, rest = ref[:i], ref[i:]
	}
	first, _, hasSlash := strings.Cut(name, "/")
	if !hasSlash || (!strings.ContainsAny(first, ".:") && first != "localhost") {
		if !hasSlash {
			name = "library/" + name
		}
		name = "docker.io/" + name
	}
	if rest == "" && !strings.Contains(name[strings.LastIndex(name, "/")+1:], ":") {
		name += ":latest"
	}
	return name + rest
}

// Image implements Runtime. ID is the config digest, as for the Docker
// API; RepoDigests name the manifest digest.
func (c *Containerd) Image(ctx context.Context, ref string) (Image, error) {
	cl, ctx, err := c.conn(ctx)
	if err != nil {
		return Image{}, err
	}
	ims, err := c.resolve(ctx, cl, ref)
	if err != nil {
		return Image{}, err
	}
	cfg, err := ims[0].Config(ctx)
	if err != nil {
		return Image{}, wrap("image config "+ref, err)
	}
	out := Image{ID: cfg.Digest.String()}
	for _, im := range ims {
		name := im.Name()
		if !strings.Contains(name, "@") {
			out.RepoTags = append(out.RepoTags, name)
		}
		out.RepoDigests = append(out.RepoDigests, Repository(name)+"@"+im.Target().Digest.String())
	}
	if n, err := ims[0].Size(ctx); err == nil {
		out.Size = n
	}
	return out, nil
}

// RemoveImage implements Runtime: every name of the image is deleted.
func (c *Containerd) RemoveImage(ctx context.Context, ref string) error {
	cl, ctx, err := c.conn(ctx)
	if err != nil {
		return err
	}
	ims, err := c.resolve(ctx, cl, ref)
	if err != nil {
		return err
	}
	cfg, _ := ims[0].Config(ctx)
	if cfg.Digest != "" && !strings.HasPrefix(ref, "sha256:") {
		if all, err := c.resolve(ctx, cl, cfg.Digest.String()); err == nil {
			ims = all
		}
	}
	for i, im := range ims {
		var opts []images.DeleteOpt
		if i == len(ims)-1 {
			opts = append(opts, images.SynchronousDelete())
		}
		if err := cl.ImageService().Delete(ctx, im.Name(), opts...); err != nil && !errdefs.IsNotFound(err) {
			return wrap("remove image "+im.Name(), err)
		}
	}
	return nil
}

// Create implements Runtime.
func (c *Containerd) Create(ctx context.Context, s Spec) (string, error) {
	cl, ctx, err := c.conn(ctx)
	if err != nil {
		return "", err
	}
	ims, err := c.resolve(ctx, cl, s.Image)
	if err != nil {
		return "", err
	}
	img := ims[0]
	if ok, err := img.IsUnpacked(ctx, snapshotter); err != nil || !ok {
		if err := img.Unpack(ctx, snapshotter); err != nil {
			return "", wrap("unpack", err)
		}
	}
	opts := []oci.SpecOpts{oci.WithImageConfig(img)}
	if len(s.Entrypoint) > 0 || len(s.Cmd) > 0 {
		var ep, cmd []string
		if ic, err := img.Spec(ctx); err == nil {
			ep, cmd = ic.Config.Entrypoint, ic.Config.Cmd
		}
		if len(s.Entrypoint) > 0 {
			ep, cmd = s.Entrypoint, nil // as Docker: a new entrypoint drops the image's command
		}
		if len(s.Cmd) > 0 {
			cmd = s.Cmd
		}
		opts = append(opts, oci.WithProcessArgs(append(append([]string{}, ep...), cmd...)...))
	}
	if len(s.Env) > 0 {
		opts = append(opts, oci.WithEnv(s.Env))
	}
	if len(s.Mounts) > 0 {
		ms := make([]specs.Mount, 0, len(s.Mounts))
		for _, m := range s.Mounts {
			o := []string{"rbind", "rw"}
			if m.ReadOnly {
				o[1] = "ro"
			}
			ms = append(ms, specs.Mount{Type: "bind", Source: m.Source, Destination: m.Target, Options: o})
		}
		opts = append(opts, oci.WithMounts(ms))
	}
	if s.Network != "none" {
		opts = append(opts, oci.WithHostNamespace(specs.NetworkNamespace), oci.WithHostHostsFile, oci.WithHostResolvconf)
	}
	if s.Memory > 0 {
		opts = append(opts, oci.WithMemoryLimit(uint64(s.Memory)), oci.WithMemorySwap(s.Memory))
	}
	if s.CPU > 0 {
		opts = append(opts, oci.WithCPUCFS(int64(s.CPU*100000), 100000))
	}
	if s.Pids > 0 {
		opts = append(opts, oci.WithPidsLimit(s.Pids))
	}
	if s.Privileged {
		opts = append(opts, oci.WithPrivileged, oci.WithAllDevicesAllowed, oci.WithHostDevices)
	}
	if s.CgroupParent != "" {
		opts = append(opts, oci.WithCgroup(path.Join(s.CgroupParent, s.Name)))
	}
	if s.User != "" {
		opts = append(opts, oci.WithUser(s.User))
	}
	if s.WorkingDir != "" {
		opts = append(opts, oci.WithProcessCwd(s.WorkingDir))
	}
	// The ID is the name plus a random suffix: a container created again
	// under the same name is a different container (as with the Docker
	// API's IDs), and a leftover never blocks the name.
	var rb [4]byte
	_, _ = rand.Read(rb[:])
	id := s.Name + "-" + hex.EncodeToString(rb[:])
	ctr, err := cl.NewContainer(ctx, id,
		containerd.WithImage(img),
		containerd.WithNewSnapshot(id, img),
		containerd.WithContainerLabels(s.Labels),
		containerd.WithNewSpec(opts...))
	if err != nil {
		return "", wrap("create "+s.Name, err)
	}
	return ctr.ID(), nil
}

// containerName returns the name a container was created with (its ID
// less the random suffix Create adds).
func containerName(id string) string {
	if i := strings.LastIndexByte(id, '-'); i > 0 && len(id)-i == 9 {
		return id[:i]
	}
	return id
}

func (c *Containerd) logPath(id string) string {
	return filepath.Join(c.logDir, c.ns+"-"+id+".log")
}

// Start implements Runtime.
func (c *Containerd) Start(ctx context.Context, id string) error {
	cl, ctx, err := c.conn(ctx)
	if err != nil {
		return err
	}
	ctr, err := cl.LoadContainer(ctx, id)
	if err != nil {
		return wrap("start "+id, err)
	}
	if t, err := ctr.Task(ctx, nil); err == nil { // an exited task of an earlier start
		if _, err := t.Delete(ctx, containerd.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
			return wrap("start "+id+": delete old task", err)
		}
	}
	if err := os.MkdirAll(c.logDir, 0o700); err != nil {
		return fmt.Errorf("container: containerd: %w", err)
	}
	t, err := ctr.NewTask(ctx, cio.LogFile(c.logPath(id)))
	if err != nil {
		return wrap("start "+id, err)
	}
	if _, err := ctr.SetLabels(ctx, map[string]string{labelStarted: time.Now().UTC().Format(time.RFC3339Nano)}); err != nil {
		return wrap("start "+id, err)
	}
	if err := t.Start(ctx); err != nil {
		_, _ = t.Delete(ctx, containerd.WithProcessKill)
		return wrap("start "+id, err)
	}
	return nil
}

// Stop implements Runtime: SIGTERM, up to grace, SIGKILL to every process
// of the container; bounded by grace plus stopMargin.
func (c *Containerd) Stop(ctx context.Context, id string, grace time.Duration) error {
	cl, ctx, err := c.conn(ctx)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, grace+stopMargin)
	defer cancel()
	ctr, err := cl.LoadContainer(ctx, id)
	if err != nil {
		return wrap("stop "+id, err)
	}
	t, err := ctr.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		return nil // never started
	}
	if err != nil {
		return wrap("stop "+id, err)
	}
	st, err := t.Status(ctx)
	if err == nil && st.Status == containerd.Stopped {
		return nil
	}
	exited, err := t.Wait(ctx)
	if err != nil {
		return wrap("stop "+id, err)
	}
	if err := t.Kill(ctx, syscall.SIGTERM); err != nil && !errdefs.IsNotFound(err) {
		return wrap("stop "+id, err)
	}
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-exited:
		return nil
	case <-timer.C:
	case <-ctx.Done():
	}
	kctx, kcancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), c.ns), stopMargin/2)
	defer kcancel()
	if err := t.Kill(kctx, syscall.SIGKILL, containerd.WithKillAll); err != nil && !errdefs.IsNotFound(err) {
		return wrap("stop "+id+": kill", err)
	}
	select {
	case <-exited:
		return nil
	case <-kctx.Done():
		return fmt.Errorf("container: containerd: stop %s: %w: still running after SIGKILL", id, ErrRuntime)
	}
}

// Inspect implements Runtime.
func (c *Containerd) Inspect(ctx context.Context, id string) (Info, error) {
	cl, ctx, err := c.conn(ctx)
	if err != nil {
		return Info{}, err
	}
	ctr, err := cl.LoadContainer(ctx, id)
	if err != nil {
		return Info{}, wrap("inspect "+id, err)
	}
	ci, err := ctr.Info(ctx, containerd.WithoutRefreshedMetadata)
	if err != nil {
		return Info{}, wrap("inspect "+id, err)
	}
	info := Info{ID: id, Name: containerName(id), Image: ci.Image, Labels: ci.Labels, Status: "created"}
	if im, err := ctr.Image(ctx); err == nil {
		if cfg, err := im.Config(ctx); err == nil {
			info.Image = cfg.Digest.String()
		}
	}
	if ts := ci.Labels[labelStarted]; ts != "" {
		info.StartedAt, _ = time.Parse(time.RFC3339Nano, ts)
	}
	t, err := ctr.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		return info, nil
	}
	if err != nil {
		return Info{}, wrap("inspect "+id, err)
	}
	st, err := t.Status(ctx)
	if err != nil {
		return Info{}, wrap("inspect "+id, err)
	}
	info.Status = string(st.Status)
	switch st.Status {
	case containerd.Running, containerd.Paused, containerd.Pausing:
		info.Running = true
		info.Pid = int(t.Pid())
	case containerd.Stopped:
		info.Status = "exited"
		info.ExitCode = int(st.ExitStatus)
		info.FinishedAt = st.ExitTime
	}
	c.oomMu.Lock()
	info.OOMKilled = c.oom[id]
	c.oomMu.Unlock()
	return info, nil
}

// Wait implements Runtime: the task's own wait (an exit event from the
// shim), with OOM events of the container recorded for Inspect.
func (c *Containerd) Wait(ctx context.Context, id string) (Info, error) {
	for {
		info, err := c.Inspect(ctx, id)
		if ctx.Err() != nil {
			return Info{}, ctx.Err()
		}
		if err == nil && !info.Running && info.Status != "created" {
			return info, nil
		}
		if errors.Is(err, ErrNotFound) {
			return Info{}, err
		}
		t0 := time.Now()
		if err == nil && info.Running {
			c.waitTask(ctx, id)
		}
		if pause := time.Second - time.Since(t0); pause > 0 {
			if err == nil {
				pause = min(pause, 100*time.Millisecond)
			}
			t := time.NewTimer(pause)
			select {
			case <-ctx.Done():
				t.Stop()
				return Info{}, ctx.Err()
			case <-t.C:
			}
		}
	}
}

// waitTask blocks until the task exits (or the connection breaks),
// watching for OOM events meanwhile.
func (c *Containerd) waitTask(ctx context.Context, id string) {
	cl, ctx, err := c.conn(ctx)
	if err != nil {
		return
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ctr, err := cl.LoadContainer(ctx, id)
	if err != nil {
		return
	}
	t, err := ctr.Task(ctx, nil)
	if err != nil {
		return
	}
	evs, errs := cl.Subscribe(ctx, `topic=="/tasks/oom"`)
	go func() {
		for {
			select {
			case e := <-evs:
				if e == nil || e.Namespace != c.ns || e.Event == nil {
					continue
				}
				v, err := typeurl.UnmarshalAny(e.Event)
				if oe, ok := v.(*apievents.TaskOOM); err == nil && ok && oe.ContainerID == id {
					c.oomMu.Lock()
					c.oom[id] = true
					c.oomMu.Unlock()
				}
			case <-errs:
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	exited, err := t.Wait(ctx)
	if err != nil {
		return
	}
	select {
	case <-exited:
		// An OOM event may trail the exit a little.
		time.Sleep(50 * time.Millisecond)
	case <-ctx.Done():
	}
}

// Logs implements Runtime. Output is merged: everything goes to stdout.
func (c *Containerd) Logs(ctx context.Context, id string, since time.Time, stdout, _ io.Writer) error {
	if _, err := c.Inspect(ctx, id); err != nil {
		return err
	}
	p := c.logPath(id)
	var off int64
	if !since.IsZero() {
		off = indexOffset(p+".idx", since)
	}
	done := make(chan struct{})
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { defer close(done); _, _ = c.Wait(wctx, id) }()
	var f *os.File
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	idx, _ := os.OpenFile(p+".idx", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if idx != nil {
		defer idx.Close()
	}
	buf := make([]byte, 32<<10)
	var lastIdx time.Time
	for {
		if f == nil {
			var err error
			if f, err = os.Open(p); err != nil {
				f = nil
			} else if _, err := f.Seek(off, io.SeekStart); err != nil {
				return err
			}
		}
		finished := false
		select {
		case <-done:
			finished = true
		default:
		}
		progressed := false
		for f != nil {
			n, err := f.Read(buf)
			if n > 0 {
				// Deliver whole lines; keep a partial last line for later
				// unless the container is gone.
				chunk := buf[:n]
				if i := bytes.LastIndexByte(chunk, '\n'); i >= 0 && !finished {
					chunk = chunk[:i+1]
					if _, err := f.Seek(off+int64(i+1), io.SeekStart); err != nil {
						return err
					}
				} else if !finished && n < len(buf) {
					if _, err := f.Seek(off, io.SeekStart); err != nil {
						return err
					}
					break
				}
				if _, err := stdout.Write(chunk); err != nil {
					return err
				}
				off += int64(len(chunk))
				progressed = true
			}
			if err != nil || n == 0 {
				break
			}
		}
		if progressed && idx != nil && time.Since(lastIdx) >= 100*time.Millisecond {
			lastIdx = time.Now()
			fmt.Fprintf(idx, "%d %d\n", lastIdx.UnixNano(), off)
		}
		if finished {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-done:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// indexOffset returns the output offset delivered by time t according to
// the index file (0 when unknown).
func indexOffset(path string, t time.Time) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	var off int64
	for _, line := range strings.Split(string(b), "\n") {
		ts, o, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		n, err1 := strconv.ParseInt(ts, 10, 64)
		v, err2 := strconv.ParseInt(o, 10, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		if n > t.UnixNano() {
			break
		}
		off = v
	}
	return off
}

// Stats implements Runtime (cgroup v1 or v2 metrics of the task).
func (c *Containerd) Stats(ctx context.Context, id string) (Stats, error) {
	cl, ctx, err := c.conn(ctx)
	if err != nil {
		return Stats{}, err
	}
	ctr, err := cl.LoadContainer(ctx, id)
	if err != nil {
		return Stats{}, wrap("stats "+id, err)
	}
	t, err := ctr.Task(ctx, nil)
	if err != nil {
		return Stats{}, wrap("stats "+id, err)
	}
	m, err := t.Metrics(ctx)
	if err != nil {
		return Stats{}, wrap("stats "+id, err)
	}
	v, err := typeurl.UnmarshalAny(m.Data)
	if err != nil {
		return Stats{}, wrap("stats "+id, err)
	}
	out := Stats{At: time.Now()}
	switch s := v.(type) {
	case *v1stats.Metrics:
		if s.Memory != nil && s.Memory.Usage != nil {
			out.MemoryBytes, out.MemoryLimit = int64(s.Memory.Usage.Usage), int64(s.Memory.Usage.Limit)
		}
		if s.CPU != nil && s.CPU.Usage != nil {
			out.CPUNanos = s.CPU.Usage.Total
		}
	case *v2stats.Metrics:
		if s.Memory != nil {
			out.MemoryBytes, out.MemoryLimit = int64(s.Memory.Usage), int64(s.Memory.UsageLimit)
		}
		if s.CPU != nil {
			out.CPUNanos = s.CPU.UsageUsec * 1000
		}
	default:
		return Stats{}, fmt.Errorf("container: containerd: stats %s: %w: metrics of type %T", id, ErrRuntime, v)
	}
	return out, nil
}

// Exec implements Runtime.
func (c *Containerd) Exec(ctx context.Context, id string, argv []string) (int, string, error) {
	cl, ctx, err := c.conn(ctx)
	if err != nil {
		return -1, "", err
	}
	ctr, err := cl.LoadContainer(ctx, id)
	if err != nil {
		return -1, "", wrap("exec", err)
	}
	spec, err := ctr.Spec(ctx)
	if err != nil {
		return -1, "", wrap("exec", err)
	}
	t, err := ctr.Task(ctx, nil)
	if err != nil {
		return -1, "", wrap("exec", err)
	}
	ps := *spec.Process
	ps.Args, ps.Terminal = argv, false
	var rb [6]byte
	_, _ = rand.Read(rb[:])
	var out syncLimited
	p, err := t.Exec(ctx, "exec-"+hex.EncodeToString(rb[:]), &ps, cio.NewCreator(cio.WithStreams(nil, &out, &out)))
	if err != nil {
		return -1, "", wrap("exec", err)
	}
	dctx, dcancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), c.ns), 10*time.Second)
	defer dcancel()
	defer func() { _, _ = p.Delete(dctx, containerd.WithProcessKill) }()
	exited, err := p.Wait(ctx)
	if err != nil {
		return -1, "", wrap("exec", err)
	}
	if err := p.Start(ctx); err != nil {
		return -1, "", wrap("exec", err)
	}
	select {
	case st := <-exited:
		p.IO().Wait()
		code, _, err := st.Result()
		if err != nil {
			return -1, out.String(), wrap("exec", err)
		}
		return int(code), out.String(), nil
	case <-ctx.Done():
		_ = p.Kill(dctx, syscall.SIGKILL)
		return -1, out.String(), ctx.Err()
	}
}

type syncLimited struct {
	mu sync.Mutex
	b  limitedBuffer
}

func (s *syncLimited) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncLimited) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Remove implements Runtime (forced: a running task is killed), with its
// snapshot and output file.
func (c *Containerd) Remove(ctx context.Context, id string) error {
	cl, ctx, err := c.conn(ctx)
	if err != nil {
		return err
	}
	ctr, err := cl.LoadContainer(ctx, id)
	if err != nil {
		return wrap("remove "+id, err)
	}
	if t, err := ctr.Task(ctx, nil); err == nil {
		if _, err := t.Delete(ctx, containerd.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
			return wrap("remove "+id, err)
		}
	}
	if err := ctr.Delete(ctx, containerd.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
		return wrap("remove "+id, err)
	}
	_ = os.Remove(c.logPath(id))
	_ = os.Remove(c.logPath(id) + ".idx")
	c.oomMu.Lock()
	delete(c.oom, id)
	c.oomMu.Unlock()
	return nil
}

// List implements Runtime.
func (c *Containerd) List(ctx context.Context, labels map[string]string) ([]Info, error) {
	cl, ctx, err := c.conn(ctx)
	if err != nil {
		return nil, err
	}
	var f []string
	for k, v := range labels {
		f = append(f, fmt.Sprintf("labels.%q==%q", k, v))
	}
	ctrs, err := cl.Containers(ctx, strings.Join(f, ","))
	if err != nil {
		return nil, wrap("list", err)
	}
	out := make([]Info, 0, len(ctrs))
	for _, ct := range ctrs {
		info, err := c.Inspect(ctx, ct.ID())
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		match := true
		for k, v := range labels {
			if info.Labels[k] != v {
				match = false
			}
		}
		if match {
			out = append(out, info)
		}
	}
	return out, nil
}

// Pull implements Puller with containerd's resolver: HTTPS, plain HTTP
// for localhost only, auth for the registry named in auth.
func (c *Containerd) Pull(ctx context.Context, ref string, auth *RegistryAuth) error {
	cl, ctx, err := c.conn(ctx)
	if err != nil {
		return err
	}
	var aopts []docker.AuthorizerOpt
	if auth != nil {
		a := *auth
		aopts = append(aopts, docker.WithAuthCreds(func(host string) (string, string, error) {
			if host == a.ServerAddress {
				return a.Username, a.Password, nil
			}
			return "", "", nil
		}))
	}
	res := docker.NewResolver(docker.ResolverOptions{Hosts: docker.ConfigureDefaultRegistries(
		docker.WithAuthorizer(docker.NewDockerAuthorizer(aopts...)),
		docker.WithPlainHTTP(docker.MatchLocalhost))})
	if _, err := cl.Pull(ctx, normalizeRef(ref), containerd.WithPullUnpack, containerd.WithPullSnapshotter(snapshotter), containerd.WithResolver(res)); err != nil {
		if IsUnavailable(wrap("pull", err)) {
			return wrap("pull", err)
		}
		return fmt.Errorf("container: containerd: %w: %s: %v", ErrPull, ref, err)
	}
	return nil
}
