// Package twin is the device twin model shared by outpost-server and the
// gateway agent: per device behind a gateway, a desired and a reported
// state (JSON objects), a version for each, per-key update timestamps, and
// the delta (what desired asks for that reported does not show yet).
//
// Who writes what:
//   - desired is written by operators on the server (PATCH with the
//     expected desired version: 409 when stale); the server counts
//     DesiredVersion and streams the change to the gateway.
//   - reported is written by the device on the gateway (MQTT); the gateway
//     counts ReportedVersion, queues the update durably and sends it to the
//     server, which applies an update only when its version is newer than
//     the stored one (so a replay after a crash or reconnect is a no-op).
//
// Both states are changed with JSON merge patches (RFC 7386): keys set to
// null are removed, nested objects are merged. Every parser here takes
// untrusted bytes: bounded in size and nesting depth, errors name the field.
package twin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"time"
)

// Limits on untrusted documents.
const (
	MaxPayload     = 8 << 10 // bytes of one device update or desired patch
	MaxDepth       = 8       // nesting of objects/arrays
	MaxClientToken = 64
	MaxDeviceID    = 128
)

// Sentinel errors.
var (
	// ErrInvalid wraps every parse/validation error of an update.
	ErrInvalid = errors.New("twin: invalid")
	// ErrStale is returned when an update names a version that is not the
	// current one.
	ErrStale = errors.New("twin: stale version")
)

// Twin is one device's twin as the server stores it and the API shows it.
type Twin struct {
	Gateway         string          `json:"gateway"`
	Device          string          `json:"device"`
	Desired         json.RawMessage `json:"desired"`
	Reported        json.RawMessage `json:"reported"`
	DesiredVersion  int64           `json:"desiredVersion"`
	ReportedVersion int64           `json:"reportedVersion"`
	Metadata        Metadata        `json:"metadata"`
	// Delta is filled for API answers: desired keys whose value reported
	// does not show (nil when in sync).
	Delta json.RawMessage `json:"delta,omitempty"`
	// ResourceVersion is the change-log position of the last desired change.
	ResourceVersion int64 `json:"resourceVersion"`
}

// Metadata holds when each top-level key was last written (Unix ms).
type Metadata struct {
	Desired         map[string]int64 `json:"desired"`
	Reported        map[string]int64 `json:"reported"`
	DesiredUpdated  time.Time        `json:"desiredUpdated"`
	ReportedUpdated time.Time        `json:"reportedUpdated"`
}

// Reported is one reported update travelling gateway -> server. Version is
// the gateway's ReportedVersion after this patch.
type Reported struct {
	Gateway string          `json:"gateway,omitempty"` // filled by the server from the client certificate
	Device  string          `json:"device"`
	Patch   json.RawMessage `json:"patch"`
	Version int64           `json:"version"`
	Time    time.Time       `json:"time"` // when the gateway accepted it
}

// Spec is the desired side as it travels on the watch stream (the spec of
// an object of kind "twin" named after the device).
type Spec struct {
	Desired  json.RawMessage  `json:"desired"`
	Version  int64            `json:"version"`
	Metadata map[string]int64 `json:"metadata,omitempty"`
}

// SpecOf is t's desired side for the watch stream.
func SpecOf(t Twin) Spec {
	return Spec{Desired: nonNil(t.Desired), Version: t.DesiredVersion, Metadata: t.Metadata.Desired}
}

func nonNil(b json.RawMessage) json.RawMessage {
	if len(b) == 0 {
		return json.RawMessage("{}")
	}
	return b
}

// Update is a device's update request (MQTT .../update).
type Update struct {
	State struct {
		Reported json.RawMessage `json:"reported"`
		Desired  json.RawMessage `json:"desired"`
	} `json:"state"`
	// ReportedVersion, when set, must equal the current reported version.
	ReportedVersion *int64 `json:"reportedVersion"`
	// DesiredVersion, when set, must equal the current desired version
	// (the device says which desired state it acted on).
	DesiredVersion *int64 `json:"desiredVersion"`
	ClientToken    string `json:"clientToken"`
}

// DesiredPatch is the body of PATCH /api/v1/gateways/{gw}/twins/{device}.
type DesiredPatch struct {
	Desired json.RawMessage `json:"desired"`
	// Version, when set, must equal the stored desired version (0 = the
	// twin has no desired state yet); 409 otherwise.
	Version *int64 `json:"version"`
}

func invalid(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, a...))
}

