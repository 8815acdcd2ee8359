// Package recipe reads component recipes: the YAML files that declare what
// the supervisor runs (see docs/components.md for the user's manual).
//
// Usage:
//
//	recipes, fileErrs, err := recipe.LoadDir("/etc/outpost/components")
//	graph, rejected := recipe.Resolve(recipes)
//	for _, name := range graph.Order() { ... } // dependencies first
//
// Guarantees:
//
//   - Decoding is strict. Unknown keys, duplicate keys, wrong types, YAML
//     anchors/aliases and a second document are errors. Every problem is
//     reported at once, each an *Error with file:line:column and the YAML path
//     of the value, wrapping a sentinel (ErrUnknownField, ErrVersion, ...).
//   - A Recipe returned by Parse is complete: defaults are filled in
//     (restart policy, backoff, health cadence, step timeouts) and cross-field
//     rules hold (exactly one of run/startup; health timeout <= interval; one
//     health check kind; valid topic filters; semver version).
//   - Parse is pure; LoadFile additionally checks local artifacts (present,
//     and matching their sha256 when given). URL artifacts are verified when
//     the supervisor downloads them.
//   - Resolve never fails as a whole: duplicates, unknown dependencies,
//     unsatisfied version constraints and cycles (the error names the cycle,
//     "a -> b -> a") reject only the recipes involved and, transitively,
//     those that depend on them.
//
// Caveats: versions are strict SemVer 2.0.0 ("1.2" is not a version, but
// is accepted in constraints as "1.2.0"). Constraints are a conjunction of
// comparators; there is no "||".
package recipe
