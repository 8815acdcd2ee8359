// Package sqlite is the embedded fleet store: one SQLite database file
// (pure Go driver modernc.org/sqlite, WAL mode) in the server's data
// directory. Schema migrations are versioned and applied on Open. Writes are
// serialised by a mutex (SQLite has one writer); reads run in parallel.
package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver

	"github.com/outpost-edge/outpost/internal/fleet/proto"
	"github.com/outpost-edge/outpost/internal/fleet/store"
)

// migrations are applied in order; never edit one that has shipped, append.
var migrations = []string{
	// 1: the initial schema.
	`CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
	CREATE TABLE api_tokens (id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, role TEXT NOT NULL, name TEXT NOT NULL, created INTEGER NOT NULL);
	CREATE TABLE bootstrap_tokens (id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, labels TEXT NOT NULL, expires INTEGER NOT NULL,
		used INTEGER, used_by TEXT NOT NULL DEFAULT '', created INTEGER NOT NULL);
	CREATE TABLE gateways (id TEXT PRIMARY KEY, labels TEXT NOT NULL, facts TEXT NOT NULL DEFAULT '{}', cert_serial TEXT NOT NULL,
		cert_expiry INTEGER NOT NULL, enrolled INTEGER NOT NULL, last_seen INTEGER NOT NULL DEFAULT 0, revoked INTEGER NOT NULL DEFAULT 0,
		status TEXT NOT NULL DEFAULT '{}');
	CREATE TABLE objects (kind TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL, target TEXT NOT NULL, labels TEXT NOT NULL,
		spec TEXT NOT NULL, rv INTEGER NOT NULL, updated INTEGER NOT NULL, PRIMARY KEY (kind, id));
	-- Every revision of every object, kept for rollouts (a wave pins a
	-- gateway to a revision) and rollback.
	CREATE TABLE object_revisions (kind TEXT NOT NULL, id TEXT NOT NULL, rv INTEGER NOT NULL, name TEXT NOT NULL, target TEXT NOT NULL,
		spec TEXT NOT NULL, deleted INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (kind, id, rv));
	CREATE TABLE events (rv INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL DEFAULT '', deleted INTEGER NOT NULL DEFAULT 0);`,
	// 2: rollouts (issue 13).
	`CREATE TABLE rollouts (name TEXT PRIMARY KEY, kind TEXT NOT NULL, object_id TEXT NOT NULL, slot TEXT NOT NULL, doc TEXT NOT NULL, rv INTEGER NOT NULL);`,
	// 3: device twins (issue 12 item 6). Times are Unix ms; *_meta are
	// JSON objects key -> Unix ms of the key's last write.
	`CREATE TABLE twins (gateway TEXT NOT NULL, device TEXT NOT NULL,
		desired TEXT NOT NULL DEFAULT '{}', desired_version INTEGER NOT NULL DEFAULT 0, desired_meta TEXT NOT NULL DEFAULT '{}', desired_updated INTEGER NOT NULL DEFAULT 0,
		reported TEXT NOT NULL DEFAULT '{}', reported_version INTEGER NOT NULL DEFAULT 0, reported_meta TEXT NOT NULL DEFAULT '{}', reported_updated INTEGER NOT NULL DEFAULT 0,
		rv INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (gateway, device)) WITHOUT ROWID;`,
}

// Store is the SQLite store.
type Store struct {
	store.Notifier
	db  *sql.DB
	wmu sync.Mutex // one writer
	// locks are the singleton locks (TryLock): in-process, since one
	// server process owns a SQLite database.
	locks sync.Map // int64 -> *sync.Mutex
	// reported caches the reported side of twins (under wmu; see
	// ApplyTwinReported).
	reported map[store.TwinKey]store.ReportedState
	upsert   map[int]*sql.Stmt // n rows -> prepared multi-row upsert (under wmu)
}

var _ store.Store = (*Store)(nil)