// decodeStrict decodes one JSON value of at most MaxPayload bytes with no
// unknown fields and nothing after it.
func decodeStrict(b []byte, v any) error {
	if len(b) > MaxPayload {
		return invalid("payload of %d bytes is larger than %d", len(b), MaxPayload)
	}
	if err := checkDepth(b); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			return invalid("malformed JSON at byte %d: %v", se.Offset, se)
		case errors.As(err, &te):
			return invalid("field %s: %s is not allowed here (want %s)", te.Field, te.Value, te.Type)
		case errors.Is(err, io.ErrUnexpectedEOF):
			return invalid("malformed JSON: the payload ends inside a value")
		case errors.Is(err, io.EOF):
			return invalid("empty payload: a JSON object is required")
		}
		return invalid("bad JSON: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return invalid("trailing data after the JSON value")
	}
	return nil
}

// checkDepth refuses documents nested deeper than MaxDepth (outside
// strings).
func checkDepth(b []byte) error {
	depth, inStr, esc := 0, false, false
	for i, c := range b {
		switch {
		case esc:
			esc = false
		case inStr && c == '\\':
			esc = true
		case c == '"':
			inStr = !inStr
		case inStr:
		case c == '{' || c == '[':
			depth++
			if depth > MaxDepth+1 { // +1: the envelope itself
				return invalid("nesting deeper than %d at byte %d", MaxDepth, i)
			}
		case c == '}' || c == ']':
			depth--
		}
	}
	return nil
}

// isObject reports whether b is a JSON object (leading space allowed).
func isObject(b json.RawMessage) bool {
	b = bytes.TrimSpace(b)
	return len(b) > 0 && b[0] == '{'
}

// ParseUpdate parses a device's update payload. Errors wrap ErrInvalid and
// name the field.
func ParseUpdate(b []byte) (Update, error) {
	var u Update
	if err := decodeStrict(b, &u); err != nil {
		return Update{}, err
	}
	if len(u.State.Desired) > 0 && string(bytes.TrimSpace(u.State.Desired)) != "null" {
		return Update{}, invalid("state.desired: devices may not change the desired state (set it on the server)")
	}
	if !isObject(u.State.Reported) {
		return Update{}, invalid("state.reported: must be a JSON object")
	}
	if u.ReportedVersion != nil && *u.ReportedVersion < 0 {
		return Update{}, invalid("reportedVersion: must be >= 0")
	}
	if u.DesiredVersion != nil && *u.DesiredVersion < 0 {
		return Update{}, invalid("desiredVersion: must be >= 0")
	}
	if len(u.ClientToken) > MaxClientToken {
		return Update{}, invalid("clientToken: longer than %d bytes", MaxClientToken)
	}
	// Validate the merge (and compact the patch).
	p, err := compactObject(u.State.Reported)
	if err != nil {
		return Update{}, invalid("state.reported: %v", err)
	}
	u.State.Reported = p
	u.State.Desired = nil
	return u, nil
}

// ParseDesiredPatch parses the server API's desired patch body.
func ParseDesiredPatch(b []byte) (DesiredPatch, error) {
	var p DesiredPatch
	if err := decodeStrict(b, &p); err != nil {
		return DesiredPatch{}, err
	}
	if !isObject(p.Desired) {
		return DesiredPatch{}, invalid("desired: must be a JSON object (a merge patch: null removes a key)")
	}
	if p.Version != nil && *p.Version < 0 {
		return DesiredPatch{}, invalid("version: must be >= 0")
	}
	c, err := compactObject(p.Desired)
	if err != nil {
		return DesiredPatch{}, invalid("desired: %v", err)
	}
	p.Desired = c
	return p, nil
}

