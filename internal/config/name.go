package config

import "strings"

// IsName reports whether s is a name of 1 to max bytes: an ASCII letter or
// digit, then letters, digits or bytes from punct. It is the check behind
// node IDs, sink, lane and component names (which end up in MQTT topics and
// file names); it is written out rather than a regexp because `{0,127}` in a
// regexp compiles to 128 nested instructions, and validating a config at start
// would spend about 150 KB of heap and stack compiling it.
func IsName(s string, max int, punct string) bool {
	if len(s) == 0 || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' {
			continue
		}
		if i == 0 || strings.IndexByte(punct, c) < 0 {
			return false
		}
	}
	return true
}
