// Package acl decides whether an MQTT topic or subscription filter is
// within a set of allowed topic filters. The broker's ACL hook uses it to
// confine each component to components/<name>/# plus what its recipe
// requested.
//
// A subscription is allowed only when every topic it could ever match is
// matched by one allowed filter ("covered"), so wildcards cannot widen
// access: with components/a/# allowed, "#" and "components/+/x" are refused
// while "components/a/+/x" is accepted. Topics starting with '$' are never
// matched by a wildcard in the first level, as MQTT specifies
// [MQTT-4.7.2-1]. Shared subscriptions ($share/<group>/<filter>) are
// checked on their filter.
package acl

import (
	"strings"

	"github.com/outpost-edge/outpost/internal/topic"
)

// Allowed reports whether topicOrFilter is covered by one of allowed.
func Allowed(allowed []string, topicOrFilter string) bool {
	f := topicOrFilter
	if rest, ok := strings.CutPrefix(f, "$share/"); ok {
		i := strings.IndexByte(rest, '/')
		if i <= 0 {
			return false
		}
		f = rest[i+1:]
	}
	for _, a := range allowed {
		if Covers(a, f) {
			return true
		}
	}
	return false
}

// Covers reports whether every topic matched by filter r is also matched
// by filter a (topic.Covers).
func Covers(a, r string) bool {
	if a == "" || r == "" {
		return false
	}
	return topic.Covers(a, r)
}
