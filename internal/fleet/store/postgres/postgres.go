// Package postgres is the scale-out fleet store: N stateless outpost-server
// replicas share one PostgreSQL database (pgx). Every write that logs a
// change takes the next resourceVersion from a one-row counter (its row
// lock serialises writers, so resourceVersions commit in order and a watcher
// reading "after N" never skips a late commit) and sends NOTIFY in the same
// transaction; each replica LISTENs and wakes its watch streams, so a change
// made through one replica reaches gateways connected to any other.
// Schema migrations are versioned and applied on start under an advisory
// lock (replicas starting together migrate once).
package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outpost-edge/outpost/internal/fleet/proto"
	"github.com/outpost-edge/outpost/internal/fleet/store"
)

// channel is the NOTIFY channel.
const channel = "outpost_fleet"

// migrationLock is the advisory lock key held while migrating.
const migrationLock int64 = 0x6f7574706f7374 // "outpost"

var migrations = []string{
	`CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
	CREATE TABLE rv_counter (one INT PRIMARY KEY CHECK (one = 1), rv BIGINT NOT NULL);
	INSERT INTO rv_counter VALUES (1, 0);
	CREATE TABLE api_tokens (id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, role TEXT NOT NULL, name TEXT NOT NULL, created BIGINT NOT NULL);
	CREATE TABLE bootstrap_tokens (id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, labels TEXT NOT NULL, expires BIGINT NOT NULL,
		used BIGINT, used_by TEXT NOT NULL DEFAULT '', created BIGINT NOT NULL);
	CREATE TABLE gateways (id TEXT PRIMARY KEY, labels TEXT NOT NULL, facts TEXT NOT NULL DEFAULT '{}', cert_serial TEXT NOT NULL,
		cert_expiry BIGINT NOT NULL, enrolled BIGINT NOT NULL, last_seen BIGINT NOT NULL DEFAULT 0, revoked BOOLEAN NOT NULL DEFAULT FALSE,
		status TEXT NOT NULL DEFAULT '{}');
	CREATE TABLE objects (kind TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL, target TEXT NOT NULL, labels TEXT NOT NULL,
		spec TEXT NOT NULL, rv BIGINT NOT NULL, updated BIGINT NOT NULL, PRIMARY KEY (kind, id));
	CREATE TABLE object_revisions (kind TEXT NOT NULL, id TEXT NOT NULL, rv BIGINT NOT NULL, name TEXT NOT NULL, target TEXT NOT NULL,
		spec TEXT NOT NULL, deleted BOOLEAN NOT NULL DEFAULT FALSE, PRIMARY KEY (kind, id, rv));
	CREATE TABLE events (rv BIGINT PRIMARY KEY, kind TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL DEFAULT '', deleted BOOLEAN NOT NULL DEFAULT FALSE);`,
	// 2: rollouts (issue 13).
	`CREATE TABLE rollouts (name TEXT PRIMARY KEY, kind TEXT NOT NULL, object_id TEXT NOT NULL, slot TEXT NOT NULL, doc TEXT NOT NULL, rv BIGINT NOT NULL);`,
	// 3: device twins (issue 12 item 6). Times are Unix ms; *_meta are
	// JSON objects key -> Unix ms of the key's last write.
	`CREATE TABLE twins (gateway TEXT NOT NULL, device TEXT NOT NULL,
		desired TEXT NOT NULL DEFAULT '{}', desired_version BIGINT NOT NULL DEFAULT 0, desired_meta TEXT NOT NULL DEFAULT '{}', desired_updated BIGINT NOT NULL DEFAULT 0,
		reported TEXT NOT NULL DEFAULT '{}', reported_version BIGINT NOT NULL DEFAULT 0, reported_meta TEXT NOT NULL DEFAULT '{}', reported_updated BIGINT NOT NULL DEFAULT 0,
		rv BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (gateway, device));`,
	// 4: the hosted OTA repository's files (ota.go), so that every
	// replica serves what was published through any of them.
	`CREATE TABLE ota_files (name TEXT PRIMARY KEY, sha256 TEXT NOT NULL, size BIGINT NOT NULL, modified BIGINT NOT NULL);
	CREATE TABLE ota_chunks (sha256 TEXT NOT NULL, idx INT NOT NULL, data BYTEA NOT NULL, PRIMARY KEY (sha256, idx));`,
}

// Store is the PostgreSQL store.
type Store struct {
	store.Notifier
	pool   *pgxpool.Pool
	log    *slog.Logger
	cancel context.CancelFunc
	done   chan struct{}
}

var _ store.Store = (*Store)(nil)

