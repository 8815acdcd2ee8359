package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/proto"
	"github.com/outpost-edge/outpost/internal/fleet/store"
	"github.com/outpost-edge/outpost/internal/fleet/twin"
)

const twinCols = `gateway, device, desired, desired_version, desired_meta, desired_updated, reported, reported_version, reported_meta, reported_updated, rv`

func scanTwin(sc interface{ Scan(...any) error }) (twin.Twin, error) {
	var t twin.Twin
	var desired, dmeta, reported, rmeta string
	var dup, rup int64
	if err := sc.Scan(&t.Gateway, &t.Device, &desired, &t.DesiredVersion, &dmeta, &dup, &reported, &t.ReportedVersion, &rmeta, &rup, &t.ResourceVersion); err != nil {
		return t, err
	}
	t.Desired, t.Reported = json.RawMessage(desired), json.RawMessage(reported)
	_ = json.Unmarshal([]byte(dmeta), &t.Metadata.Desired)
	_ = json.Unmarshal([]byte(rmeta), &t.Metadata.Reported)
	t.Metadata.DesiredUpdated, t.Metadata.ReportedUpdated = fromMS(dup), fromMS(rup)
	return t, nil
}

// GetTwin implements store.Store.
func (s *Store) GetTwin(ctx context.Context, gateway, device string) (twin.Twin, error) {
	t, err := scanTwin(s.db.QueryRowContext(ctx, `SELECT `+twinCols+` FROM twins WHERE gateway = ? AND device = ?`, gateway, device))
	if errors.Is(err, sql.ErrNoRows) {
		return t, fmt.Errorf("%w: twin %s/%s", store.ErrNotFound, gateway, device)
	}
	return t, err
}

