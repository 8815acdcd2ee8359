// Package store is the fleet server's persistence contract: API tokens,
// bootstrap tokens, the gateway registry, desired-state objects and the
// change log their resourceVersions come from. Implementations: sqlite (the
// embedded default, one server process); PostgreSQL (N stateless replicas,
// LISTEN/NOTIFY fan-out) is to follow behind the same interface.
//
// Invariants every implementation keeps:
//   - every change to an object or to a gateway's labels appends one Event
//     with the next global resourceVersion, in the same transaction;
//   - resourceVersions are strictly increasing and never reused;
//   - Events after the compaction point are complete: a watcher resuming
//     from rv >= CompactedRV misses nothing;
//   - Notify's channel receives (coalesced) after every committed change.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/outpost-edge/outpost/internal/fleet/proto"
	"github.com/outpost-edge/outpost/internal/fleet/twin"
)

// Sentinel errors.
var (
	ErrNotFound     = errors.New("store: not found")
	ErrExists       = errors.New("store: already exists")
	ErrConflict     = errors.New("store: resourceVersion conflict") // optimistic concurrency
	ErrTokenUsed    = errors.New("store: token already used")
	ErrTokenExpired = errors.New("store: token expired")
	ErrCompacted    = errors.New("store: resourceVersion compacted")
)

// Roles of API tokens, weakest first.
const (
	RoleViewer   = "viewer"
	RoleOperator = "operator"
	RoleAdmin    = "admin"
)

// RoleRank orders roles; unknown roles rank 0.
func RoleRank(r string) int {
	switch r {
	case RoleViewer:
		return 1
	case RoleOperator:
		return 2
	case RoleAdmin:
		return 3
	}
	return 0
}

// APIToken is a bearer token for the admin API (stored as a hash).
type APIToken struct {
	ID      string    `json:"id"`
	Hash    string    `json:"-"`
	Role    string    `json:"role"`
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
}

// BootstrapToken is a single-use enrollment token (stored as a hash).
type BootstrapToken struct {
	ID      string            `json:"id"`
	Hash    string            `json:"-"`
	Labels  map[string]string `json:"labels"`
	Expires time.Time         `json:"expires"`
	Used    *time.Time        `json:"used,omitempty"`
	UsedBy  string            `json:"usedBy,omitempty"`
	Created time.Time         `json:"created"`
}

// Gateway is one registered gateway.
type Gateway struct {
	ID         string            `json:"id"`
	Labels     map[string]string `json:"labels"`
	Facts      map[string]string `json:"facts,omitempty"`
	CertSerial string            `json:"certSerial"`
	CertExpiry time.Time         `json:"certExpiry"`
	Enrolled   time.Time         `json:"enrolled"`
	LastSeen   time.Time         `json:"lastSeen"`
	Revoked    bool              `json:"revoked"`
	// Status is the last report: applied resourceVersion and conditions.
	Status proto.Status `json:"status"`
	// Connected is filled by the server (live watch streams), not stored.
	Connected bool `json:"connected"`
}

// Event is one entry of the change log.
type Event struct {
	RV      int64
	Kind    string // object kind, or "gateway" for a label change
	ID      string // object id or gateway id
	Name    string // the object's slot name (objects only)
	Deleted bool   // the object left the slot Name, or the gateway was deleted
}

// KindGateway is Event.Kind for a gateway's label change or deletion.
const KindGateway = "gateway"

// TwinEventID is Event.ID of a twin's desired change (Event.Kind is
// proto.KindTwin, Event.Name the device): "gateway/device".
func TwinEventID(gateway, device string) string { return gateway + "/" + device }