// Open connects (a postgres:// URL), migrates and starts listening.
func Open(ctx context.Context, url string, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	s := &Store{pool: pool, log: log, done: make(chan struct{})}
	if err := s.migrate(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	lctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	ready := make(chan error, 1)
	go s.listen(lctx, ready)
	if err := <-ready; err != nil {
		cancel()
		pool.Close()
		return nil, err
	}
	return s, nil
}

// SchemaVersion is the number of migrations this build knows.
func SchemaVersion() int { return len(migrations) }

func (s *Store) migrate(ctx context.Context) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, migrationLock); err != nil {
		return fmt.Errorf("postgres: migrate: %w", err)
	}
	defer conn.Exec(context.Background(), `SELECT pg_advisory_unlock($1)`, migrationLock)
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INT PRIMARY KEY, applied BIGINT NOT NULL)`); err != nil {
		return fmt.Errorf("postgres: migrate: %w", err)
	}
	var cur int
	if err := conn.QueryRow(ctx, `SELECT COALESCE(MAX(version),0) FROM schema_migrations`).Scan(&cur); err != nil {
		return fmt.Errorf("postgres: migrate: %w", err)
	}
	if cur > len(migrations) {
		return fmt.Errorf("postgres: the database has schema version %d, this build knows %d: run a newer outpost-server", cur, len(migrations))
	}
	for v := cur + 1; v <= len(migrations); v++ {
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, migrations[v-1]); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version, applied) VALUES ($1, $2)`, v, time.Now().Unix())
			return err
		})
		if err != nil {
			return fmt.Errorf("postgres: migration %d: %w", v, err)
		}
	}
	return nil
}

