package recipe

import (
	"errors"
	"fmt"
)

// Sentinel errors, wrapped by *Error; check with errors.Is.
var (
	// ErrSyntax is returned for YAML that does not parse.
	ErrSyntax = errors.New("invalid YAML")
	// ErrUnknownField is returned for a key the recipe schema does not have.
	ErrUnknownField = errors.New("unknown field")
	// ErrInvalid is returned for a value of the wrong type or out of range,
	// and for missing required fields.
	ErrInvalid = errors.New("invalid value")
	// ErrVersion is returned for a version that is not semver, or a
	// dependency constraint that does not parse.
	ErrVersion = errors.New("invalid version")
	// ErrArtifact is returned for a local artifact that is missing or
	// unreadable, and for a download that fails.
	ErrArtifact = errors.New("artifact unavailable")
	// ErrHashMismatch is returned when an artifact's SHA-256 differs from
	// the recipe's.
	ErrHashMismatch = errors.New("artifact hash mismatch")
	// ErrDuplicate is returned for a second recipe with the same name.
	ErrDuplicate = errors.New("duplicate component name")
	// ErrUnknownDependency is returned for a depends_on entry naming a
	// component that is not loaded.
	ErrUnknownDependency = errors.New("unknown dependency")
	// ErrDependencyVersion is returned when a dependency's version does not
	// satisfy the constraint.
	ErrDependencyVersion = errors.New("dependency version not satisfied")
	// ErrCycle is returned for a dependency cycle; the message names it.
	ErrCycle = errors.New("dependency cycle")
)

// Error is a recipe problem located in its file. Line and Column are 1-based
// (0 when unknown); Field is the YAML path of the offending value.
type Error struct {
	File   string
	Line   int
	Column int
	Field  string
	Err    error
}

func (e *Error) Error() string {
	loc := e.File
	if loc == "" {
		loc = "recipe"
	}
	if e.Line > 0 {
		loc = fmt.Sprintf("%s:%d", loc, e.Line)
		if e.Column > 0 {
			loc = fmt.Sprintf("%s:%d", loc, e.Column)
		}
	}
	if e.Field != "" {
		return fmt.Sprintf("%s: %s: %v", loc, e.Field, e.Err)
	}
	return fmt.Sprintf("%s: %v", loc, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }
