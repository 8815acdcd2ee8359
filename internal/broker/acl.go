package broker

import (
	"errors"
	"strings"

	"github.com/outpost-edge/outpost/internal/topic"
)

// An ACL is an ordered list of compiled rules for one principal.
type acl []aclRule

type aclRule struct {
	pattern string // may contain %u and %c
	pub     bool
	sub     bool
	deny    bool
}

func compileACL(rules []ACLRule) acl {
	out := make(acl, 0, len(rules))
	for _, r := range rules {
		cr := aclRule{pattern: r.Topic}
		switch r.Access {
		case AccessPublish:
			cr.pub = true
		case AccessSubscribe:
			cr.sub = true
		case AccessAll:
			cr.pub, cr.sub = true, true
		case AccessDeny:
			cr.deny = true
		}
		out = append(out, cr)
	}
	return out
}

// validPattern checks an ACL pattern: a valid MQTT topic filter where %u and
// %c may stand for a whole level.
func validPattern(p string) error {
	if p == "" {
		return errors.New("empty pattern")
	}
	if len(p) > 65535 {
		return errors.New("pattern longer than 65535 bytes")
	}
	levels := strings.Split(p, "/")
	for i, l := range levels {
		switch {
		case l == "#":
			if i != len(levels)-1 {
				return errors.New("# must be the last level")
			}
		case l == "+", l == "%u", l == "%c":
		case strings.ContainsAny(l, "+#"):
			return errors.New("+ and # must occupy a whole level")
		case strings.Contains(l, "%u") || strings.Contains(l, "%c"):
			return errors.New("%u and %c must occupy a whole level")
		}
	}
	return nil
}

// expand substitutes %u and %c. It reports false when a substituted value
// could escape its level (contains /, + or #) or is empty; the rule then
// matches nothing.
func expand(pattern, user, client string) (string, bool) {
	if !strings.Contains(pattern, "%") {
		return pattern, true
	}
	safe := func(v string) bool { return v != "" && !strings.ContainsAny(v, "/+#") }
	if strings.Contains(pattern, "%u") {
		if !safe(user) {
			return "", false
		}
		pattern = strings.ReplaceAll(pattern, "%u", user)
	}
	if strings.Contains(pattern, "%c") {
		if !safe(client) {
			return "", false
		}
		pattern = strings.ReplaceAll(pattern, "%c", client)
	}
	return pattern, true
}

// canPublish reports whether name (a concrete topic name) may be published.
func (a acl) canPublish(user, client, name string) bool { return a.decide(user, client, name, true) }

// canReceive reports whether a message on name may be delivered.
func (a acl) canReceive(user, client, name string) bool { return a.decide(user, client, name, false) }

// decide applies the first rule that matches name and covers the action
// (publish, or subscribe/receive); no such rule means deny.
func (a acl) decide(user, client, name string, publish bool) bool {
	for _, r := range a {
		covers := r.sub
		if publish {
			covers = r.pub
		}
		if !covers && !r.deny {
			continue
		}
		p, ok := expand(r.pattern, user, client)
		if !ok || !topic.Match(p, name) {
			continue
		}
		return !r.deny
	}
	return false
}

// canSubscribe reports whether filter may be subscribed: some subscribe rule
// must overlap it, and no deny rule before that may cover the whole filter.
// Delivery is still checked per message (canReceive), so a wildcard
// subscription never reaches a denied topic.
func (a acl) canSubscribe(user, client, filter string) bool {
	for _, r := range a {
		if !r.sub && !r.deny {
			continue
		}
		p, ok := expand(r.pattern, user, client)
		if !ok {
			continue
		}
		if r.deny {
			if topic.Covers(p, filter) {
				return false
			}
			continue
		}
		if topic.Intersects(p, filter) {
			return true
		}
	}
	return false
}