// listen holds one connection with LISTEN and broadcasts every
// notification; it reconnects (and broadcasts, since notifications may have
// been missed) until ctx ends.
func (s *Store) listen(ctx context.Context, ready chan<- error) {
	defer close(s.done)
	first := true
	for ctx.Err() == nil {
		conn, err := s.pool.Acquire(ctx)
		if err == nil {
			_, err = conn.Exec(ctx, "LISTEN "+channel)
		}
		if first {
			ready <- err
			first = false
			if err != nil {
				if conn != nil {
					conn.Release()
				}
				return
			}
		}
		if err == nil {
			s.Broadcast() // anything missed while not listening
			for {
				_, err = conn.Conn().WaitForNotification(ctx)
				if err != nil {
					break
				}
				s.Broadcast()
			}
			conn.Hijack().Close(context.Background()) // a LISTENing connection must not return to the pool
		}
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("postgres: LISTEN connection lost; reconnecting", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// Close stops listening and closes the pool.
func (s *Store) Close() error {
	s.cancel()
	<-s.done
	s.pool.Close()
	return nil
}

func (s *Store) write(ctx context.Context, fn func(tx pgx.Tx) (changed bool, err error)) error {
	changed := false
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		changed, err = fn(tx)
		if err == nil && changed {
			_, err = tx.Exec(ctx, "SELECT pg_notify($1, '')", channel)
		}
		return err
	})
	if err != nil {
		return err
	}
	if changed {
		s.Broadcast()
	}
	return nil
}

func appendEvent(ctx context.Context, tx pgx.Tx, kind, id, name string, deleted bool) (int64, error) {
	var rv int64
	if err := tx.QueryRow(ctx, `UPDATE rv_counter SET rv = rv + 1 WHERE one = 1 RETURNING rv`).Scan(&rv); err != nil {
		return 0, fmt.Errorf("postgres: rv: %w", err)
	}
	_, err := tx.Exec(ctx, `INSERT INTO events (rv, kind, id, name, deleted) VALUES ($1, $2, $3, $4, $5)`, rv, kind, id, name, deleted)
	return rv, err
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

func isUnique(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

// GetMeta implements store.Store.
func (s *Store) GetMeta(ctx context.Context, key string) (string, error) {
	var v string
	err := s.pool.QueryRow(ctx, `SELECT value FROM meta WHERE key = $1`, key).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", fmt.Errorf("%w: meta %s", store.ErrNotFound, key)
	}
	return v, err
}

// PutMetaIfAbsent implements store.Store.
func (s *Store) PutMetaIfAbsent(ctx context.Context, key, value string) (string, error) {
	if _, err := s.pool.Exec(ctx, `INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING`, key, value); err != nil {
		return "", fmt.Errorf("postgres: meta %s: %w", key, err)
	}
	return s.GetMeta(ctx, key)
}

// PutMeta implements store.Store.
func (s *Store) PutMeta(ctx context.Context, key, value string) error {
	if _, err := s.pool.Exec(ctx, `INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value`, key, value); err != nil {
		return fmt.Errorf("postgres: meta %s: %w", key, err)
	}
	return nil
}

// DeleteMeta implements store.Store.
func (s *Store) DeleteMeta(ctx context.Context, key string) error {
	tag, err := s.pool.Exec(ctx, `DELETE FROM meta WHERE key = $1`, key)
	if err != nil {
		return fmt.Errorf("postgres: meta %s: %w", key, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%w: meta %s", store.ErrNotFound, key)
	}
	return nil
}

// ListMeta implements store.Store.
func (s *Store) ListMeta(ctx context.Context, prefix string) (map[string]string, error) {
	rows, err := s.pool.Query(ctx, `SELECT key, value FROM meta WHERE left(key, $1) = $2`, len(prefix), prefix)
	if err != nil {
		return nil, fmt.Errorf("postgres: meta: %w", err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			return nil, fmt.Errorf("postgres: meta: %w", err)
		}
		out[k] = v
	}
	return out, rows.Err()
}

// CreateAPIToken implements store.Store.
func (s *Store) CreateAPIToken(ctx context.Context, t store.APIToken) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO api_tokens (id, hash, role, name, created) VALUES ($1, $2, $3, $4, $5)`, t.ID, t.Hash, t.Role, t.Name, ms(t.Created))
	return err
}

// APITokenByHash implements store.Store.
func (s *Store) APITokenByHash(ctx context.Context, hash string) (store.APIToken, error) {
	var t store.APIToken
	var created int64
	err := s.pool.QueryRow(ctx, `SELECT id, hash, role, name, created FROM api_tokens WHERE hash = $1`, hash).Scan(&t.ID, &t.Hash, &t.Role, &t.Name, &created)
	if errors.Is(err, pgx.ErrNoRows) {
		return t, store.ErrNotFound
	}
	t.Created = fromMS(created)
	return t, err
}

// CountAPITokens implements store.Store.
func (s *Store) CountAPITokens(ctx context.Context) (int, error) {
	var n int
	err := s.pool.QueryRow(ctx, `SELECT COUNT(*) FROM api_tokens`).Scan(&n)
	return n, err
}

// CreateBootstrapToken implements store.Store.
func (s *Store) CreateBootstrapToken(ctx context.Context, t store.BootstrapToken) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO bootstrap_tokens (id, hash, labels, expires, created) VALUES ($1, $2, $3, $4, $5)`,
		t.ID, t.Hash, mustJSON(t.Labels), ms(t.Expires), ms(t.Created))
	return err
}

const tokenCols = `id, hash, labels, expires, used, used_by, created`

func scanToken(row pgx.Row) (store.BootstrapToken, error) {
	var t store.BootstrapToken
	var labels string
	var expires, created int64
	var used *int64
	if err := row.Scan(&t.ID, &t.Hash, &labels, &expires, &used, &t.UsedBy, &created); err != nil {
		return t, err
	}
	_ = json.Unmarshal([]byte(labels), &t.Labels)
	t.Expires, t.Created = fromMS(expires), fromMS(created)
	if used != nil {
		u := fromMS(*used)
		t.Used = &u
	}
	return t, nil
}

// ConsumeBootstrapToken implements store.Store.
func (s *Store) ConsumeBootstrapToken(ctx context.Context, hash, gatewayID string, now time.Time) (store.BootstrapToken, error) {
	var t store.BootstrapToken
	err := s.write(ctx, func(tx pgx.Tx) (bool, error) {
		var err error
		t, err = scanToken(tx.QueryRow(ctx, `SELECT `+tokenCols+` FROM bootstrap_tokens WHERE hash = $1 FOR UPDATE`, hash))
		if errors.Is(err, pgx.ErrNoRows) {
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
		_, err = tx.Exec(ctx, `UPDATE bootstrap_tokens SET used = $1, used_by = $2 WHERE id = $3`, ms(now), gatewayID, t.ID)
		return false, err
	})
	return t, err
}

// ListBootstrapTokens implements store.Store.
func (s *Store) ListBootstrapTokens(ctx context.Context) ([]store.BootstrapToken, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+tokenCols+` FROM bootstrap_tokens ORDER BY created`)
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

func scanGateway(row pgx.Row) (store.Gateway, error) {
	var g store.Gateway
	var labels, facts, status string
	var expiry, enrolled, seen int64
	if err := row.Scan(&g.ID, &labels, &facts, &g.CertSerial, &expiry, &enrolled, &seen, &g.Revoked, &status); err != nil {
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
	return s.write(ctx, func(tx pgx.Tx) (bool, error) {
		var revoked bool
		err := tx.QueryRow(ctx, `SELECT revoked FROM gateways WHERE id = $1 FOR UPDATE`, g.ID).Scan(&revoked)
		switch {
		case err == nil && !revoked:
			return false, fmt.Errorf("%w: gateway %s", store.ErrExists, g.ID)
		case err == nil:
			if _, err := tx.Exec(ctx, `DELETE FROM gateways WHERE id = $1`, g.ID); err != nil {
				return false, err
			}
		case !errors.Is(err, pgx.ErrNoRows):
			return false, err
		}
		_, err = tx.Exec(ctx, `INSERT INTO gateways (`+gatewayCols+`) VALUES ($1, $2, $3, $4, $5, $6, $7, FALSE, $8)`,
			g.ID, mustJSON(g.Labels), mustJSON(g.Facts), g.CertSerial, ms(g.CertExpiry), ms(g.Enrolled), ms(g.LastSeen), mustJSON(g.Status))
		if isUnique(err) {
			return false, fmt.Errorf("%w: gateway %s", store.ErrExists, g.ID)
		}
		if err != nil {
			return false, err
		}
		_, err = appendEvent(ctx, tx, store.KindGateway, g.ID, "", false)
		return true, err
	})
}

// GetGateway implements store.Store.
func (s *Store) GetGateway(ctx context.Context, id string) (store.Gateway, error) {
	g, err := scanGateway(s.pool.QueryRow(ctx, `SELECT `+gatewayCols+` FROM gateways WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return g, fmt.Errorf("%w: gateway %s", store.ErrNotFound, id)
	}
	return g, err
}

// ListGateways implements store.Store.
func (s *Store) ListGateways(ctx context.Context) ([]store.Gateway, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+gatewayCols+` FROM gateways ORDER BY id`)
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
	err := s.write(ctx, func(tx pgx.Tx) (bool, error) {
		tag, err := tx.Exec(ctx, q, args...)
		if err != nil {
			return false, err
		}
		if tag.RowsAffected() == 0 {
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
	return s.updateGateway(ctx, id, true, `UPDATE gateways SET labels = $1 WHERE id = $2`, mustJSON(labels), id)
}

// SetGatewayStatus implements store.Store.
func (s *Store) SetGatewayStatus(ctx context.Context, id string, st proto.Status, facts map[string]string, seen time.Time) error {
	q := `UPDATE gateways SET status = $1, last_seen = $2 WHERE id = $3`
	args := []any{mustJSON(st), ms(seen), id}
	if facts != nil {
		q = `UPDATE gateways SET status = $1, last_seen = $2, facts = $4 WHERE id = $3`
		args = append(args, mustJSON(facts))
	}
	_, err := s.updateGateway(ctx, id, false, q, args...)
	return err
}

// TouchGateway implements store.Store.
func (s *Store) TouchGateway(ctx context.Context, id string, seen time.Time) error {
	_, err := s.updateGateway(ctx, id, false, `UPDATE gateways SET last_seen = $1 WHERE id = $2`, ms(seen), id)
	return err
}

// RevokeGateway implements store.Store.
func (s *Store) RevokeGateway(ctx context.Context, id string) error {
	_, err := s.updateGateway(ctx, id, true, `UPDATE gateways SET revoked = TRUE WHERE id = $1`, id)
	return err
}

// SetGatewayCert implements store.Store.
func (s *Store) SetGatewayCert(ctx context.Context, id, serial string, expiry time.Time) (int64, error) {
	return s.updateGateway(ctx, id, true, `UPDATE gateways SET cert_serial = $1, cert_expiry = $2 WHERE id = $3 AND NOT revoked`, serial, ms(expiry), id)
}

// DeleteGateway implements store.Store.
func (s *Store) DeleteGateway(ctx context.Context, id string) (int64, error) {
	var rv int64
	err := s.write(ctx, func(tx pgx.Tx) (bool, error) {
		tag, err := tx.Exec(ctx, `DELETE FROM gateways WHERE id = $1`, id)
		if err != nil {
			return false, err
		}
		if tag.RowsAffected() == 0 {
			return false, fmt.Errorf("%w: gateway %s", store.ErrNotFound, id)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM twins WHERE gateway = $1`, id); err != nil {
			return false, err
		}
		rv, err = appendEvent(ctx, tx, store.KindGateway, id, "", true)
		return true, err
	})
	return rv, err
}

const objectCols = `kind, id, name, target, labels, spec, rv, updated`

func scanObject(row pgx.Row) (proto.Object, error) {
	var o proto.Object
	var target, labels, spec string
	var updated int64
	if err := row.Scan(&o.Kind, &o.ID, &o.Name, &target, &labels, &spec, &o.ResourceVersion, &updated); err != nil {
		return o, err
	}
	_ = json.Unmarshal([]byte(target), &o.Target)
	_ = json.Unmarshal([]byte(labels), &o.Labels)
	o.Spec = json.RawMessage(spec)
	o.Updated = fromMS(updated)
	return o, nil
}

// checkRV returns the stored object's slot name ("" when it does not exist).
func checkRV(ctx context.Context, tx pgx.Tx, kind, id string, expectRV int64) (string, error) {
	var cur int64
	var name string
	err := tx.QueryRow(ctx, `SELECT rv, name FROM objects WHERE kind = $1 AND id = $2 FOR UPDATE`, kind, id).Scan(&cur, &name)
	exists := err == nil
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
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
	err := s.write(ctx, func(tx pgx.Tx) (bool, error) {
		var err error
		o, err = putObjectTx(ctx, tx, o, expectRV)
		return err == nil, err
	})
	return o, err
}

func putObjectTx(ctx context.Context, tx pgx.Tx, o proto.Object, expectRV int64) (proto.Object, error) {
	old, err := checkRV(ctx, tx, o.Kind, o.ID, expectRV)
	if err != nil {
		return o, err
	}
	if old != "" && old != o.Name {
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
	_, err = tx.Exec(ctx, `INSERT INTO objects (`+objectCols+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
		ON CONFLICT (kind, id) DO UPDATE SET name = excluded.name, target = excluded.target, labels = excluded.labels,
		spec = excluded.spec, rv = excluded.rv, updated = excluded.updated`,
		o.Kind, o.ID, o.Name, mustJSON(o.Target), mustJSON(o.Labels), string(o.Spec), rv, ms(o.Updated))
	if err != nil {
		return o, err
	}
	_, err = tx.Exec(ctx, `INSERT INTO object_revisions (kind, id, rv, name, target, spec) VALUES ($1, $2, $3, $4, $5, $6)`,
		o.Kind, o.ID, rv, o.Name, mustJSON(o.Target), string(o.Spec))
	return o, err
}

// GetObject implements store.Store.
func (s *Store) GetObject(ctx context.Context, kind, id string) (proto.Object, error) {
	o, err := scanObject(s.pool.QueryRow(ctx, `SELECT `+objectCols+` FROM objects WHERE kind = $1 AND id = $2`, kind, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return o, fmt.Errorf("%w: %s/%s", store.ErrNotFound, kind, id)
	}
	return o, err
}

// ListObjects implements store.Store.
func (s *Store) ListObjects(ctx context.Context) ([]proto.Object, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+objectCols+` FROM objects ORDER BY kind, id`)
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
	err := s.write(ctx, func(tx pgx.Tx) (bool, error) {
		name, err := checkRV(ctx, tx, kind, id, expectRV)
		if err != nil {
			return false, err
		}
		if name == "" {
			return false, fmt.Errorf("%w: %s/%s", store.ErrNotFound, kind, id)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM objects WHERE kind = $1 AND id = $2`, kind, id); err != nil {
			return false, err
		}
		rv, err = appendEvent(ctx, tx, kind, id, name, true)
		if err != nil {
			return false, err
		}
		_, err = tx.Exec(ctx, `INSERT INTO object_revisions (kind, id, rv, name, target, spec, deleted) VALUES ($1, $2, $3, '', '{}', 'null', TRUE)`, kind, id, rv)
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
	rows, err := s.pool.Query(ctx, `SELECT rv, kind, id, name, deleted FROM events WHERE rv > $1 ORDER BY rv LIMIT $2`, after, limit)
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
	err := s.pool.QueryRow(ctx, `SELECT rv FROM rv_counter WHERE one = 1`).Scan(&rv)
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
	return strconv.ParseInt(v, 10, 64)
}

// Compact implements store.Store.
func (s *Store) Compact(ctx context.Context, rv int64) error {
	return s.write(ctx, func(tx pgx.Tx) (bool, error) {
		if _, err := tx.Exec(ctx, `DELETE FROM events WHERE rv <= $1`, rv); err != nil {
			return false, err
		}
		_, err := tx.Exec(ctx, `INSERT INTO meta (key, value) VALUES ('compacted_rv', $1) ON CONFLICT (key) DO UPDATE SET value = excluded.value
			WHERE CAST(excluded.value AS BIGINT) > CAST(meta.value AS BIGINT)`, strconv.FormatInt(rv, 10))
		return false, err
	})
}
