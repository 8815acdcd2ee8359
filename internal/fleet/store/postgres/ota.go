package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outpost-edge/outpost/internal/fleet/store"
)

// The hosted OTA repository (internal/fleet/server/ota.go) lives in the
// database in PostgreSQL mode, so that replicas need no shared disk: a file
// is a row of ota_files (name, sha256, size) and its content is stored once
// per sha256 as otaChunk-sized rows of ota_chunks. Reads fetch one chunk at
// a time, so HTTP Range requests of a large target cost what they read.

// otaChunk is the size of one stored piece of content.
const otaChunk = 1 << 20

// PutOTA stores size bytes read from r, whose sha256 (hex) is sum, as the
// file name. An existing file is replaced only when replace is set;
// otherwise the same content again is a no-op (created false) and other
// content is store.ErrExists.
func (s *Store) PutOTA(ctx context.Context, name string, r io.Reader, size int64, sum string, replace bool) (created bool, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// One writer per name at a time (two replicas storing the same
		// file), without holding a lock on an absent row.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('ota:' || $1))`, name); err != nil {
			return err
		}
		var old string
		err := tx.QueryRow(ctx, `SELECT sha256 FROM ota_files WHERE name = $1`, name).Scan(&old)
		switch {
		case err == nil && old == sum:
			created = false
			return nil
		case err == nil && !replace:
			return fmt.Errorf("ota file %s: %w", name, store.ErrExists)
		case err != nil && !errors.Is(err, pgx.ErrNoRows):
			return err
		}
		var have int64
		if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM ota_chunks WHERE sha256 = $1`, sum).Scan(&have); err != nil {
			return err
		}
		if want := (size + otaChunk - 1) / otaChunk; have != want {
			if _, err := tx.Exec(ctx, `DELETE FROM ota_chunks WHERE sha256 = $1`, sum); err != nil {
				return err
			}
			buf := make([]byte, otaChunk)
			for idx, left := 0, size; left > 0; idx++ {
				n := min(left, otaChunk)
				if _, err := io.ReadFull(r, buf[:n]); err != nil {
					return fmt.Errorf("ota file %s: reading the content: %w", name, err)
				}
				if _, err := tx.Exec(ctx, `INSERT INTO ota_chunks (sha256, idx, data) VALUES ($1, $2, $3)`, sum, idx, buf[:n]); err != nil {
					return err
				}
				left -= n
			}
		}
		if _, err := tx.Exec(ctx, `INSERT INTO ota_files (name, sha256, size, modified) VALUES ($1, $2, $3, $4)
			ON CONFLICT (name) DO UPDATE SET sha256 = EXCLUDED.sha256, size = EXCLUDED.size, modified = EXCLUDED.modified`,
			name, sum, size, time.Now().UnixMilli()); err != nil {
			return err
		}
		if old != "" && old != sum {
			// A replaced file (root.json, timestamp.json): drop its old
			// content unless another file has it.
			if _, err := tx.Exec(ctx, `DELETE FROM ota_chunks WHERE sha256 = $1 AND NOT EXISTS (SELECT 1 FROM ota_files WHERE sha256 = $1)`, old); err != nil {
				return err
			}
		}
		created = true
		return nil
	})
	if err != nil && !errors.Is(err, store.ErrExists) {
		err = fmt.Errorf("postgres: %w", err)
	}
	return created, err
}

// OpenOTA opens the file name for reading (store.ErrNotFound when absent).
// The reader fetches the content chunk by chunk as it is read or seeked.
func (s *Store) OpenOTA(ctx context.Context, name string) (io.ReadSeekCloser, int64, time.Time, error) {
	var sum string
	var size, modified int64
	err := s.pool.QueryRow(ctx, `SELECT sha256, size, modified FROM ota_files WHERE name = $1`, name).Scan(&sum, &size, &modified)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, 0, time.Time{}, fmt.Errorf("ota file %s: %w", name, store.ErrNotFound)
	}
	if err != nil {
		return nil, 0, time.Time{}, fmt.Errorf("postgres: %w", err)
	}
	return &otaReader{ctx: ctx, s: s, sum: sum, size: size, idx: -1}, size, time.UnixMilli(modified), nil
}

// otaReader reads one stored file; it holds no connection between reads.
type otaReader struct {
	ctx  context.Context
	s    *Store
	sum  string
	size int64
	off  int64
	idx  int64  // the chunk in buf, -1 none
	buf  []byte // its content
}

func (r *otaReader) Read(p []byte) (int, error) {
	if r.off >= r.size {
		return 0, io.EOF
	}
	idx := r.off / otaChunk
	if idx != r.idx {
		var data []byte
		if err := r.s.pool.QueryRow(r.ctx, `SELECT data FROM ota_chunks WHERE sha256 = $1 AND idx = $2`, r.sum, idx).Scan(&data); err != nil {
			return 0, fmt.Errorf("postgres: ota chunk %d of %s: %w", idx, r.sum, err)
		}
		r.idx, r.buf = idx, data
	}
	start := r.off - r.idx*otaChunk
	if start >= int64(len(r.buf)) {
		return 0, fmt.Errorf("postgres: ota chunk %d of %s is short", idx, r.sum)
	}
	n := copy(p, r.buf[start:])
	r.off += int64(n)
	return n, nil
}

func (r *otaReader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += r.off
	case io.SeekEnd:
		offset += r.size
	default:
		return 0, errors.New("postgres: ota: bad whence")
	}
	if offset < 0 {
		return 0, errors.New("postgres: ota: negative position")
	}
	r.off = offset
	return offset, nil
}

func (r *otaReader) Close() error { r.buf = nil; return nil }
