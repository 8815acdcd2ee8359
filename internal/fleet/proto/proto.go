// Package proto holds the wire types of the fleet protocol shared by
// outpost-server and the gateway agent: desired-state objects, the per
// gateway desired document, watch events, status reports and enrollment.
//
// The protocol (docs/fleet.md):
//
//   - POST /api/v1/enroll (bootstrap token + CSR) -> client certificate.
//   - GET  /api/v1/agent/desired (mTLS) -> Document: the gateway's resolved
//     desired state at one global resourceVersion (the List).
//   - GET  /api/v1/agent/watch?resourceVersion=N (mTLS) -> one long-lived
//     HTTP/2 response of newline-delimited JSON Events (the Watch): MODIFIED
//     and DELETED per slot, BOOKMARK to advance the resume point and as a
//     keepalive. 410 Gone when N was compacted: List again.
//   - POST /api/v1/agent/status (mTLS) -> the applied resourceVersion and one
//     Condition per object.
//   - POST /api/v1/agent/renew (mTLS) RenewRequest -> EnrollResponse: a new
//     client certificate for a new key, before the current one expires.
//
// Invariants: resourceVersions are global, positive and strictly increasing
// with every change; a slot (Kind, Name) resolves to at most one object per
// gateway; applying the same object twice is a no-op (Hash identifies it).
package proto

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"time"
)

// Kinds of desired-state objects.
const (
	KindRuleSet      = "ruleset"      // spec: {"sql": "CREATE RULE ..."}
	KindConfig       = "config"       // spec: {"yaml": "..."} (a config fragment)
	KindComponent    = "component"    // spec: a component recipe
	KindTwin         = "twin"         // spec: desired device properties
	KindAgentVersion = "agentversion" // spec: {"version": "..."}
	KindFunction     = "function"     // spec: {"function": "anomaly", "version": 2} (a signed TUF target on the server)
	KindNetpol       = "netpol"       // spec: the agent's netpol: section (docs/netpol.md)
)

// Kinds lists every known kind.
var Kinds = []string{KindRuleSet, KindConfig, KindComponent, KindTwin, KindAgentVersion, KindFunction, KindNetpol}

// KnownKind reports whether k is a kind the server accepts.
func KnownKind(k string) bool {
	for _, x := range Kinds {
		if x == k {
			return true
		}
	}
	return false
}

// Target says which gateways an object applies to, and at which layer.
// Layers, lowest first: the fleet default (no selector, no gateway), selector
// groups (higher Priority wins), one gateway. The highest layer that matches a
// gateway wins the slot.
type Target struct {
	Selector string `json:"selector,omitempty"` // label selector ("" with no Gateway = fleet default)
	Priority int    `json:"priority,omitempty"` // among selector groups
	Gateway  string `json:"gateway,omitempty"`  // one gateway (highest layer)
}

// Object is one desired-state object as stored by the server.
type Object struct {
	Kind string `json:"kind"`
	// ID is unique per kind; Name is the slot it fills on a gateway (several
	// objects may fill one slot at different layers). Name defaults to ID.
	ID              string            `json:"id"`
	Name            string            `json:"name"`
	Target          Target            `json:"target"`
	Labels          map[string]string `json:"labels,omitempty"` // the object's own labels (rollouts may select on them)
	Spec            json.RawMessage   `json:"spec"`
	ResourceVersion int64             `json:"resourceVersion"`
	Updated         time.Time         `json:"updated"`
}

// Desired is one resolved slot as a gateway sees it.
type Desired struct {
	Kind            string          `json:"kind"`
	Name            string          `json:"name"`
	ID              string          `json:"id"` // the winning object
	ResourceVersion int64           `json:"resourceVersion"`
	Spec            json.RawMessage `json:"spec"`
}

// Key is the slot key "kind/name".
func (d Desired) Key() string { return d.Kind + "/" + d.Name }

// Hash identifies the content (kind, name, spec), not the version: the agent
// skips applying an object whose hash it already applied. The spec is
// compacted first, so JSON formatting does not change the hash.
func (d Desired) Hash() string {
	h := sha256.New()
	h.Write([]byte(d.Kind + "\x00" + d.Name + "\x00"))
	var buf bytes.Buffer
	if json.Compact(&buf, d.Spec) == nil {
		h.Write(buf.Bytes())
	} else {
		h.Write(d.Spec)
	}
	return hex.EncodeToString(h.Sum(nil)[:12])
}

