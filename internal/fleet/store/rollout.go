package store

import (
	"context"
	"encoding/json"

	"github.com/outpost-edge/outpost/internal/fleet/proto"
)

// KindRollout is Event.Kind for a rollout's change: Event.ID is the
// rollout's name and Event.Name the slot ("kind/name") whose resolution it
// may change, so watch streams resend that slot.
const KindRollout = "rollout"

// Rollout is one stored rollout. The store keeps Doc opaque (the server
// owns its format); ResourceVersion is the global resourceVersion of the
// rollout's last change (optimistic concurrency: two operators, or an
// operator and the orchestrator, cannot both write the same version).
type Rollout struct {
	Name            string          `json:"name"`
	Kind            string          `json:"kind"`     // the rolled-out object's kind
	ObjectID        string          `json:"objectId"` // and id
	Slot            string          `json:"slot"`     // the object's slot "kind/name"
	Doc             json.RawMessage `json:"doc"`
	ResourceVersion int64           `json:"resourceVersion"`
}

// RolloutStore keeps rollouts, object revisions and the singleton lock
// (part of Store).
type RolloutStore interface {
	// PutRollout creates (expectRV -1) or updates (expectRV = the stored
	// resourceVersion) the rollout r.Name and logs a KindRollout event;
	// ErrConflict (nothing written) when the expectation fails, ErrExists
	// when creating a name that exists. When put is not nil, the object is
	// written first in the same transaction (put.ResourceVersion is its
	// expected resourceVersion as in PutObject: 0 = any), so gateways can
	// never see the new revision without the rollout that holds it back.
	// doc makes the rollout's document from the object's new
	// resourceVersion (0 when put is nil); it runs inside the transaction.
	PutRollout(ctx context.Context, r Rollout, expectRV int64, put *proto.Object, doc func(objectRV int64) (json.RawMessage, error)) (Rollout, error)
	GetRollout(ctx context.Context, name string) (Rollout, error)
	ListRollouts(ctx context.Context) ([]Rollout, error)
	// GetObjectRevision returns the object as it was written at rv
	// (ErrNotFound when there is no such revision, or it was a deletion).
	GetObjectRevision(ctx context.Context, kind, id string, rv int64) (proto.Object, error)
	// TryLock takes the cluster-wide singleton lock key if it is free
	// (PostgreSQL: a session advisory lock on a dedicated connection;
	// SQLite: in-process). ok is false when another holder has it. The lock
	// is held until release is called (or the holder's connection dies).
	TryLock(ctx context.Context, key int64) (release func(), ok bool, err error)
}
