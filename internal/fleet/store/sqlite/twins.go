package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
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

// ApplyTwinReported implements store.Store: one transaction, one read and
// at most one write per twin of the batch (prepared statements).
func (s *Store) ApplyTwinReported(ctx context.Context, ups []twin.Reported) (int, error) {
	if len(ups) == 0 {
		return 0, nil
	}
	keys, groups := store.GroupReported(ups)
	applied := 0
	err := s.write(ctx, func(tx *sql.Tx) (bool, error) {
		sel, err := tx.PrepareContext(ctx, `SELECT reported, reported_version, reported_meta, reported_updated FROM twins WHERE gateway = ? AND device = ?`)
		if err != nil {
			return false, err
		}
		defer sel.Close()
		put, err := tx.PrepareContext(ctx, `INSERT INTO twins (gateway, device, reported, reported_version, reported_meta, reported_updated) VALUES (?, ?, ?, ?, ?, ?)
			ON CONFLICT(gateway, device) DO UPDATE SET reported = excluded.reported, reported_version = excluded.reported_version,
			reported_meta = excluded.reported_meta, reported_updated = excluded.reported_updated`)
		if err != nil {
			return false, err
		}
		defer put.Close()
		for _, k := range keys {
			var cur store.ReportedState
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
			next, n, err := store.FoldReported(cur, groups[k])
			if err != nil {
				return false, err
			}
			if n == 0 {
				continue
			}
			applied += n
			if _, err := put.ExecContext(ctx, k.Gateway, k.Device, string(next.Reported), next.Version, mustJSON(next.Meta), ms(next.Updated)); err != nil {
				return false, err
			}
		}
		return false, nil
	})
	if err != nil {
		return 0, fmt.Errorf("sqlite: twins: %w", err)
	}
	return applied, nil
}
