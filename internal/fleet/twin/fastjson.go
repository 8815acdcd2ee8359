package twin

import (
	"bytes"
	"encoding/json"
	"errors"
	"sort"
	"strconv"
)

// errSlow sends splitObject's caller to encoding/json (escaped keys,
// anything unusual).
var errSlow = errors.New("twin: not on the fast path")

// splitObject splits a JSON object into its top-level keys and raw values
// without reflection (the server's hot path parses two objects per
// reported update). It handles what the encoders produce and falls back
// (errSlow) on escaped keys or anything it does not expect; the values are
// not validated beyond bracket and string matching, so callers use it only
// on input that json.Valid accepts or that the fallback will reject.
// FuzzSplitObject checks it against encoding/json.
func splitObject(b []byte) (map[string]json.RawMessage, error) {
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return nil, errSlow
	}
	m := map[string]json.RawMessage{}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		if skipWS(b, i+1) != len(b) {
			return nil, errSlow
		}
		return m, nil
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return nil, errSlow
		}
		j := i + 1
		for j < len(b) && b[j] != '"' {
			if b[j] == '\\' || b[j] < 0x20 || b[j] >= 0x80 {
				return nil, errSlow // escapes and non-ASCII keys: let encoding/json decode them
			}
			j++
		}
		if j >= len(b) {
			return nil, errSlow
		}
		key := string(b[i+1 : j])
		i = skipWS(b, j+1)
		if i >= len(b) || b[i] != ':' {
			return nil, errSlow
		}
		i = skipWS(b, i+1)
		end, err := skipValue(b, i)
		if err != nil {
			return nil, err
		}
		if _, dup := m[key]; dup {
			return nil, errSlow // encoding/json keeps the last; keep one behaviour
		}
		m[key] = json.RawMessage(b[i:end])
		i = skipWS(b, end)
		if i >= len(b) {
			return nil, errSlow
		}
		if b[i] == '}' {
			if skipWS(b, i+1) != len(b) {
				return nil, errSlow
			}
			return m, nil
		}
		if b[i] != ',' {
			return nil, errSlow
		}
		i = skipWS(b, i+1)
	}
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipValue returns the end of the JSON value starting at i.
func skipValue(b []byte, i int) (int, error) {
	if i >= len(b) {
		return 0, errSlow
	}
	switch c := b[i]; {
	case c == '"':
		esc := false
		for j := i + 1; j < len(b); j++ {
			switch {
			case b[j] == '\\':
				esc = true
				j++
			case b[j] < 0x20:
				return 0, errSlow
			case b[j] == '"':
				if esc && !json.Valid(b[i:j+1]) {
					return 0, errSlow
				}
				return j + 1, nil
			}
		}
		return 0, errSlow
	case c == '{' || c == '[':
		depth, inStr := 0, false
		for j := i; j < len(b); j++ {
			switch {
			case inStr && b[j] == '\\':
				j++
			case b[j] == '"':
				inStr = !inStr
			case inStr:
			case b[j] == '{' || b[j] == '[':
				depth++
			case b[j] == '}' || b[j] == ']':
				depth--
				if depth == 0 {
					if !json.Valid(b[i : j+1]) {
						return 0, errSlow
					}
					return j + 1, nil
				}
			}
		}
		return 0, errSlow
	default: // number, true, false, null
		j := i
		for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ' ' && b[j] != '\t' && b[j] != '\n' && b[j] != '\r' {
			j++
		}
		if j == i || !json.Valid(b[i:j]) {
			return 0, errSlow
		}
		return j, nil
	}
}

// joinObject is json.Marshal of m (keys sorted, values as they are; they
// come from splitObject or encoding/json, so they are valid JSON).
func joinObject(m map[string]json.RawMessage) []byte {
	keys := make([]string, 0, len(m))
	n := 2
	for k, v := range m {
		keys = append(keys, k)
		n += len(k) + len(v) + 4
	}
	sort.Strings(keys)
	var buf bytes.Buffer
	buf.Grow(n)
	buf.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.Write(appendKey(nil, k))
		buf.WriteByte(':')
		v := m[k]
		if bytes.ContainsAny(v, " \t\r\n") {
			var c bytes.Buffer
			if json.Compact(&c, v) == nil {
				v = c.Bytes()
			}
		}
		buf.Write(v)
	}
	buf.WriteByte('}')
	return buf.Bytes()
}

// appendKey appends k as a JSON string (encoding/json's escaping; plain
// keys without it).
func appendKey(b []byte, k string) []byte {
	for i := 0; i < len(k); i++ {
		if c := k[i]; c < 0x20 || c >= 0x80 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			kb, _ := json.Marshal(k)
			return append(b, kb...)
		}
	}
	b = append(b, '"')
	b = append(b, k...)
	return append(b, '"')
}

// appendMeta is json.Marshal of a metadata map.
func appendMeta(m map[string]int64) []byte {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	b := make([]byte, 0, 2+len(m)*24)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendKey(b, k)
		b = append(b, ':')
		b = strconv.AppendInt(b, m[k], 10)
	}
	return append(b, '}')
}

// MetaJSON encodes a metadata map (the stores' hot path).
func MetaJSON(m map[string]int64) string {
	if m == nil {
		return "null"
	}
	return string(appendMeta(m))
}