// Open opens (creating) DIR/fleet.db and migrates it.
func Open(ctx context.Context, dir string) (*Store, error) {
	path := filepath.Join(dir, "fleet.db")
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(10000)&_pragma=synchronous(NORMAL)&_pragma=foreign_keys(1)&_pragma=wal_autocheckpoint(10000)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	db.SetMaxOpenConns(8)
	s := &Store{db: db}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// SchemaVersion is the number of migrations this build knows.
func SchemaVersion() int { return len(migrations) }

func (s *Store) migrate(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("sqlite: migrate: %w", err)
	}
	var cur int
	if err := s.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version),0) FROM schema_migrations`).Scan(&cur); err != nil {
		return fmt.Errorf("sqlite: migrate: %w", err)
	}
	if cur > len(migrations) {
		return fmt.Errorf("sqlite: the database has schema version %d, this build knows %d: run a newer outpost-server", cur, len(migrations))
	}
	for v := cur + 1; v <= len(migrations); v++ {
		tx, err := s.db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, migrations[v-1]); err != nil {
			tx.Rollback()
			return fmt.Errorf("sqlite: migration %d: %w", v, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied) VALUES (?, ?)`, v, time.Now().Unix()); err != nil {
			tx.Rollback()
			return fmt.Errorf("sqlite: migration %d: %w", v, err)
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("sqlite: migration %d: %w", v, err)
		}
	}
	return nil
}

// Close closes the database.
func (s *Store) Close() error {
	s.wmu.Lock()
	for _, st := range s.upsert {
		st.Close()
	}
	s.upsert = nil
	s.wmu.Unlock()
	return s.db.Close()
}

// write runs fn in a transaction under the writer lock and broadcasts on
// commit when changed is set by fn.
func (s *Store) write(ctx context.Context, fn func(tx *sql.Tx) (changed bool, err error)) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.writeLocked(ctx, fn)
}

// writeLocked is write with wmu held.
func (s *Store) writeLocked(ctx context.Context, fn func(tx *sql.Tx) (changed bool, err error)) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("sqlite: begin: %w", err)
	}
	changed, err := fn(tx)
	if err != nil {
		tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("sqlite: commit: %w", err)
	}
	if changed {
		s.Broadcast()
	}
	return nil
}

