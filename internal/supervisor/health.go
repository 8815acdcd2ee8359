package supervisor

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/outpost-edge/outpost/internal/supervisor/recipe"
)

// healthEvent is reported by the health checker to the run loop.
type healthEvent struct {
	ok        bool // a check passed (sent on transitions to passing)
	unhealthy bool // failures reached the threshold
	detail    string
}

// checkHealth runs the recipe's health check until ctx ends. Until the
// first success checks run every StartInterval and failures within
// StartPeriod do not count; afterwards they run every Interval. It sends ok
// on each transition to passing, a plain failure event on the first failure
// that counts, and unhealthy when FailureThreshold consecutive checks fail.
//
// Between checks no goroutine waits: each check runs from a timer
// (time.AfterFunc) that the previous one armed, so checks never overlap and
// an idle component costs the agent no parked goroutine stack for its
// health check (with 100 components, that was 100 stacks).
func (c *component) checkHealth(ctx context.Context, r *recipe.Recipe, env []string, cred *credential, out chan<- healthEvent) {
	c.runHealth(ctx, r.Health, c.checker(ctx, r, env, cred), out)
}

// runHealth drives one check function (see checkHealth).
func (c *component) runHealth(ctx context.Context, h *recipe.Health, check func(timeout time.Duration) error, out chan<- healthEvent) {
	if check == nil {
		return
	}
	l := &healthLoop{c: c, ctx: ctx, h: h, check: check, out: out, start: time.Now()}
	l.timer = time.AfterFunc(time.Hour, l.step)
	l.timer.Stop()
	context.AfterFunc(ctx, func() { l.timer.Stop() })
	l.step()
}

// healthLoop is the state of one component's health checks between runs.
// Only one step runs at a time: the next is armed at the end of the last.
type healthLoop struct {
	c     *component
	ctx   context.Context
	h     *recipe.Health
	check func(timeout time.Duration) error
	out   chan<- healthEvent
	start time.Time
	timer *time.Timer // runs step; armed by the step before

	passedOnce bool
	passing    bool
	failures   int
}

func (l *healthLoop) send(ev healthEvent) bool {
	select {
	case l.out <- ev:
		return true
	case <-l.ctx.Done():
		return false
	}
}

// step runs one check, reports it, and arms the timer for the next.
func (l *healthLoop) step() {
	h := l.h
	if l.ctx.Err() != nil {
		return
	}
	err := l.check(h.Timeout)
	if l.ctx.Err() != nil {
		return
	}
	if err == nil {
		l.failures = 0
		l.passedOnce = true
		if !l.passing {
			l.passing = true
			if !l.send(healthEvent{ok: true}) {
				return
			}
		}
	} else if l.passedOnce || time.Since(l.start) >= h.StartPeriod {
		l.failures++
		l.passing = false
		l.c.log.Warn("health check failed", "failures", l.failures, "threshold", h.FailureThreshold, "err", err)
		ev := healthEvent{detail: err.Error()}
		if l.failures >= h.FailureThreshold {
			ev.unhealthy = true
			ev.detail = fmt.Sprintf("%d consecutive failures, last: %v", l.failures, err)
		}
		if !l.send(ev) {
			return
		}
	}
	next := h.Interval
	if !l.passedOnce && time.Since(l.start) < h.StartPeriod {
		next = h.StartInterval
	}
	l.timer.Reset(next)
}

// checker returns the function that performs one check.
func (c *component) checker(ctx context.Context, r *recipe.Recipe, env []string, cred *credential) func(timeout time.Duration) error {
	h := r.Health
	switch h.Kind {
	case recipe.HealthExec:
		return func(timeout time.Duration) error { return c.execCheck(ctx, r, h.Exec, env, cred, timeout) }
	case recipe.HealthHTTP:
		client := &http.Client{Transport: c.s.healthTransport}
		return func(timeout time.Duration) error {
			cctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			req, err := http.NewRequestWithContext(cctx, http.MethodGet, h.URL, nil)
			if err != nil {
				return err
			}
			resp, err := client.Do(req)
			if err != nil {
				return err
			}
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			if resp.StatusCode >= 400 {
				return fmt.Errorf("GET %s: HTTP %s", h.URL, resp.Status)
			}
			return nil
		}
	case recipe.HealthMQTT:
		bus := c.s.opts.Bus
		if bus == nil {
			c.log.Error("mqtt health check needs the local bus, which is not configured")
			return func(time.Duration) error { return fmt.Errorf("no local bus for the mqtt heartbeat check") }
		}
		var mu sync.Mutex
		var last time.Time
		beat := make(chan struct{}, 1)
		cancel, err := bus.Subscribe(h.Topic, func(string, []byte) {
			mu.Lock()
			last = time.Now()
			mu.Unlock()
			select {
			case beat <- struct{}{}:
			default:
			}
		})
		if err != nil {
			return func(time.Duration) error { return fmt.Errorf("subscribe %s: %v", h.Topic, err) }
		}
		context.AfterFunc(ctx, cancel) // unsubscribe when the check ends, without a goroutine waiting for it
		first := true
		return func(time.Duration) error {
			if first {
				// Until the first heartbeat, wait for it (bounded by the
				// cadence) so that healthy is reported as soon as it comes.
				first = false
				t := time.NewTimer(h.StartInterval)
				defer t.Stop()
				select {
				case <-beat:
				case <-t.C:
				case <-ctx.Done():
				}
			}
			mu.Lock()
			l := last
			mu.Unlock()
			if l.IsZero() {
				first = true
				return fmt.Errorf("no heartbeat on %s yet", h.Topic)
			}
			if age := time.Since(l); age > h.Interval {
				return fmt.Errorf("no heartbeat on %s for %s", h.Topic, age.Round(time.Millisecond))
			}
			return nil
		}
	}
	return nil
}

// execCheck runs the check command with the component's environment and
// user, in its own process group, killed at the timeout. Exit 0 passes.
func (c *component) execCheck(ctx context.Context, r *recipe.Recipe, cmd *recipe.Command, env []string, cred *credential, timeout time.Duration) error {
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		devnull.Close()
		return err
	}
	p, err := spawn(procSpec{argv: cmd.Argv(), env: env, dir: c.workDir(r), cred: cred, stdout: devnull, stderr: pw})
	devnull.Close()
	pw.Close()
	if err != nil {
		pr.Close()
		return err
	}
	var buf bytes.Buffer
	readDone := make(chan struct{})
	go func() {
		_, _ = io.Copy(&buf, io.LimitReader(pr, 4096))
		_, _ = io.Copy(io.Discard, pr)
		pr.Close()
		close(readDone)
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	var why error
	select {
	case <-p.done:
	case <-t.C:
		why = fmt.Errorf("check timed out after %s", timeout)
	case <-ctx.Done():
		why = ctx.Err()
	}
	if why != nil {
		_ = syscall.Kill(-p.pid, syscall.SIGKILL)
		<-p.done
	}
	// Leftovers of the check? Probing the process group is a syscall;
	// scanning /proc is done only when something is left.
	if syscall.Kill(-p.pid, 0) == nil {
		killTree(nil, p.pid, p.pid, c.s.reaper)
	}
	waitPipes(readDone)
	if why != nil {
		return why
	}
	if ex := p.exit(); !ex.success() {
		msg := strings.TrimSpace(buf.String())
		if msg != "" {
			return fmt.Errorf("check %s: %s", ex, lastLine(msg))
		}
		return fmt.Errorf("check %s", ex)
	}
	return nil
}

func lastLine(s string) string {
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
