package uplink

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// ErrBadTopic is returned (wrapped) when a rendered cloud topic is not a
// valid MQTT topic name (empty, too long, a wildcard or NUL, invalid UTF-8).
var ErrBadTopic = errors.New("uplink: invalid cloud topic")

// Template is a parsed topic template such as "outpost/{node_id}/{topic}".
//
// Placeholders: {node_id}, {topic} (the local topic, inserted as is, '/'
// included), {lane}, {device_id} and {client_id}. The values of {device_id}
// and {client_id} are sanitised: '/', '+', '#' and NUL become '_', so one
// value is always one topic level; an empty value becomes "_".
type Template struct {
	src   string
	parts []tplPart
}

type tplPart struct {
	lit string
	ph  placeholder // phNone for a literal
}

type placeholder uint8

const (
	phNone placeholder = iota
	phNodeID
	phTopic
	phLane
	phDeviceID
	phClientID
)

var placeholders = map[string]placeholder{
	"node_id": phNodeID, "topic": phTopic, "lane": phLane, "device_id": phDeviceID, "client_id": phClientID,
}

// ParseTemplate parses a topic template. Errors name the 1-based column.
func ParseTemplate(s string) (*Template, error) {
	if s == "" {
		return nil, errors.New("empty template")
	}
	if !utf8.ValidString(s) {
		return nil, errors.New("not valid UTF-8")
	}
	t := &Template{src: s}
	var lit strings.Builder
	col := func(i int) int { return utf8.RuneCountInString(s[:i]) + 1 }
	for i := 0; i < len(s); {
		switch c := s[i]; c {
		case '{':
			end := strings.IndexByte(s[i:], '}')
			if end < 0 {
				return nil, fmt.Errorf("column %d: unterminated '{'", col(i))
			}
			name := s[i+1 : i+end]
			ph, ok := placeholders[name]
			if !ok {
				return nil, fmt.Errorf("column %d: unknown placeholder {%s} (known: {node_id}, {topic}, {lane}, {device_id}, {client_id})", col(i), name)
			}
			if lit.Len() > 0 {
				t.parts = append(t.parts, tplPart{lit: lit.String()})
				lit.Reset()
			}
			t.parts = append(t.parts, tplPart{ph: ph})
			i += end + 1
		case '}':
			return nil, fmt.Errorf("column %d: '}' without '{'", col(i))
		case '+', '#':
			return nil, fmt.Errorf("column %d: wildcard %q is not allowed in a topic name", col(i), c)
		case 0:
			return nil, fmt.Errorf("column %d: NUL character", col(i))
		default:
			lit.WriteByte(c)
			i++
		}
	}
	if lit.Len() > 0 {
		t.parts = append(t.parts, tplPart{lit: lit.String()})
	}
	return t, nil
}

// String returns the template source.
func (t *Template) String() string { return t.src }

// TopicVars are the values a template is rendered with.
type TopicVars struct {
	NodeID, Topic, Lane, DeviceID, ClientID string
}

// Render returns the cloud topic for v, or an error wrapping ErrBadTopic.
func (t *Template) Render(v TopicVars) (string, error) {
	b, err := t.appendTopic(nil, &v)
	return string(b), err
}

// appendTopic appends the rendered topic to dst and validates it.
func (t *Template) appendTopic(dst []byte, v *TopicVars) ([]byte, error) {
	start := len(dst)
	for _, p := range t.parts {
		switch p.ph {
		case phNone:
			dst = append(dst, p.lit...)
		case phNodeID:
			dst = appendLevel(dst, v.NodeID)
		case phTopic:
			dst = append(dst, v.Topic...)
		case phLane:
			dst = appendLevel(dst, v.Lane)
		case phDeviceID:
			dst = appendLevel(dst, v.DeviceID)
		case phClientID:
			dst = appendLevel(dst, v.ClientID)
		}
	}
	if err := checkTopicName(dst[start:]); err != nil {
		return dst, err
	}
	return dst, nil
}

// appendLevel appends s as a single topic level.
func appendLevel(dst []byte, s string) []byte {
	if s == "" {
		return append(dst, '_')
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '/', '+', '#', 0:
			dst = append(dst, '_')
		default:
			dst = append(dst, c)
		}
	}
	return dst
}

// checkTopicName enforces the MQTT topic name rules: non-empty
// [MQTT-4.7.3-1], no wildcards [MQTT-3.3.2-2], UTF-8 without NUL
// [MQTT-1.5.4-1, MQTT-1.5.4-2], at most 65535 bytes.
func checkTopicName(b []byte) error {
	if len(b) == 0 {
		return fmt.Errorf("%w: empty", ErrBadTopic)
	}
	if len(b) > 65535 {
		return fmt.Errorf("%w: %d bytes (max 65535)", ErrBadTopic, len(b))
	}
	for i, c := range b {
		if c == '+' || c == '#' || c == 0 {
			return fmt.Errorf("%w: %q at byte %d of %.80q", ErrBadTopic, c, i, b)
		}
	}
	if !utf8.Valid(b) {
		return fmt.Errorf("%w: not valid UTF-8: %.80q", ErrBadTopic, b)
	}
	return nil
}
