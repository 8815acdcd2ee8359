package queue

import (
	"errors"
	"fmt"
	"time"

	"github.com/outpost-edge/outpost/internal/config"
)

// Fsync policies (Config.Fsync).
const (
	// FsyncAlways: Append returns after the record is written and fsynced
	// (group commit: concurrent appends share one fsync). Survives power cuts.
	FsyncAlways = "always"
	// FsyncInterval: Append returns after the record is written to the OS
	// (survives a crash of the process); fsync runs every FsyncInterval, so
	// a power cut loses at most that window.
	FsyncInterval = "interval"
	// FsyncNever: like interval, but the queue fsyncs only on Close and
	// segment roll; the OS decides when data reaches the disk.
	FsyncNever = "never"
)

// Overflow policies (Config.OnFull).
const (
	// DropOldest deletes the oldest segment (whole segments; every unacked
	// record in it is counted as dropped with reason max_bytes) to make room.
	DropOldest = "drop_oldest"
	// RejectNew makes Append return ErrFull until the consumer frees space.
	RejectNew = "reject_new"
)

// Config is the YAML configuration of one queue. Zero values mean the
// documented defaults (SetDefaults fills them).
type Config struct {
	// Dir holds the segment files. Required.
	Dir string `yaml:"dir"`
	// SegmentSize is the size at which a segment file is sealed and a new
	// one started. Default 16MiB, or max_bytes/8 if that is smaller (min 64KiB).
	SegmentSize config.Size `yaml:"segment_size"`
	// Fsync is always (default), interval or never.
	Fsync string `yaml:"fsync"`
	// FsyncInterval is the fsync period for fsync: interval. Default 10ms.
	FsyncInterval config.Duration `yaml:"fsync_interval"`
	// MaxBytes bounds the disk space of the segment files. Default 1GiB.
	MaxBytes config.Size `yaml:"max_bytes"`
	// MaxAge expires records older than this (0 = never, the default).
	MaxAge config.Duration `yaml:"max_age"`
	// OnFull is drop_oldest or reject_new (default).
	OnFull string `yaml:"on_full"`
}

// Defaults.
const (
	DefaultSegmentSize   = 16 << 20
	DefaultMaxBytes      = 1 << 30
	DefaultFsyncInterval = 10 * time.Millisecond
	minSegmentSize       = 64 << 10
)

// SetDefaults fills zero fields with their defaults.
func (c *Config) SetDefaults() {
	if c.Fsync == "" {
		c.Fsync = FsyncAlways
	}
	if c.FsyncInterval == 0 {
		c.FsyncInterval = config.Duration(DefaultFsyncInterval)
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = DefaultMaxBytes
	}
	if c.OnFull == "" {
		c.OnFull = RejectNew
	}
	if c.SegmentSize == 0 {
		c.SegmentSize = DefaultSegmentSize
		if s := c.MaxBytes / 8; s < c.SegmentSize {
			c.SegmentSize = max(s, minSegmentSize)
		}
	}
}

// Validate reports every problem, each prefixed with its YAML field name.
func (c Config) Validate() error {
	var errs []error
	bad := func(field string, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %w", field, fmt.Errorf(format, args...)))
	}
	if c.Dir == "" {
		bad("dir", "required")
	}
	switch c.Fsync {
	case FsyncAlways, FsyncInterval, FsyncNever:
	default:
		bad("fsync", "%q is not one of always, interval, never", c.Fsync)
	}
	if c.Fsync == FsyncInterval && c.FsyncInterval <= 0 {
		bad("fsync_interval", "must be positive")
	}
	switch c.OnFull {
	case DropOldest, RejectNew:
	default:
		bad("on_full", "%q is not one of drop_oldest, reject_new", c.OnFull)
	}
	if c.SegmentSize < minSegmentSize {
		bad("segment_size", "%s is below the minimum 64KiB", c.SegmentSize)
	}
	if c.SegmentSize > 1<<30 {
		bad("segment_size", "%s is above the maximum 1GiB", c.SegmentSize)
	}
	if c.MaxBytes < 0 {
		bad("max_bytes", "must not be negative")
	} else if c.MaxBytes > 0 && c.MaxBytes < 4*c.SegmentSize {
		bad("max_bytes", "%s must be at least 4 × segment_size (%s)", c.MaxBytes, c.SegmentSize)
	}
	if c.MaxAge < 0 {
		bad("max_age", "must not be negative")
	}
	return errors.Join(errs...)
}
