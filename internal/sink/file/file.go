// Package file is the JSON-lines file sink: every message becomes one line
//
//	{"ts":"2026-11-26T10:00:00.123Z","topic":"factory/l1/t1","qos":1,"client_id":"dev-1","device_id":"t1","payload":{"temp":21.5}}
//
// The payload is embedded as JSON when it is valid JSON, otherwise as a string
// when it is valid UTF-8, otherwise base64 in "payload_b64". Files rotate by
// size: path, path.1, ... path.N (oldest), keeping MaxFiles rotated files.
//
// Lines are buffered and written at least every FlushInterval and on Close; a
// line is therefore not crash-safe the moment Deliver returns (the sink is not
// Durable). Use the durable uplink queue for data that must survive a crash.
package file

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/outpost-edge/outpost/internal/config"
	"github.com/outpost-edge/outpost/internal/message"
)

// Config configures a file sink.
type Config struct {
	Path          string          `yaml:"path"`
	MaxSize       config.Size     `yaml:"max_size"`       // rotate beyond this; default 64MiB
	MaxFiles      int             `yaml:"max_files"`      // rotated files kept; default 5
	FlushInterval config.Duration `yaml:"flush_interval"` // default 1s
	// Fsync makes each flush fsync the file (default false).
	Fsync bool `yaml:"fsync"`
}

// SetDefaults fills zero values.
func (c *Config) SetDefaults() {
	if c.MaxSize == 0 {
		c.MaxSize = 64 << 20
	}
	if c.MaxFiles == 0 {
		c.MaxFiles = 5
	}
	if c.FlushInterval == 0 {
		c.FlushInterval = config.Duration(time.Second)
	}
}

// Validate checks the config.
func (c Config) Validate() error {
	var errs []error
	if c.Path == "" {
		errs = append(errs, config.Field("path", "a file sink needs a path"))
	}
	if c.MaxSize < 1024 {
		errs = append(errs, config.Field("max_size", "must be at least 1KiB"))
	}
	if c.MaxFiles < 1 || c.MaxFiles > 1000 {
		errs = append(errs, config.Field("max_files", "must be between 1 and 1000"))
	}
	if c.FlushInterval.D() < time.Millisecond {
		errs = append(errs, config.Field("flush_interval", "must be at least 1ms"))
	}
	return errors.Join(errs...)
}

// Sink writes JSON lines to a rotating file.
type Sink struct {
	name string
	cfg  Config

	mu     sync.Mutex
	f      *os.File
	w      *bufio.Writer
	size   int64
	line   []byte
	closed bool
	stop   chan struct{}
	done   chan struct{}
}

var _ message.Sink = (*Sink)(nil)

// ErrClosed is returned by Deliver after Close.
var ErrClosed = errors.New("file sink: closed")

// Open creates the directory if needed, opens path for appending and starts
// the periodic flusher.
func Open(name string, cfg Config) (*Sink, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("file sink %s: %w", name, err)
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Path), 0o750); err != nil {
		return nil, fmt.Errorf("file sink %s: %w", name, err)
	}
	s := &Sink{name: name, cfg: cfg, stop: make(chan struct{}), done: make(chan struct{})}
	if err := s.open(); err != nil {
		return nil, err
	}
	go s.flusher()
	return s, nil
}

