// Package pgtest starts a throwaway PostgreSQL cluster for tests, from
// Debian's packages (scripts/deps.sh installs postgresql): initdb + pg_ctl
// on a private port and socket directory, as the postgres user when the
// test runs as root (initdb refuses root). The cluster is stopped and
// removed when the test ends.
package pgtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// bin finds a PostgreSQL server binary directory.
func bin() (string, error) {
	m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(m) == 0 {
		return "", fmt.Errorf("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): run scripts/deps.sh")
	}
	sort.Strings(m)
	return filepath.Dir(m[len(m)-1]), nil
}

// Cluster is a running throwaway cluster.
type Cluster struct {
	URL         string
	start, stop func() error

	mu sync.Mutex
	n  int // databases made by NewDatabase
}

// NewDatabase creates an empty database of its own for one test and
// returns its URL, so that tests sharing the cluster never see each
// other's rows (objects one test leaves behind are desired state for every
// gateway of the next).
func (c *Cluster) NewDatabase(t testing.TB) string {
	t.Helper()
	c.mu.Lock()
	c.n++
	name := fmt.Sprintf("t%d", c.n)
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.URL)
	if err != nil {
		t.Fatalf("connect to the test cluster: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create database %s: %v", name, err)
	}
	return strings.Replace(c.URL, "/postgres?", "/"+name+"?", 1)
}

// Stop stops the server (immediate mode); Start starts it again on the same
// port and data (the "database unavailable" fault).
func (c *Cluster) Stop() error  { return c.stop() }
func (c *Cluster) Start() error { return c.start() }

// Start starts a cluster and returns the URL of its postgres database.
func Start(t testing.TB) string { return StartCluster(t).URL }

// StartCluster starts a cluster.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	dir, err := bin()
	if err != nil {
		t.Fatal(err)
	}
	root, err := os.MkdirTemp("", "outpost-pg-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(root, 0o755)
	data, sock := filepath.Join(root, "data"), filepath.Join(root, "sock")
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root needs the postgres user (installed with postgresql): %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		for _, d := range []string{data, sock} {
			os.Mkdir(d, 0o700)
			os.Chown(d, uid, gid)
		}
		os.Chown(root, uid, gid)
	}
	run := func(name string, args ...string) {
		t.Helper()
		cmd := exec.Command(filepath.Join(dir, name), args...)
		cmd.Dir = root
		if cred != nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	run("initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync")
	pgctl := func(args ...string) error {
		cmd := exec.Command(filepath.Join(dir, "pg_ctl"), args...)
		if cred != nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("pg_ctl %v: %w: %s", args, err, out)
		}
		return nil
	}
	c := &Cluster{
		URL: fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port),
		start: func() error {
			return pgctl("-D", data, "-l", filepath.Join(root, "pg.log"), "-w", "-o",
				fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200", port, sock), "start")
		},
		stop: func() error { return pgctl("-D", data, "-m", "immediate", "-w", "stop") },
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Stop()
		os.RemoveAll(root)
	})
	return c
}
