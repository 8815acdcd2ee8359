package recipe

import "github.com/outpost-edge/outpost/internal/semver"

// Version is a component's semantic version (internal/semver).
type Version = semver.Version

// Constraint is a version requirement such as ">=1.2.0 <2.0.0"
// (internal/semver).
type Constraint = semver.Constraint

// ParseVersion parses a strict SemVer 2.0.0 string (semver.Parse).
func ParseVersion(s string) (Version, error) { return semver.Parse(s) }

// ParseConstraint parses a version constraint (semver.ParseConstraint).
func ParseConstraint(s string) (Constraint, error) { return semver.ParseConstraint(s) }