func compactObject(b json.RawMessage) (json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// ValidDevice reports whether id is a valid device id: 1-128 letters,
// digits, _ . - (it is one MQTT topic level and a URL path segment).
func ValidDevice(id string) bool {
	if id == "" || len(id) > MaxDeviceID {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c == '_' || c == '-' || c == '.' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return id != "." && id != ".."
}

// MergeStamp is Merge followed by Stamp with the patch parsed once (the
// server's hot path for reported updates). meta is modified in place.
func MergeStamp(doc, patch json.RawMessage, meta map[string]int64, at time.Time) (json.RawMessage, map[string]int64, error) {
	d, err := objectMap(doc)
	if err != nil {
		return nil, meta, fmt.Errorf("twin: document: %w", err)
	}
	p, err := objectMap(patch)
	if err != nil {
		return nil, meta, fmt.Errorf("twin: patch: %w", err)
	}
	if meta == nil {
		meta = make(map[string]int64, len(p))
	}
	ms := at.UnixMilli()
	for k, v := range p {
		if isNull(v) {
			delete(meta, k)
		} else {
			meta[k] = ms
		}
	}
	if err := mergeMap(d, p); err != nil {
		return nil, meta, err
	}
	return joinObject(d), meta, nil
}

// Merge applies the JSON merge patch (RFC 7386) patch to doc, both JSON
// objects (doc may be empty = {}). It returns the new document (compact,
// keys sorted) and the top-level keys the patch touched.
func Merge(doc, patch json.RawMessage) (json.RawMessage, []string, error) {
	d, err := objectMap(doc)
	if err != nil {
		return nil, nil, fmt.Errorf("twin: document: %w", err)
	}
	p, err := objectMap(patch)
	if err != nil {
		return nil, nil, fmt.Errorf("twin: patch: %w", err)
	}
	keys := make([]string, 0, len(p))
	for k := range p {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if err := mergeMap(d, p); err != nil {
		return nil, nil, err
	}
	out, err := json.Marshal(d)
	if err != nil {
		return nil, nil, fmt.Errorf("twin: merge: %w", err)
	}
	return out, keys, nil
}

func objectMap(b json.RawMessage) (map[string]json.RawMessage, error) {
	if len(bytes.TrimSpace(b)) == 0 {
		return map[string]json.RawMessage{}, nil
	}
	if m, err := splitObject(b); err == nil {
		return m, nil
	}
	m := map[string]json.RawMessage{}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	if m == nil { // "null"
		m = map[string]json.RawMessage{}
	}
	return m, nil
}

func isNull(b json.RawMessage) bool { return string(bytes.TrimSpace(b)) == "null" }

func mergeMap(d, p map[string]json.RawMessage) error {
	for k, v := range p {
		switch {
		case isNull(v):
			delete(d, k)
		case isObject(v):
			sub, err := objectMap(d[k])
			if err != nil || !isObject(d[k]) {
				sub = map[string]json.RawMessage{}
			}
			pv, err := objectMap(v)
			if err != nil {
				return fmt.Errorf("twin: patch %s: %w", k, err)
			}
			if err := mergeMap(sub, pv); err != nil {
				return err
			}
			b, err := json.Marshal(sub)
			if err != nil {
				return err
			}
			d[k] = b
		default:
			d[k] = v
		}
	}
	return nil
}

// Delta is the part of desired that reported does not show: every key
// (recursively into objects) whose desired value differs from the reported
// one. nil when reported shows everything desired asks for.
func Delta(desired, reported json.RawMessage) json.RawMessage {
	d, err1 := objectMap(desired)
	r, err2 := objectMap(reported)
	if err1 != nil || err2 != nil {
		return nil
	}
	out := deltaMap(d, r)
	if len(out) == 0 {
		return nil
	}
	b, _ := json.Marshal(out)
	return b
}

func deltaMap(d, r map[string]json.RawMessage) map[string]json.RawMessage {
	out := map[string]json.RawMessage{}
	for k, dv := range d {
		rv, ok := r[k]
		if ok && isObject(dv) && isObject(rv) {
			dm, _ := objectMap(dv)
			rm, _ := objectMap(rv)
			if sub := deltaMap(dm, rm); len(sub) > 0 {
				b, _ := json.Marshal(sub)
				out[k] = b
			}
			continue
		}
		if !ok || !jsonEqual(dv, rv) {
			out[k] = dv
		}
	}
	return out
}

func jsonEqual(a, b json.RawMessage) bool {
	var x, y bytes.Buffer
	if json.Compact(&x, a) != nil || json.Compact(&y, b) != nil {
		return bytes.Equal(a, b)
	}
	return bytes.Equal(x.Bytes(), y.Bytes())
}

// Stamp sets meta[k] = at for every key the patch touched (removing keys
// the patch removed) and returns meta.
func Stamp(meta map[string]int64, patch json.RawMessage, keys []string, at time.Time) map[string]int64 {
	if meta == nil {
		meta = map[string]int64{}
	}
	p, _ := objectMap(patch)
	for _, k := range keys {
		if isNull(p[k]) {
			delete(meta, k)
		} else {
			meta[k] = at.UnixMilli()
		}
	}
	return meta
}