// ListTwins implements store.Store.
func (s *Store) ListTwins(ctx context.Context, gateway string) ([]twin.Twin, error) {
	q, args := `SELECT `+twinCols+` FROM twins ORDER BY gateway, device`, []any(nil)
	if gateway != "" {
		q, args = `SELECT `+twinCols+` FROM twins WHERE gateway = ? ORDER BY device`, []any{gateway}
	}
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []twin.Twin
	for rows.Next() {
		t, err := scanTwin(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// PatchTwinDesired implements store.Store.
func (s *Store) PatchTwinDesired(ctx context.Context, gateway, device string, patch json.RawMessage, expect int64, now time.Time) (twin.Twin, error) {
	var t twin.Twin
	err := s.write(ctx, func(tx *sql.Tx) (bool, error) {
		var err error
		t, err = scanTwin(tx.QueryRowContext(ctx, `SELECT `+twinCols+` FROM twins WHERE gateway = ? AND device = ?`, gateway, device))
		if errors.Is(err, sql.ErrNoRows) {
			t = twin.Twin{Gateway: gateway, Device: device, Desired: json.RawMessage("{}"), Reported: json.RawMessage("{}")}
		} else if err != nil {
			return false, err
		}
		if expect >= 0 && t.DesiredVersion != expect {
			return false, fmt.Errorf("%w: twin %s/%s is at desired version %d, not %d", store.ErrConflict, gateway, device, t.DesiredVersion, expect)
		}
		doc, keys, err := twin.Merge(t.Desired, patch)
		if err != nil {
			return false, err
		}
		now = now.UTC().Truncate(time.Millisecond)
		t.Desired, t.DesiredVersion = doc, t.DesiredVersion+1
		t.Metadata.Desired = twin.Stamp(t.Metadata.Desired, patch, keys, now)
		t.Metadata.DesiredUpdated = now
		rv, err := appendEvent(ctx, tx, proto.KindTwin, store.TwinEventID(gateway, device), device, false)
		if err != nil {
			return false, err
		}
		t.ResourceVersion = rv
		_, err = tx.ExecContext(ctx, `INSERT INTO twins (gateway, device, desired, desired_version, desired_meta, desired_updated, rv) VALUES (?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT(gateway, device) DO UPDATE SET desired = excluded.desired, desired_version = excluded.desired_version,
			desired_meta = excluded.desired_meta, desired_updated = excluded.desired_updated, rv = excluded.rv`,
			gateway, device, string(doc), t.DesiredVersion, mustJSON(t.Metadata.Desired), ms(now), rv)
		return true, err
	})
	if err != nil {
		return twin.Twin{}, err
	}
	return t, nil
}

// ApplyTwinReported implements store.Store. The SQLite store is the only
// writer of its database file (one server process), so it keeps the
// reported side of every twin it has written or read in memory (under the
// writer lock): a batch costs no read, only multi-row upserts, 100 twins
// per statement. The cache changes only after the commit.
func (s *Store) ApplyTwinReported(ctx context.Context, ups []twin.Reported) (int, error) {
	if len(ups) == 0 {
		return 0, nil
	}
	keys, groups := store.GroupReported(ups)
	applied := 0
	next := make(map[store.TwinKey]store.ReportedState, len(keys))
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.reported == nil {
		s.reported = map[store.TwinKey]store.ReportedState{}
	}
	err := s.writeLocked(ctx, func(tx *sql.Tx) (bool, error) {
		var sel *sql.Stmt
		for _, k := range keys {
			cur, ok := s.reported[k]
			if !ok {
				if sel == nil {
					var err error
					if sel, err = tx.PrepareContext(ctx, `SELECT reported, reported_version, reported_meta, reported_updated FROM twins WHERE gateway = ? AND device = ?`); err != nil {
						return false, err
					}
					defer sel.Close()
				}
				var rep, meta string
				var up int64
				err := sel.QueryRowContext(ctx, k.Gateway, k.Device).Scan(&rep, &cur.Version, &meta, &up)
				switch {
				case errors.Is(err, sql.ErrNoRows):
				case err != nil:
					return false, err
				default:
					cur.Reported = json.RawMessage(rep)
					if meta != "{}" {
						_ = json.Unmarshal([]byte(meta), &cur.Meta)
					}
					cur.Updated = fromMS(up)
				}
			} else {
				cur.Meta = maps.Clone(cur.Meta) // FoldReported writes into it
			}
			nx, n, err := store.FoldReported(cur, groups[k])
			if err != nil {
				return false, err
			}
			if n == 0 {
				continue
			}
			applied += n
			next[k] = nx
		}
		const perStmt = 100
		rows := make([]store.TwinKey, 0, len(next))
		for _, k := range keys {
			if _, ok := next[k]; ok {
				rows = append(rows, k)
			}
		}
		for len(rows) > 0 {
			n := min(len(rows), perStmt)
			if n < perStmt && n > 8 {
				n = 8 // statements for 100, 8 and 1 rows are prepared once
			} else if n < 8 {
				n = 1
			}
			stmt, err := s.upsertStmt(ctx, n)
			if err != nil {
				return false, err
			}
			args := make([]any, 0, 6*n)
			for _, k := range rows[:n] {
				nx := next[k]
				args = append(args, k.Gateway, k.Device, string(nx.Reported), nx.Version, twin.MetaJSON(nx.Meta), ms(nx.Updated))
			}
			if _, err := tx.StmtContext(ctx, stmt).ExecContext(ctx, args...); err != nil {
				return false, err
			}
			rows = rows[n:]
		}
		return false, nil
	})
	if err != nil {
		return 0, fmt.Errorf("sqlite: twins: %w", err)
	}
	for k, nx := range next {
		s.reported[k] = nx
	}
	return applied, nil
}

// upsertStmt returns the prepared upsert of n reported rows (wmu held).
func (s *Store) upsertStmt(ctx context.Context, n int) (*sql.Stmt, error) {
	if st := s.upsert[n]; st != nil {
		return st, nil
	}
	var q strings.Builder
	q.WriteString(`INSERT INTO twins (gateway, device, reported, reported_version, reported_meta, reported_updated) VALUES `)
	for i := range n {
		if i > 0 {
			q.WriteString(",")
		}
		q.WriteString("(?,?,?,?,?,?)")
	}
	q.WriteString(` ON CONFLICT(gateway, device) DO UPDATE SET reported = excluded.reported, reported_version = excluded.reported_version,
		reported_meta = excluded.reported_meta, reported_updated = excluded.reported_updated`)
	st, err := s.db.PrepareContext(ctx, q.String())
	if err != nil {
		return nil, err
	}
	if s.upsert == nil {
		s.upsert = map[int]*sql.Stmt{}
	}
	s.upsert[n] = st
	return st, nil
}

// DeleteTwin implements store.Store.
func (s *Store) DeleteTwin(ctx context.Context, gateway, device string) (int64, error) {
	var rv int64
	err := s.write(ctx, func(tx *sql.Tx) (bool, error) {
		res, err := tx.ExecContext(ctx, `DELETE FROM twins WHERE gateway = ? AND device = ?`, gateway, device)
		if err != nil {
			return false, err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return false, fmt.Errorf("%w: twin %s/%s", store.ErrNotFound, gateway, device)
		}
		delete(s.reported, store.TwinKey{Gateway: gateway, Device: device}) // under wmu; reloaded if the commit fails
		rv, err = appendEvent(ctx, tx, proto.KindTwin, store.TwinEventID(gateway, device), device, true)
		return true, err
	})
	return rv, err
}
