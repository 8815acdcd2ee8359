package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/store/postgres/pgtest"
)

// TestReplicaKillUnderChanges (issue 12): PostgreSQL mode, two real
// outpost-server replicas, and the simulator as a third process with N
// gateways (real TLS, HTTP/2) that all watch replica A first. Changes
// stream in through replica B's API; replica A is killed with -9 in the
// middle. Every gateway must fail over to B and converge on the last
// change, applying revisions only in order and none twice, and B must hold
// every gateway's report of it. N is 200 in the suite (about 40 s under
// load); OUTPOST_KILL_GATEWAYS=2000 runs the figure.
func TestReplicaKillUnderChanges(t *testing.T) {
	n, changes, killAt := 200, 40, 15
	if v := os.Getenv("OUTPOST_KILL_GATEWAYS"); v != "" {
		n, _ = strconv.Atoi(v)
	}
	pg := pgtest.StartCluster(t)
	db := pg.NewDatabase(t)
	dir := t.TempDir()
	addrA, addrB := freeAddr(t), freeAddr(t)
	dataA, dataB := filepath.Join(dir, "a", "data"), filepath.Join(dir, "b", "data")
	os.MkdirAll(filepath.Dir(dataA), 0o700)
	os.MkdirAll(filepath.Dir(dataB), 0o700)
	a, tok := startServer(t, dataA, addrA, "--db", db)
	_, tokB := startServer(t, dataB, addrB, "--db", db)
	if tok == "" {
		tok = tokB
	}
	if tok == "" {
		t.Fatal("no admin token printed by either replica")
	}
	env := []string{"OUTPOST_SERVER=https://" + addrB, "OUTPOST_SERVER_TOKEN=" + tok, "OUTPOST_SERVER_CA=" + filepath.Join(dataB, "ca.pem")}
	logs := func() string {
		var b strings.Builder
		for _, f := range []string{filepath.Join(dir, "a", "server.log"), filepath.Join(dir, "b", "server.log")} {
			raw, _ := os.ReadFile(f)
			fmt.Fprintf(&b, "== %s (tail)\n%s\n", f, tail(string(raw), 30))
		}
		return b.String()
	}

	sim := exec.Command(serverBin, "sim", "--gateways", strconv.Itoa(n), "--dir", filepath.Join(dir, "sim"),
		"--servers", "https://"+addrA+",https://"+addrB, "--follow-changes", strconv.Itoa(changes), "--follow-timeout", "4m")
	sim.Env = append(os.Environ(), env...)
	out, _ := sim.StdoutPipe()
	var errb lockedBuffer // written by exec's copier while output() reads it
	sim.Stderr = &errb
	if err := sim.Start(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var lines []string
	connected := make(chan struct{})
	simDone := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			mu.Lock()
			lines = append(lines, sc.Text())
			mu.Unlock()
			if strings.HasPrefix(sc.Text(), "connected ") {
				close(connected)
			}
		}
		simDone <- sim.Wait()
	}()
	t.Cleanup(func() { sim.Process.Kill() })
	output := func() string { mu.Lock(); defer mu.Unlock(); return strings.Join(lines, "\n") + "\n" + errb.String() }
	select {
	case <-connected:
	case err := <-simDone:
		t.Fatalf("the simulator ended before connecting: %v\n%s\n%s", err, output(), logs())
	case <-time.After(3 * time.Minute):
		t.Fatalf("the simulator did not connect:\n%s\n%s", output(), logs())
	}
	if !strings.Contains(output(), fmt.Sprintf("connected %d/%d", n, n)) {
		t.Fatalf("not every gateway connected:\n%s\n%s", output(), logs())
	}
	cli := func(args ...string) {
		t.Helper()
		if o, e, code := run(t, env, serverBin, args...); code != 0 {
			t.Fatalf("%v: %d\n%s%s\n%s", args, code, o, e, logs())
		}
	}
	for k := 1; k <= changes; k++ {
		f := filepath.Join(dir, "follow.sql")
		os.WriteFile(f, []byte(fmt.Sprintf("-- seq %d\nCREATE RULE follow AS SELECT * FROM 'sim/#' DO REPUBLISH 'x/%d';\n", k, k)), 0o600)
		cli("objects", "put", "--kind", "ruleset", "--id", "sim-follow", "--file", f, "-l", "sim=1")
		if k == killAt {
			a.kill() // replica A, which every gateway watches, dies mid-stream
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case err := <-simDone:
		if err != nil || !strings.Contains(output(), "follow: converged") {
			t.Fatalf("simulator: %v\n%s\n%s", err, output(), logs())
		}
	case <-time.After(5 * time.Minute):
		t.Fatalf("the simulator did not finish:\n%s\n%s", output(), logs())
	}
	t.Log(strings.TrimSpace(output()))
}

// lockedBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
