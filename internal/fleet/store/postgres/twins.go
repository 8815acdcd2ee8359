package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outpost-edge/outpost/internal/fleet/proto"
	"github.com/outpost-edge/outpost/internal/fleet/store"
	"github.com/outpost-edge/outpost/internal/fleet/twin"
)

const twinCols = `gateway, device, desired, desired_version, desired_meta, desired_updated, reported, reported_version, reported_meta, reported_updated, rv`

func scanTwin(row pgx.Row) (twin.Twin, error) {
	var t twin.Twin
	var desired, dmeta, reported, rmeta string
	var dup, rup int64
	if err := row.Scan(&t.Gateway, &t.Device, &desired, &t.DesiredVersion, &dmeta, &dup, &reported, &t.ReportedVersion, &rmeta, &rup, &t.ResourceVersion); err != nil {
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
	t, err := scanTwin(s.pool.QueryRow(ctx, `SELECT `+twinCols+` FROM twins WHERE gateway = $1 AND device = $2`, gateway, device))
	if errors.Is(err, pgx.ErrNoRows) {
		return t, fmt.Errorf("%w: twin %s/%s", store.ErrNotFound, gateway, device)
	}
	return t, err
}

// ListTwins implements store.Store.
func (s *Store) ListTwins(ctx context.Context, gateway string) ([]twin.Twin, error) {
	q, args := `SELECT `+twinCols+` FROM twins ORDER BY gateway, device`, []any(nil)
	if gateway != "" {
		q, args = `SELECT `+twinCols+` FROM twins WHERE gateway = $1 ORDER BY device`, []any{gateway}
	}
	rows, err := s.pool.Query(ctx, q, args...)
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

// PatchTwinDesired implements store.Store. The row is created first (ON
// CONFLICT DO NOTHING) so that SELECT ... FOR UPDATE always has a row to
// lock: two replicas patching one twin serialise on it.
func (s *Store) PatchTwinDesired(ctx context.Context, gateway, device string, patch json.RawMessage, expect int64, now time.Time) (twin.Twin, error) {
	var t twin.Twin
	err := s.write(ctx, func(tx pgx.Tx) (bool, error) {
		if _, err := tx.Exec(ctx, `INSERT INTO twins (gateway, device) VALUES ($1, $2) ON CONFLICT DO NOTHING`, gateway, device); err != nil {
			return false, err
		}
		var err error
		t, err = scanTwin(tx.QueryRow(ctx, `SELECT `+twinCols+` FROM twins WHERE gateway = $1 AND device = $2 FOR UPDATE`, gateway, device))
		if err != nil {
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
		_, err = tx.Exec(ctx, `UPDATE twins SET desired = $3, desired_version = $4, desired_meta = $5, desired_updated = $6, rv = $7
			WHERE gateway = $1 AND device = $2`, gateway, device, string(doc), t.DesiredVersion, mustJSON(t.Metadata.Desired), ms(now), rv)
		return true, err
	})
	if err != nil {
		return twin.Twin{}, err
	}
	return t, nil
}

// ApplyTwinReported implements store.Store: one transaction and two round
// trips per batch whatever its size (one SELECT ... FOR UPDATE of every
// twin in the batch, in key order; one INSERT ... SELECT FROM unnest).
func (s *Store) ApplyTwinReported(ctx context.Context, ups []twin.Reported) (int, error) {
	if len(ups) == 0 {
		return 0, nil
	}
	keys, groups := store.GroupReported(ups)
	gws := make([]string, len(keys))
	devs := make([]string, len(keys))
	for i, k := range keys {
		gws[i], devs[i] = k.Gateway, k.Device
	}
	applied := 0
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT t.gateway, t.device, t.reported, t.reported_version, t.reported_meta, t.reported_updated
			FROM twins t JOIN unnest($1::text[], $2::text[]) AS k(gateway, device) ON t.gateway = k.gateway AND t.device = k.device
			ORDER BY t.gateway, t.device FOR UPDATE OF t`, gws, devs)
		if err != nil {
			return err
		}
		cur := make(map[store.TwinKey]store.ReportedState, len(keys))
		for rows.Next() {
			var k store.TwinKey
			var st store.ReportedState
			var rep, meta string
			var up int64
			if err := rows.Scan(&k.Gateway, &k.Device, &rep, &st.Version, &meta, &up); err != nil {
				rows.Close()
				return err
			}
			st.Reported = json.RawMessage(rep)
			if meta != "{}" {
				_ = json.Unmarshal([]byte(meta), &st.Meta)
			}
			st.Updated = fromMS(up)
			cur[k] = st
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		var oGW, oDev, oRep, oMeta []string
		var oVer, oUp []int64
		for _, k := range keys {
			next, n, err := store.FoldReported(cur[k], groups[k])
			if err != nil {
				return err
			}
			if n == 0 {
				continue
			}
			applied += n
			oGW, oDev = append(oGW, k.Gateway), append(oDev, k.Device)
			oRep, oMeta = append(oRep, string(next.Reported)), append(oMeta, twin.MetaJSON(next.Meta))
			oVer, oUp = append(oVer, next.Version), append(oUp, ms(next.Updated))
		}
		if len(oGW) == 0 {
			return nil
		}
		// The WHERE keeps a newer version written by another replica
		// between an absent row's SELECT and this INSERT.
		_, err = tx.Exec(ctx, `INSERT INTO twins (gateway, device, reported, reported_version, reported_meta, reported_updated)
			SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::bigint[])
			ON CONFLICT (gateway, device) DO UPDATE SET reported = excluded.reported, reported_version = excluded.reported_version,
			reported_meta = excluded.reported_meta, reported_updated = excluded.reported_updated
			WHERE twins.reported_version < excluded.reported_version`, oGW, oDev, oRep, oVer, oMeta, oUp)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("postgres: twins: %w", err)
	}
	return applied, nil
}

// DeleteTwin implements store.Store.
func (s *Store) DeleteTwin(ctx context.Context, gateway, device string) (int64, error) {
	var rv int64
	err := s.write(ctx, func(tx pgx.Tx) (bool, error) {
		tag, err := tx.Exec(ctx, `DELETE FROM twins WHERE gateway = $1 AND device = $2`, gateway, device)
		if err != nil {
			return false, err
		}
		if tag.RowsAffected() == 0 {
			return false, fmt.Errorf("%w: twin %s/%s", store.ErrNotFound, gateway, device)
		}
		rv, err = appendEvent(ctx, tx, proto.KindTwin, store.TwinEventID(gateway, device), device, true)
		return true, err
	})
	return rv, err
}
