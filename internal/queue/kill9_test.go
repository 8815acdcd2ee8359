package queue

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const childEnv = "OUTPOST_QUEUE_KILL9_CHILD_DIR"

// TestKill9Child is the child side of TestKill9: it appends with fsync:
// always from four goroutines and prints each seq once Append returned,
// until it is killed.
func TestKill9Child(t *testing.T) {
	dir := os.Getenv(childEnv)
	if dir == "" {
		t.Skip("helper process for TestKill9")
	}
	q, err := Open(Config{Dir: dir, SegmentSize: minSegmentSize, MaxBytes: 1 << 30}, Options{})
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(3)
	}
	out := bufio.NewWriterSize(os.Stdout, 64)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				seq, err := q.Append(context.Background(), fmt.Appendf(nil, "w%d-%d-%s", w, i, strings.Repeat("x", i%300)))
				if err != nil {
					fmt.Println("append:", err)
					os.Exit(3)
				}
				mu.Lock()
				fmt.Fprintf(out, "%d\n", seq)
				out.Flush() // the parent sees it only after Append returned
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

// TestKill9 starts a child that appends with fsync: always, kills it with
// SIGKILL at random moments (≥ 20 times, reusing the directory), and checks
// after each kill that every seq the child printed is present on reopen
// (except those the parent acknowledged in earlier rounds).
func TestKill9(t *testing.T) {
	if os.Getenv(childEnv) != "" {
		t.Skip()
	}
	iters := 20
	if testing.Short() {
		iters = 5
	}
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	acked := map[uint64]bool{}
	total := 0
	for it := range iters {
		cmd := exec.Command(os.Args[0], "-test.run=^TestKill9Child$", "-test.count=1")
		cmd.Env = append(os.Environ(), childEnv+"="+dir)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		printed := map[uint64]bool{}
		lines := make(chan string)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		killAt := time.Duration(10+rng.IntN(200)) * time.Millisecond
		var killTimer <-chan time.Time
		deadline := time.After(30 * time.Second)
	read:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					break read
				}
				seq, err := strconv.ParseUint(l, 10, 64)
				if err != nil {
					t.Fatalf("child: %s", l)
				}
				printed[seq] = true
				if killTimer == nil {
					killTimer = time.After(killAt)
				}
			case <-killTimer:
				cmd.Process.Signal(syscall.SIGKILL)
				killTimer = nil
			case <-deadline:
				cmd.Process.Kill()
				t.Fatal("child made no progress")
			}
		}
		cmd.Wait()
		if len(printed) == 0 {
			t.Fatalf("iteration %d: child printed nothing", it)
		}
		total += len(printed)

		q, err := Open(Config{Dir: dir, SegmentSize: minSegmentSize, MaxBytes: 1 << 30}, Options{})
		if err != nil {
			t.Fatalf("iteration %d: reopen: %v", it, err)
		}
		have := map[uint64]bool{}
		recs := drain(t, q, 20*time.Millisecond, false)
		for _, r := range recs {
			have[r.Seq] = true
		}
		for s := range printed {
			if !have[s] && !acked[s] {
				t.Fatalf("iteration %d: seq %d was acknowledged to the child but is lost", it, s)
			}
		}
		// Acknowledge a random prefix so the floor and segment deletion
		// are exercised across kills.
		n := rng.IntN(len(recs) + 1)
		for _, r := range recs[:n] {
			q.Ack(r.Seq)
			acked[r.Seq] = true
		}
		if st := q.Stats(); st.Drops[ReasonCorrupt] != 0 {
			t.Fatalf("iteration %d: corruption after kill -9: %v", it, st.Drops)
		}
		q.Close()
	}
	t.Logf("%d kills, %d acknowledged appends checked", iters, total)
}