func appendEvent(ctx context.Context, tx *sql.Tx, kind, id, name string, deleted bool) (int64, error) {
	res, err := tx.ExecContext(ctx, `INSERT INTO events (kind, id, name, deleted) VALUES (?, ?, ?, ?)`, kind, id, name, deleted)
	if err != nil {
		return 0, fmt.Errorf("sqlite: event: %w", err)
	}
	return res.LastInsertId()
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func ms(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func fromMS(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.UnixMilli(v).UTC()
}

// GetMeta implements store.Store.
func (s *Store) GetMeta(ctx context.Context, key string) (string, error) {
	var v string
	err := s.db.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = ?`, key).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("%w: meta %s", store.ErrNotFound, key)
	}
	return v, err
}

// PutMetaIfAbsent implements store.Store.
func (s *Store) PutMetaIfAbsent(ctx context.Context, key, value string) (string, error) {
	err := s.write(ctx, func(tx *sql.Tx) (bool, error) {
		_, err := tx.ExecContext(ctx, `INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING`, key, value)
		return false, err
	})
	if err != nil {
		return "", fmt.Errorf("sqlite: meta %s: %w", key, err)
	}
	return s.GetMeta(ctx, key)
}

// PutMeta implements store.Store.
func (s *Store) PutMeta(ctx context.Context, key, value string) error {
	err := s.write(ctx, func(tx *sql.Tx) (bool, error) {
		_, err := tx.ExecContext(ctx, `INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value`, key, value)
		return false, err
	})
	if err != nil {
		return fmt.Errorf("sqlite: meta %s: %w", key, err)
	}
	return nil
}

// DeleteMeta implements store.Store.
func (s *Store) DeleteMeta(ctx context.Context, key string) error {
	return s.write(ctx, func(tx *sql.Tx) (bool, error) {
		res, err := tx.ExecContext(ctx, `DELETE FROM meta WHERE key = ?`, key)
		if err != nil {
			return false, fmt.Errorf("sqlite: meta %s: %w", key, err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return false, fmt.Errorf("%w: meta %s", store.ErrNotFound, key)
		}
		return false, nil
	})
}

// ListMeta implements store.Store.
func (s *Store) ListMeta(ctx context.Context, prefix string) (map[string]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT key, value FROM meta WHERE substr(key, 1, ?) = ?`, len(prefix), prefix)
	if err != nil {
		return nil, fmt.Errorf("sqlite: meta: %w", err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			return nil, fmt.Errorf("sqlite: meta: %w", err)
		}
		out[k] = v
	}
	return out, rows.Err()
}

// CreateAPIToken implements store.Store.
func (s *Store) CreateAPIToken(ctx context.Context, t store.APIToken) error {
	return s.write(ctx, func(tx *sql.Tx) (bool, error) {
		_, err := tx.ExecContext(ctx, `INSERT INTO api_tokens (id, hash, role, name, created) VALUES (?, ?, ?, ?, ?)`, t.ID, t.Hash, t.Role, t.Name, ms(t.Created))
		return false, err
	})
}

// APITokenByHash implements store.Store.
func (s *Store) APITokenByHash(ctx context.Context, hash string) (store.APIToken, error) {
	var t store.APIToken
	var created int64
	err := s.db.QueryRowContext(ctx, `SELECT id, hash, role, name, created FROM api_tokens WHERE hash = ?`, hash).Scan(&t.ID, &t.Hash, &t.Role, &t.Name, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return t, store.ErrNotFound
	}
	t.Created = fromMS(created)
	return t, err
}

// CountAPITokens implements store.Store.
func (s *Store) CountAPITokens(ctx context.Context) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM api_tokens`).Scan(&n)
	return n, err
}

// CreateBootstrapToken implements store.Store.
func (s *Store) CreateBootstrapToken(ctx context.Context, t store.BootstrapToken) error {
	return s.write(ctx, func(tx *sql.Tx) (bool, error) {
		_, err := tx.ExecContext(ctx, `INSERT INTO bootstrap_tokens (id, hash, labels, expires, created) VALUES (?, ?, ?, ?, ?)`,
			t.ID, t.Hash, mustJSON(t.Labels), ms(t.Expires), ms(t.Created))
		return false, err
	})
}

const tokenCols = `id, hash, labels, expires, used, used_by, created`

func scanToken(sc interface{ Scan(...any) error }) (store.BootstrapToken, error) {
	var t store.BootstrapToken
	var labels string
	var expires, created int64
	var used sql.NullInt64
	if err := sc.Scan(&t.ID, &t.Hash, &labels, &expires, &used, &t.UsedBy, &created); err != nil {
		return t, err
	}
	_ = json.Unmarshal([]byte(labels), &t.Labels)
	t.Expires, t.Created = fromMS(expires), fromMS(created)
	if used.Valid {
		u := fromMS(used.Int64)
		t.Used = &u
	}
	return t, nil
}

// ConsumeBootstrapToken implements store.Store.
func (s *Store) ConsumeBootstrapToken(ctx context.Context, hash, gatewayID string, now time.Time) (store.BootstrapToken, error) {
	var t store.BootstrapToken
	err := s.write(ctx, func(tx *sql.Tx) (bool, error) {
		var err error
		t, err = scanToken(tx.QueryRowContext(ctx, `SELECT `+tokenCols+` FROM bootstrap_tokens WHERE hash = ?`, hash))
		if errors.Is(err, sql.ErrNoRows) {
			return false, store.ErrNotFound
		}
		if err != nil {
			return false, err
		}
		if t.Used != nil {
			return false, store.ErrTokenUsed
		}
		if !now.Before(t.Expires) {
			return false, store.ErrTokenExpired
		}
		_, err = tx.ExecContext(ctx, `UPDATE bootstrap_tokens SET used = ?, used_by = ? WHERE id = ? AND used IS NULL`, ms(now), gatewayID, t.ID)
		return false, err
	})
	return t, err
}

// ListBootstrapTokens implements store.Store.
func (s *Store) ListBootstrapTokens(ctx context.Context) ([]store.BootstrapToken, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+tokenCols+` FROM bootstrap_tokens ORDER BY created`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.BootstrapToken
	for rows.Next() {
		t, err := scanToken(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

const gatewayCols = `id, labels, facts, cert_serial, cert_expiry, enrolled, last_seen, revoked, status`

func scanGateway(sc interface{ Scan(...any) error }) (store.Gateway, error) {
	var g store.Gateway
	var labels, facts, status string
	var expiry, enrolled, seen int64
	if err := sc.Scan(&g.ID, &labels, &facts, &g.CertSerial, &expiry, &enrolled, &seen, &g.Revoked, &status); err != nil {
		return g, err
	}
	_ = json.Unmarshal([]byte(labels), &g.Labels)
	_ = json.Unmarshal([]byte(facts), &g.Facts)
	_ = json.Unmarshal([]byte(status), &g.Status)
	if g.Labels == nil {
		g.Labels = map[string]string{}
	}
	g.CertExpiry, g.Enrolled, g.LastSeen = fromMS(expiry), fromMS(enrolled), fromMS(seen)
	return g, nil
}

// CreateGateway implements store.Store.
func (s *Store) CreateGateway(ctx context.Context, g store.Gateway) error {
	return s.write(ctx, func(tx *sql.Tx) (bool, error) {
		var revoked bool
		err := tx.QueryRowContext(ctx, `SELECT revoked FROM gateways WHERE id = ?`, g.ID).Scan(&revoked)
		switch {
		case err == nil && !revoked:
			return false, fmt.Errorf("%w: gateway %s", store.ErrExists, g.ID)
		case err == nil:
			if _, err := tx.ExecContext(ctx, `DELETE FROM gateways WHERE id = ?`, g.ID); err != nil {
				return false, err
			}
		case !errors.Is(err, sql.ErrNoRows):
			return false, err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO gateways (`+gatewayCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)`,
			g.ID, mustJSON(g.Labels), mustJSON(g.Facts), g.CertSerial, ms(g.CertExpiry), ms(g.Enrolled), ms(g.LastSeen), mustJSON(g.Status))
		if err != nil {
			return false, err
		}
		_, err = appendEvent(ctx, tx, store.KindGateway, g.ID, "", false)
		return true, err
	})
}

// GetGateway implements store.Store.
func (s *Store) GetGateway(ctx context.Context, id string) (store.Gateway, error) {
	g, err := scanGateway(s.db.QueryRowContext(ctx, `SELECT `+gatewayCols+` FROM gateways WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return g, fmt.Errorf("%w: gateway %s", store.ErrNotFound, id)
	}
	return g, err
}