// Document is a gateway's whole desired state at ResourceVersion.
type Document struct {
	Gateway         string    `json:"gateway"`
	ResourceVersion int64     `json:"resourceVersion"`
	Objects         []Desired `json:"objects"`
}

// Event types on the watch stream.
const (
	EventModified = "MODIFIED" // Object is the slot's new content (added or changed)
	EventDeleted  = "DELETED"  // Object carries Kind and Name only
	EventBookmark = "BOOKMARK" // the events before it are complete up to ResourceVersion: resume from here
	EventError    = "ERROR"    // the stream ends; Code 410 = compacted, list again
)

// Event is one line of the watch stream. Changes come in batches: the
// MODIFIED/DELETED events of one batch, then a BOOKMARK. A client resumes
// from the last BOOKMARK's ResourceVersion (a batch cut off in the middle is
// sent again); keepalive BOOKMARKs come every keepalive period.
type Event struct {
	Type            string   `json:"type"`
	ResourceVersion int64    `json:"rv"`
	Object          *Desired `json:"object,omitempty"`
	Code            int      `json:"code,omitempty"`
	Message         string   `json:"message,omitempty"`
}

// Condition is the result of applying one slot on a gateway.
type Condition struct {
	Kind            string `json:"kind"`
	Name            string `json:"name"`
	ResourceVersion int64  `json:"resourceVersion"`
	Applied         bool   `json:"applied"`
	Error           string `json:"error,omitempty"` // exact error (file:line:col where there is one)
	// State is the live state of what was applied, for kinds that run
	// something: a component's supervisor state (running, healthy,
	// unhealthy, backoff, broken, install_failed...), an agent version's
	// trial result. Reported again whenever it changes, so rollouts can
	// gate on it.
	State string `json:"state,omitempty"`
	// Restarts counts the component's restarts.
	Restarts int `json:"restarts,omitempty"`
	// Reason explains State (the last exit, why it is broken).
	Reason string `json:"reason,omitempty"`
	// Errors counts the run-time errors of what this object runs since it
	// was applied (a rule set: its rules' evaluation and action errors).
	Errors int64 `json:"errors,omitempty"`
	// Queue is the gateway's uplink backlog now (records in every lane,
	// rounded above 100 to two significant digits); QueueStart is the
	// backlog when the object was applied. Rollout gates read the growth.
	Queue      int64 `json:"queue,omitempty"`
	QueueStart int64 `json:"queueStart,omitempty"`
}

// Unhealthy states: a condition in one of them makes the gateway's health
// summary "degraded".
var Unhealthy = map[string]bool{"unhealthy": true, "backoff": true, "broken": true, "install_failed": true, "invalid": true, "failed": true, "rolled_back": true}

// Status is what a gateway reports.
type Status struct {
	AppliedResourceVersion int64             `json:"appliedResourceVersion"`
	Conditions             []Condition       `json:"conditions"`
	Facts                  map[string]string `json:"facts,omitempty"` // arch, version, hostname, uptime, free disk
	Health                 string            `json:"health,omitempty"`
}

// EnrollRequest is POSTed to /api/v1/enroll.
type EnrollRequest struct {
	Token string            `json:"token"`
	ID    string            `json:"id"`  // the gateway's proposed id (its node_id)
	CSR   string            `json:"csr"` // PEM
	Facts map[string]string `json:"facts,omitempty"`
}

// EnrollResponse carries the signed certificate.
type EnrollResponse struct {
	ID          string `json:"id"`
	Certificate string `json:"certificate"` // PEM
	CA          string `json:"ca"`          // PEM
}

// RenewRequest is POSTed to /api/v1/agent/renew (mTLS, the current
// certificate) with a CSR for a new key; the answer is an EnrollResponse.
type RenewRequest struct {
	CSR string `json:"csr"` // PEM
}

// Error is the body of every 4xx/5xx answer.
type Error struct {
	Error string `json:"error"`
}
