// Package telemetry is how an operator sees inside a running agent: structured
// logs (log/slog, text or JSON, level and format changeable at run time), a
// local HTTP endpoint with Prometheus /metrics, /healthz, /readyz (every
// module's health), /debug/pprof, and the API that `outpost diag` uses to
// collect a support bundle.
//
// The HTTP endpoint listens on loopback by default. When a token is
// configured, /api/ and /debug/ require "Authorization: Bearer <token>";
// /metrics, /healthz and /readyz stay open for scrapers and supervisors.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
)

// LogConfig is the `log:` section.
type LogConfig struct {
	Level  string `yaml:"level"`  // debug | info (default) | warn | error
	Format string `yaml:"format"` // text (default) | json
}

// SetDefaults fills zero values.
func (c *LogConfig) SetDefaults() {
	if c.Level == "" {
		c.Level = "info"
	}
	if c.Format == "" {
		c.Format = "text"
	}
}

// Validate checks the section.
func (c LogConfig) Validate() error {
	var errs []error
	if _, err := ParseLevel(c.Level); err != nil {
		errs = append(errs, fmt.Errorf("level: %w", err))
	}
	if c.Format != "text" && c.Format != "json" {
		errs = append(errs, fmt.Errorf("format: must be text or json, not %q", c.Format))
	}
	return errors.Join(errs...)
}

// ParseLevel parses a level name.
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info", "":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("unknown level %q (want debug, info, warn or error)", s)
}

// Logs owns the process logger. Its level and format can change while
// loggers derived from it (With) are in use.
type Logs struct {
	w     io.Writer
	level slog.LevelVar
	h     atomic.Pointer[slog.Handler]
}

// NewLogs returns a logger writing to w per cfg.
func NewLogs(w io.Writer, cfg LogConfig) *Logs {
	l := &Logs{w: w}
	l.Apply(cfg)
	return l
}

// Apply changes level and format.
func (l *Logs) Apply(cfg LogConfig) {
	lv, err := ParseLevel(cfg.Level)
	if err == nil {
		l.level.Set(lv)
	}
	opts := &slog.HandlerOptions{Level: &l.level}
	var h slog.Handler
	if cfg.Format == "json" {
		h = slog.NewJSONHandler(l.w, opts)
	} else {
		h = slog.NewTextHandler(l.w, opts)
	}
	l.h.Store(&h)
}

// Logger returns the process logger.
func (l *Logs) Logger() *slog.Logger { return slog.New(&switchHandler{l: l}) }

// switchHandler forwards to the current handler, replaying attrs and groups
// added with With/WithGroup.
type switchHandler struct {
	l   *Logs
	ops []func(slog.Handler) slog.Handler
}

func (s *switchHandler) current() slog.Handler {
	h := *s.l.h.Load()
	for _, op := range s.ops {
		h = op(h)
	}
	return h
}

func (s *switchHandler) Enabled(ctx context.Context, lv slog.Level) bool {
	return lv >= s.l.level.Level()
}

func (s *switchHandler) Handle(ctx context.Context, r slog.Record) error {
	return s.current().Handle(ctx, r)
}

func (s *switchHandler) WithAttrs(as []slog.Attr) slog.Handler {
	ops := append(append([]func(slog.Handler) slog.Handler(nil), s.ops...), func(h slog.Handler) slog.Handler { return h.WithAttrs(as) })
	return &switchHandler{l: s.l, ops: ops}
}

func (s *switchHandler) WithGroup(name string) slog.Handler {
	ops := append(append([]func(slog.Handler) slog.Handler(nil), s.ops...), func(h slog.Handler) slog.Handler { return h.WithGroup(name) })
	return &switchHandler{l: s.l, ops: ops}
}