// ListGateways implements store.Store.
func (s *Store) ListGateways(ctx context.Context) ([]store.Gateway, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+gatewayCols+` FROM gateways ORDER BY id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.Gateway
	for rows.Next() {
		g, err := scanGateway(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	return out, rows.Err()
}

func (s *Store) updateGateway(ctx context.Context, id string, event bool, q string, args ...any) (int64, error) {
	var rv int64
	err := s.write(ctx, func(tx *sql.Tx) (bool, error) {
		res, err := tx.ExecContext(ctx, q, args...)
		if err != nil {
			return false, err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return false, fmt.Errorf("%w: gateway %s", store.ErrNotFound, id)
		}
		if !event {
			return false, nil
		}
		rv, err = appendEvent(ctx, tx, store.KindGateway, id, "", false)
		return true, err
	})
	return rv, err
}

// SetGatewayLabels implements store.Store.
func (s *Store) SetGatewayLabels(ctx context.Context, id string, labels map[string]string) (int64, error) {
	return s.updateGateway(ctx, id, true, `UPDATE gateways SET labels = ? WHERE id = ?`, mustJSON(labels), id)
}

// SetGatewayStatus implements store.Store.
func (s *Store) SetGatewayStatus(ctx context.Context, id string, st proto.Status, facts map[string]string, seen time.Time) error {
	_, err := s.updateGateway(ctx, id, false, `UPDATE gateways SET status = ?, facts = CASE WHEN ? = 'null' THEN facts ELSE ? END, last_seen = ? WHERE id = ?`,
		mustJSON(st), mustJSON(facts), mustJSON(facts), ms(seen), id)
	return err
}

// TouchGateway implements store.Store.
func (s *Store) TouchGateway(ctx context.Context, id string, seen time.Time) error {
	_, err := s.updateGateway(ctx, id, false, `UPDATE gateways SET last_seen = ? WHERE id = ?`, ms(seen), id)
	return err
}

// RevokeGateway implements store.Store. It logs a gateway event so every
// replica's watch streams of that gateway close.
func (s *Store) RevokeGateway(ctx context.Context, id string) error {
	_, err := s.updateGateway(ctx, id, true, `UPDATE gateways SET revoked = 1 WHERE id = ?`, id)
	return err
}

// SetGatewayCert implements store.Store.
func (s *Store) SetGatewayCert(ctx context.Context, id, serial string, expiry time.Time) (int64, error) {
	return s.updateGateway(ctx, id, true, `UPDATE gateways SET cert_serial = ?, cert_expiry = ? WHERE id = ? AND revoked = 0`, serial, ms(expiry), id)
}

// DeleteGateway implements store.Store.
func (s *Store) DeleteGateway(ctx context.Context, id string) (int64, error) {
	var rv int64
	err := s.write(ctx, func(tx *sql.Tx) (bool, error) {
		res, err := tx.ExecContext(ctx, `DELETE FROM gateways WHERE id = ?`, id)
		if err != nil {
			return false, err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return false, fmt.Errorf("%w: gateway %s", store.ErrNotFound, id)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM twins WHERE gateway = ?`, id); err != nil {
			return false, err
		}
		for k := range s.reported { // under wmu
			if k.Gateway == id {
				delete(s.reported, k)
			}
		}
		rv, err = appendEvent(ctx, tx, store.KindGateway, id, "", true)
		return true, err
	})
	return rv, err
}

