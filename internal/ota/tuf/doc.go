// Package tuf implements the part of The Update Framework (TUF 1.0) that
// Outpost's self-updater needs: the metadata format (root, targets,
// snapshot, timestamp; ed25519 keys; canonical JSON signatures, so files are
// interoperable with python-tuf and go-tuf), the client workflow that
// refreshes and verifies them (Client), and the publisher side that creates
// keys, adds targets and signs new versions (Repo).
//
// Why not go-tuf v2: measured on this project's toolchain, linking go-tuf
// v2.4.2's updater adds 3.9 MB to a stripped static binary (6.0 → 10.0 MB for
// a hello-world with net/http and ed25519), through sigstore, protobuf,
// go-containerregistry and logr, for checks that fit in a few hundred lines
// here. Its target download also buffers whole files in memory without
// Range resume, so Outpost needs its own download path anyway. The checks
// below follow the specification's client workflow section by section, and
// the attack tests in internal/ota exercise each one.
//
// # Client guarantees
//
//   - Root: versions N+1, N+2, ... are fetched until one is absent; each must
//     be signed by a threshold of the previous root's root keys and of its
//     own, and have exactly version N+1. When timestamp or snapshot keys
//     rotate, the cached timestamp and snapshot are discarded (fast-forward
//     attack recovery). An expired final root stops the refresh.
//   - Timestamp: signed by the root's timestamp threshold; its version and
//     the snapshot version it references never decrease (ErrRollback); an
//     expired timestamp is ErrExpired (freeze attack).
//   - Snapshot and targets: fetched by version (consistent snapshots),
//     bounded by the length the parent references (ErrTooLarge), checked
//     against the parent's length, hashes and version (ErrMixAndMatch), signed
//     by their role's threshold, not expired, and the snapshot never drops or
//     lowers a targets version (ErrRollback).
//   - Delegated targets roles (one level; delegation.go): each role's
//     metadata is listed in the snapshot and checked like targets.json,
//     but signed by the threshold of the keys its delegation lists; a
//     role is believed only for target names matching its path patterns,
//     top-level targets win, roles are consulted in order and a
//     terminating role ends the search for the names it matches. A
//     delegated role that delegates further is rejected (ErrMalformed).
//   - Signature failures are distinct: ErrBadSignature (a trusted key's
//     signature does not verify), ErrUnknownKey (signed only by untrusted
//     keys), ErrThreshold (too few valid signatures).
//
// Interoperability: go-tuf v2.4.2's updater refreshes repositories written
// by Repo (including a root rotation chain) and downloads and verifies
// their hash-prefixed targets; see the separate module in ./interop.
//
// A refresh with nothing new costs two requests: the absent next root and
// timestamp.json. Cached files that still verify are reused.
//
// # Caveats
//
// Delegations are one level deep (no nested roles), no key types but
// ed25519, no hashed bin (succinct) delegation. Target downloads are the caller's job (see
// Client.TargetPath and CheckHashes).
package tuf