func (s *Sink) open() error {
	f, err := os.OpenFile(s.cfg.Path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("file sink %s: %w", s.name, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("file sink %s: %w", s.name, err)
	}
	s.f, s.size = f, st.Size()
	s.w = bufio.NewWriterSize(f, 64<<10)
	return nil
}

// Name implements message.Sink.
func (s *Sink) Name() string { return s.name }

// Deliver appends one line.
func (s *Sink) Deliver(_ context.Context, m *message.Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	s.line = AppendLine(s.line[:0], m)
	if s.size+int64(len(s.line)) > int64(s.cfg.MaxSize) && s.size > 0 {
		if err := s.rotate(); err != nil {
			return err
		}
	}
	n, err := s.w.Write(s.line)
	s.size += int64(n)
	if err != nil {
		return fmt.Errorf("file sink %s: write %s: %w", s.name, s.cfg.Path, err)
	}
	return nil
}

// AppendLine appends the JSON line for m (with trailing newline) to dst.
func AppendLine(dst []byte, m *message.Message) []byte {
	ts := m.Received
	if ts.IsZero() {
		ts = time.Now()
	}
	dst = append(dst, `{"ts":"`...)
	dst = ts.UTC().AppendFormat(dst, "2006-01-02T15:04:05.000000Z07:00")
	dst = append(dst, `","topic":`...)
	dst = strconv.AppendQuote(dst, m.Topic)
	dst = append(dst, `,"qos":`...)
	dst = strconv.AppendInt(dst, int64(m.QoS), 10)
	if m.ClientID != "" {
		dst = append(dst, `,"client_id":`...)
		dst = strconv.AppendQuote(dst, m.ClientID)
	}
	if m.DeviceID != "" {
		dst = append(dst, `,"device_id":`...)
		dst = strconv.AppendQuote(dst, m.DeviceID)
	}
	switch {
	case len(m.Payload) > 0 && json.Valid(m.Payload):
		dst = append(dst, `,"payload":`...)
		dst = appendCompact(dst, m.Payload)
	case utf8.Valid(m.Payload):
		dst = append(dst, `,"payload":`...)
		b, _ := json.Marshal(string(m.Payload))
		dst = append(dst, b...)
	default:
		dst = append(dst, `,"payload_b64":"`...)
		dst = base64.StdEncoding.AppendEncode(dst, m.Payload)
		dst = append(dst, '"')
	}
	return append(dst, "}\n"...)
}

// appendCompact appends valid JSON without newlines (one record per line).
func appendCompact(dst, src []byte) []byte {
	for _, c := range src {
		if c == '\n' || c == '\r' {
			buf := bytes.NewBuffer(dst)
			_ = json.Compact(buf, src)
			return buf.Bytes()
		}
	}
	return append(dst, src...)
}

// rotate shifts path.N-1 -> path.N ... path -> path.1 and reopens path.
func (s *Sink) rotate() error {
	if err := s.w.Flush(); err != nil {
		return fmt.Errorf("file sink %s: flush: %w", s.name, err)
	}
	if s.cfg.Fsync {
		_ = s.f.Sync()
	}
	s.f.Close()
	p := s.cfg.Path
	os.Remove(fmt.Sprintf("%s.%d", p, s.cfg.MaxFiles))
	for i := s.cfg.MaxFiles - 1; i >= 1; i-- {
		os.Rename(fmt.Sprintf("%s.%d", p, i), fmt.Sprintf("%s.%d", p, i+1))
	}
	if err := os.Rename(p, p+".1"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("file sink %s: rotate: %w", s.name, err)
	}
	return s.open()
}

func (s *Sink) flusher() {
	defer close(s.done)
	t := time.NewTicker(s.cfg.FlushInterval.D())
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.Flush()
		}
	}
}

// Flush writes buffered lines to the file (and fsyncs if configured).
func (s *Sink) Flush() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.w.Buffered() == 0 {
		return nil
	}
	if err := s.w.Flush(); err != nil {
		return fmt.Errorf("file sink %s: flush: %w", s.name, err)
	}
	if s.cfg.Fsync {
		return s.f.Sync()
	}
	return nil
}

// Close flushes and closes the file. It is idempotent.
func (s *Sink) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	err := s.w.Flush()
	if serr := s.f.Sync(); err == nil {
		err = serr
	}
	if cerr := s.f.Close(); err == nil {
		err = cerr
	}
	s.mu.Unlock()
	close(s.stop)
	<-s.done
	return err
}
