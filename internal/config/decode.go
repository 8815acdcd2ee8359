package config

import (
	"errors"

	"github.com/outpost-edge/outpost/internal/yamlstrict"
)

// The strict decoder itself is internal/yamlstrict; config keeps these names
// for its callers.
type (
	// Pos is a location in a config source.
	Pos = yamlstrict.Pos
	// Problem is one error in a config, with where it is.
	Problem = yamlstrict.Problem
	// Problems is every error found in a config, in file order.
	Problems = yamlstrict.Problems
)

// Sentinel errors wrapped by problems.
var (
	ErrUnknownKey = yamlstrict.ErrUnknownKey
	ErrWrongType  = yamlstrict.ErrWrongType
	ErrInvalid    = errors.New("invalid config")
)

// KindName describes what a YAML node is, for "expected X, got Y" errors.
var KindName = yamlstrict.KindName

// Closest returns the candidate nearest to word by edit distance, if it is
// within 2 edits ("" otherwise); ties go to the alphabetically first.
func Closest(word string, candidates []string) string {
	return yamlstrict.Closest(word, candidates)
}