const objectCols = `kind, id, name, target, labels, spec, rv, updated`

func scanObject(sc interface{ Scan(...any) error }) (proto.Object, error) {
	var o proto.Object
	var target, labels, spec string
	var updated int64
	if err := sc.Scan(&o.Kind, &o.ID, &o.Name, &target, &labels, &spec, &o.ResourceVersion, &updated); err != nil {
		return o, err
	}
	_ = json.Unmarshal([]byte(target), &o.Target)
	_ = json.Unmarshal([]byte(labels), &o.Labels)
	o.Spec = json.RawMessage(spec)
	o.Updated = fromMS(updated)
	return o, nil
}

// checkRV returns the stored object's slot name ("" when it does not exist).
func checkRV(ctx context.Context, tx *sql.Tx, kind, id string, expectRV int64) (string, error) {
	var cur int64
	var name string
	err := tx.QueryRowContext(ctx, `SELECT rv, name FROM objects WHERE kind = ? AND id = ?`, kind, id).Scan(&cur, &name)
	exists := err == nil
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return "", err
	}
	switch {
	case expectRV == -1 && exists:
		return name, fmt.Errorf("%w: %s/%s exists (resourceVersion %d)", store.ErrConflict, kind, id, cur)
	case expectRV > 0 && !exists:
		return name, fmt.Errorf("%w: %s/%s does not exist", store.ErrConflict, kind, id)
	case expectRV > 0 && cur != expectRV:
		return name, fmt.Errorf("%w: %s/%s is at resourceVersion %d, not %d", store.ErrConflict, kind, id, cur, expectRV)
	}
	return name, nil
}

// PutObject implements store.Store.
func (s *Store) PutObject(ctx context.Context, o proto.Object, expectRV int64) (proto.Object, error) {
	err := s.write(ctx, func(tx *sql.Tx) (bool, error) {
		var err error
		o, err = putObjectTx(ctx, tx, o, expectRV)
		return err == nil, err
	})
	return o, err
}

func putObjectTx(ctx context.Context, tx *sql.Tx, o proto.Object, expectRV int64) (proto.Object, error) {
	old, err := checkRV(ctx, tx, o.Kind, o.ID, expectRV)
	if err != nil {
		return o, err
	}
	if old != "" && old != o.Name {
		// The object leaves its old slot: log that slot too.
		if _, err := appendEvent(ctx, tx, o.Kind, o.ID, old, true); err != nil {
			return o, err
		}
	}
	rv, err := appendEvent(ctx, tx, o.Kind, o.ID, o.Name, false)
	if err != nil {
		return o, err
	}
	o.ResourceVersion = rv
	o.Updated = time.Now().UTC().Truncate(time.Millisecond)
	_, err = tx.ExecContext(ctx, `INSERT INTO objects (`+objectCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT(kind, id) DO UPDATE SET name = excluded.name, target = excluded.target, labels = excluded.labels,
		spec = excluded.spec, rv = excluded.rv, updated = excluded.updated`,
		o.Kind, o.ID, o.Name, mustJSON(o.Target), mustJSON(o.Labels), string(o.Spec), rv, ms(o.Updated))
	if err != nil {
		return o, err
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO object_revisions (kind, id, rv, name, target, spec) VALUES (?, ?, ?, ?, ?, ?)`,
		o.Kind, o.ID, rv, o.Name, mustJSON(o.Target), string(o.Spec))
	return o, err
}

// GetObject implements store.Store.
func (s *Store) GetObject(ctx context.Context, kind, id string) (proto.Object, error) {
	o, err := scanObject(s.db.QueryRowContext(ctx, `SELECT `+objectCols+` FROM objects WHERE kind = ? AND id = ?`, kind, id))
	if errors.Is(err, sql.ErrNoRows) {
		return o, fmt.Errorf("%w: %s/%s", store.ErrNotFound, kind, id)
	}
	return o, err
}

// ListObjects implements store.Store.
func (s *Store) ListObjects(ctx context.Context) ([]proto.Object, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+objectCols+` FROM objects ORDER BY kind, id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []proto.Object
	for rows.Next() {
		o, err := scanObject(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, o)
	}
	return out, rows.Err()
}

// DeleteObject implements store.Store.
func (s *Store) DeleteObject(ctx context.Context, kind, id string, expectRV int64) (int64, error) {
	var rv int64
	err := s.write(ctx, func(tx *sql.Tx) (bool, error) {
		name, err := checkRV(ctx, tx, kind, id, expectRV)
		if err != nil {
			return false, err
		}
		if name == "" {
			return false, fmt.Errorf("%w: %s/%s", store.ErrNotFound, kind, id)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM objects WHERE kind = ? AND id = ?`, kind, id); err != nil {
			return false, err
		}
		rv, err = appendEvent(ctx, tx, kind, id, name, true)
		if err != nil {
			return false, err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO object_revisions (kind, id, rv, name, target, spec, deleted) VALUES (?, ?, ?, '', '{}', 'null', 1)`, kind, id, rv)
		return true, err
	})
	return rv, err
}

// Events implements store.Store.
func (s *Store) Events(ctx context.Context, after int64, limit int) ([]store.Event, error) {
	c, err := s.CompactedRV(ctx)
	if err != nil {
		return nil, err
	}
	if after < c {
		return nil, fmt.Errorf("%w: %d < %d", store.ErrCompacted, after, c)
	}
	rows, err := s.db.QueryContext(ctx, `SELECT rv, kind, id, name, deleted FROM events WHERE rv > ? ORDER BY rv LIMIT ?`, after, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.Event
	for rows.Next() {
		var e store.Event
		if err := rows.Scan(&e.RV, &e.Kind, &e.ID, &e.Name, &e.Deleted); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// CurrentRV implements store.Store.
func (s *Store) CurrentRV(ctx context.Context) (int64, error) {
	var rv int64
	// sqlite_sequence keeps the highest rv even after compaction.
	err := s.db.QueryRowContext(ctx, `SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)`).Scan(&rv)
	return rv, err
}

// CompactedRV implements store.Store.
func (s *Store) CompactedRV(ctx context.Context) (int64, error) {
	v, err := s.GetMeta(ctx, "compacted_rv")
	if errors.Is(err, store.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	var rv int64
	_, err = fmt.Sscan(v, &rv)
	return rv, err
}

// Compact implements store.Store.
func (s *Store) Compact(ctx context.Context, rv int64) error {
	return s.write(ctx, func(tx *sql.Tx) (bool, error) {
		if _, err := tx.ExecContext(ctx, `DELETE FROM events WHERE rv <= ?`, rv); err != nil {
			return false, err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO meta (key, value) VALUES ('compacted_rv', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value
			WHERE CAST(excluded.value AS INTEGER) > CAST(meta.value AS INTEGER)`, fmt.Sprint(rv))
		return false, err
	})
}
