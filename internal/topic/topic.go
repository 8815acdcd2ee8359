// Package topic holds MQTT topic-name and topic-filter logic shared by the
// broker's ACLs, the pipeline's routes and the supervisor's component
// namespaces: matching a topic against a filter, deciding whether two filters
// overlap or one covers the other, and validating filters.
//
// Every function follows the MQTT rules for '+' (one level), '#' (this level
// and everything below, including the parent) and topics starting with '$',
// which wildcards in the first level never match [MQTT-4.7.2-1].
package topic

import (
	"errors"
	"fmt"
	"strings"
)

// Match reports whether topic matches filter per MQTT rules, including
// that wildcards at the first level do not match topics starting with $
// [MQTT-4.7.2-1].
func Match(filter, topic string) bool {
	if len(topic) > 0 && topic[0] == '$' && len(filter) > 0 && (filter[0] == '+' || filter[0] == '#') {
		return false
	}
	for {
		fl, frest, fmore := strings.Cut(filter, "/")
		tl, trest, tmore := strings.Cut(topic, "/")
		switch fl {
		case "#":
			return true
		case "+":
		default:
			if fl != tl {
				return false
			}
		}
		if !fmore && !tmore {
			return true
		}
		if !fmore {
			return false
		}
		if !tmore {
			// "a/#" matches "a"
			return frest == "#"
		}
		filter, topic = frest, trest
	}
}

// Intersects reports whether some topic matches both filters.
func Intersects(a, b string) bool {
	// a $-topic is only matched by filters whose first level is literal
	if (dollar(a) && !literalFirst(b)) || (dollar(b) && !literalFirst(a)) {
		return false
	}
	for {
		al, arest, amore := strings.Cut(a, "/")
		bl, brest, bmore := strings.Cut(b, "/")
		if al == "#" || bl == "#" {
			return true
		}
		if al != "+" && bl != "+" && al != bl {
			return false
		}
		if !amore && !bmore {
			return true
		}
		if !amore {
			return brest == "#"
		}
		if !bmore {
			return arest == "#"
		}
		a, b = arest, brest
	}
}

// Covers reports whether every topic matching filter also matches pattern.
func Covers(pattern, filter string) bool {
	if dollar(filter) && !literalFirst(pattern) {
		return false
	}
	for {
		pl, prest, pmore := strings.Cut(pattern, "/")
		fl, frest, fmore := strings.Cut(filter, "/")
		if pl == "#" {
			return true
		}
		if fl == "#" {
			return false
		}
		if pl != "+" && (fl == "+" || pl != fl) {
			return false
		}
		if !pmore && !fmore {
			return true
		}
		if !pmore || !fmore {
			return !fmore && prest == "#"
		}
		pattern, filter = prest, frest
	}
}

func dollar(s string) bool { return len(s) > 0 && s[0] == '$' }

func literalFirst(s string) bool {
	first, _, _ := strings.Cut(s, "/")
	return first != "+" && first != "#"
}

// Levels counts the levels of a topic or filter.
func Levels(s string) int { return strings.Count(s, "/") + 1 }

// ValidFilter checks an MQTT topic filter: not empty, '#' only as the whole
// last level, '+' only as a whole level, no NUL byte.
func ValidFilter(f string) error {
	if f == "" {
		return errors.New("empty topic filter")
	}
	for i := 0; i < len(f); i++ {
		switch f[i] {
		case '#':
			if i != len(f)-1 || (i > 0 && f[i-1] != '/') {
				return fmt.Errorf("topic filter %q: # must be a whole last level", f)
			}
		case '+':
			if (i > 0 && f[i-1] != '/') || (i < len(f)-1 && f[i+1] != '/') {
				return fmt.Errorf("topic filter %q: + must be a whole level", f)
			}
		case 0:
			return fmt.Errorf("topic filter %q contains a NUL byte", f)
		}
	}
	return nil
}

// StripShare returns the filter of a shared subscription
// ($share/<group>/<filter>), or f unchanged.
func StripShare(f string) string {
	if !strings.HasPrefix(f, "$share/") {
		return f
	}
	parts := strings.SplitN(f, "/", 3)
	if len(parts) < 3 {
		return f
	}
	return parts[2]
}
