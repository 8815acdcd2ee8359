package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/outpost-edge/outpost/internal/fleet/proto"
	"github.com/outpost-edge/outpost/internal/fleet/store"
)

// PutRollout implements store.Store.
func (s *Store) PutRollout(ctx context.Context, r store.Rollout, expectRV int64, put *proto.Object, doc func(int64) (json.RawMessage, error)) (store.Rollout, error) {
	err := s.write(ctx, func(tx *sql.Tx) (bool, error) {
		var cur int64
		err := tx.QueryRowContext(ctx, `SELECT rv FROM rollouts WHERE name = ?`, r.Name).Scan(&cur)
		exists := err == nil
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return false, err
		}
		switch {
		case expectRV == -1 && exists:
			return false, fmt.Errorf("%w: rollout %s", store.ErrExists, r.Name)
		case expectRV != -1 && !exists:
			return false, fmt.Errorf("%w: rollout %s", store.ErrNotFound, r.Name)
		case expectRV != -1 && cur != expectRV:
			return false, fmt.Errorf("%w: rollout %s is at resourceVersion %d, not %d", store.ErrConflict, r.Name, cur, expectRV)
		}
		// The rollout's event first: a reader of the change log that stops
		// between the two events has the rollout (read as committed, with
		// its hold) and still the old object, never the new object alone.
		if r.ResourceVersion, err = appendEvent(ctx, tx, store.KindRollout, r.Name, r.Slot, false); err != nil {
			return false, err
		}
		var objRV int64
		if put != nil {
			o, err := putObjectTx(ctx, tx, *put, put.ResourceVersion)
			if err != nil {
				return false, err
			}
			objRV = o.ResourceVersion
		}
		if r.Doc, err = doc(objRV); err != nil {
			return false, err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO rollouts (name, kind, object_id, slot, doc, rv) VALUES (?, ?, ?, ?, ?, ?)
			ON CONFLICT(name) DO UPDATE SET doc = excluded.doc, rv = excluded.rv`, r.Name, r.Kind, r.ObjectID, r.Slot, string(r.Doc), r.ResourceVersion)
		return true, err
	})
	return r, err
}

const rolloutCols = `name, kind, object_id, slot, doc, rv`

func scanRollout(sc interface{ Scan(...any) error }) (store.Rollout, error) {
	var r store.Rollout
	var doc string
	err := sc.Scan(&r.Name, &r.Kind, &r.ObjectID, &r.Slot, &doc, &r.ResourceVersion)
	r.Doc = json.RawMessage(doc)
	return r, err
}

// GetRollout implements store.Store.
func (s *Store) GetRollout(ctx context.Context, name string) (store.Rollout, error) {
	r, err := scanRollout(s.db.QueryRowContext(ctx, `SELECT `+rolloutCols+` FROM rollouts WHERE name = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return r, fmt.Errorf("%w: rollout %s", store.ErrNotFound, name)
	}
	return r, err
}

// ListRollouts implements store.Store.
func (s *Store) ListRollouts(ctx context.Context) ([]store.Rollout, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+rolloutCols+` FROM rollouts ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.Rollout
	for rows.Next() {
		r, err := scanRollout(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// GetObjectRevision implements store.Store.
func (s *Store) GetObjectRevision(ctx context.Context, kind, id string, rv int64) (proto.Object, error) {
	o := proto.Object{Kind: kind, ID: id, ResourceVersion: rv}
	var target, spec string
	var deleted bool
	err := s.db.QueryRowContext(ctx, `SELECT name, target, spec, deleted FROM object_revisions WHERE kind = ? AND id = ? AND rv = ?`, kind, id, rv).
		Scan(&o.Name, &target, &spec, &deleted)
	if errors.Is(err, sql.ErrNoRows) || err == nil && deleted {
		return o, fmt.Errorf("%w: %s/%s at resourceVersion %d", store.ErrNotFound, kind, id, rv)
	}
	if err != nil {
		return o, err
	}
	_ = json.Unmarshal([]byte(target), &o.Target)
	o.Spec = json.RawMessage(spec)
	return o, nil
}

// TryLock implements store.Store: on SQLite one process owns the
// database, so the lock is in-process.
func (s *Store) TryLock(_ context.Context, key int64) (func(), bool, error) {
	m, _ := s.locks.LoadOrStore(key, &sync.Mutex{})
	mu := m.(*sync.Mutex)
	if !mu.TryLock() {
		return nil, false, nil
	}
	return mu.Unlock, true, nil
}