// Store is the persistence contract (see the package doc for invariants).
type Store interface {
	// Meta is a small key/value table (the fleet CA lives there, so every
	// replica shares it).
	GetMeta(ctx context.Context, key string) (string, error)
	// PutMetaIfAbsent stores value unless key exists; it returns what is
	// stored afterwards (first writer wins between replicas).
	PutMetaIfAbsent(ctx context.Context, key, value string) (string, error)
	// PutMeta stores value under key, replacing what is there.
	PutMeta(ctx context.Context, key, value string) error
	// DeleteMeta removes key (ErrNotFound when it is absent).
	DeleteMeta(ctx context.Context, key string) error
	// ListMeta returns every key starting with prefix and its value (the
	// dashboard's users live under "user/").
	ListMeta(ctx context.Context, prefix string) (map[string]string, error)

	CreateAPIToken(ctx context.Context, t APIToken) error
	APITokenByHash(ctx context.Context, hash string) (APIToken, error)
	CountAPITokens(ctx context.Context) (int, error)

	CreateBootstrapToken(ctx context.Context, t BootstrapToken) error
	// ConsumeBootstrapToken marks the token used by gatewayID, atomically:
	// ErrNotFound, ErrTokenUsed or ErrTokenExpired (then nothing changes).
	ConsumeBootstrapToken(ctx context.Context, hash, gatewayID string, now time.Time) (BootstrapToken, error)
	ListBootstrapTokens(ctx context.Context) ([]BootstrapToken, error)

	// CreateGateway registers g (ErrExists when the id is taken by a gateway
	// that is not revoked; a revoked one is replaced).
	CreateGateway(ctx context.Context, g Gateway) error
	GetGateway(ctx context.Context, id string) (Gateway, error)
	ListGateways(ctx context.Context) ([]Gateway, error)
	// SetGatewayLabels replaces the labels and logs a gateway Event.
	SetGatewayLabels(ctx context.Context, id string, labels map[string]string) (int64, error)
	SetGatewayStatus(ctx context.Context, id string, st proto.Status, facts map[string]string, seen time.Time) error
	TouchGateway(ctx context.Context, id string, seen time.Time) error
	RevokeGateway(ctx context.Context, id string) error
	// SetGatewayCert records a renewed certificate (serial, expiry) and
	// logs a gateway Event so every replica accepts the new certificate
	// and refuses the old one. ErrNotFound for an unknown gateway; a
	// revoked gateway is not changed (ErrNotFound too).
	SetGatewayCert(ctx context.Context, id, serial string, expiry time.Time) (int64, error)
	DeleteGateway(ctx context.Context, id string) (int64, error)

	// PutObject creates or replaces an object. expectRV > 0 requires the
	// stored object's resourceVersion to equal it (ErrConflict otherwise);
	// -1 requires that the object does not exist. It returns the object with
	// its new resourceVersion.
	PutObject(ctx context.Context, o proto.Object, expectRV int64) (proto.Object, error)
	GetObject(ctx context.Context, kind, id string) (proto.Object, error)
	ListObjects(ctx context.Context) ([]proto.Object, error)
	DeleteObject(ctx context.Context, kind, id string, expectRV int64) (int64, error)

	// Events returns up to limit events with RV > after, oldest first;
	// ErrCompacted when after < CompactedRV.
	Events(ctx context.Context, after int64, limit int) ([]Event, error)
	CurrentRV(ctx context.Context) (int64, error)
	CompactedRV(ctx context.Context) (int64, error)
	// Compact drops events with RV <= rv.
	Compact(ctx context.Context, rv int64) error

	// GetTwin returns one device twin (ErrNotFound when none).
	GetTwin(ctx context.Context, gateway, device string) (twin.Twin, error)
	// ListTwins returns the twins of gateway ("" = every gateway), ordered
	// by gateway and device.
	ListTwins(ctx context.Context, gateway string) ([]twin.Twin, error)
	// PatchTwinDesired merges patch (RFC 7386) into the desired state,
	// creating the twin; expect >= 0 requires the stored desired version to
	// equal it (ErrConflict otherwise; 0 = no desired state yet). It bumps
	// the desired version and logs a proto.KindTwin Event.
	PatchTwinDesired(ctx context.Context, gateway, device string, patch json.RawMessage, expect int64, now time.Time) (twin.Twin, error)
	// ApplyTwinReported applies reported updates in one transaction (group
	// commit). An update whose Version is not newer than the stored
	// reported version is skipped (a replay); the answer counts the
	// applied ones. Reported updates do not log Events (they do not change
	// any gateway's desired state).
	ApplyTwinReported(ctx context.Context, ups []twin.Reported) (applied int, err error)
	// DeleteTwin deletes one twin (ErrNotFound when none) and logs a
	// deleted proto.KindTwin Event, so the gateway drops its copy. A
	// reported update arriving later creates the twin again.
	DeleteTwin(ctx context.Context, gateway, device string) (rv int64, err error)

	// Notify returns a channel that receives after each committed change
	// (coalesced; capacity 1) and a function to stop receiving.
	Notify() (<-chan struct{}, func())
	Close() error

	RolloutStore
}
