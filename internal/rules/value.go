package rules

import (
	"encoding/json"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/outpost-edge/outpost/internal/rules/jsonpath"
)

// Kind is the dynamic type of a Value.
type Kind uint8

const (
	KNull Kind = iota
	KBool
	KNum
	KStr
	KJSON // a JSON object or array, raw text in S
)

func (k Kind) String() string {
	return [...]string{"null", "bool", "number", "string", "json"}[k]
}

// Value is the result of evaluating an expression. Strings read from a
// payload alias the payload (no copy) and are only valid while the message
// is being evaluated; state that outlives the message keeps clone()s.
type Value struct {
	K Kind
	N float64 // number, or 1/0 for bools
	S string  // string, or raw JSON for KJSON
}

var (
	null   = Value{}
	vTrue  = Value{K: KBool, N: 1}
	vFalse = Value{K: KBool}
)

func num(f float64) Value { return Value{K: KNum, N: f} }
func str(s string) Value  { return Value{K: KStr, S: s} }
func boolean(b bool) Value {
	if b {
		return vTrue
	}
	return vFalse
}

func (v Value) isNull() bool { return v.K == KNull }
func (v Value) truthy() bool { return v.K == KBool && v.N != 0 }

// clone detaches a value from the payload it may alias.
func (v Value) clone() Value {
	if v.K == KStr || v.K == KJSON {
		v.S = strings.Clone(v.S)
	}
	return v
}

func fromResult(r jsonpath.Result) (Value, bool) {
	switch r.Type {
	case jsonpath.Null:
		return null, true
	case jsonpath.True:
		return vTrue, true
	case jsonpath.False:
		return vFalse, true
	case jsonpath.Number:
		f, ok := r.Float()
		if !ok {
			return null, true
		}
		return num(f), true
	case jsonpath.String:
		s, ok := r.StringView()
		if !ok {
			return null, true
		}
		return str(s), true
	case jsonpath.Object, jsonpath.Array:
		return Value{K: KJSON, S: bytesView(r.Raw)}, true
	}
	return null, false
}

// equal compares two non-null values of the same kind.
func equal(a, b Value) bool {
	switch a.K {
	case KNum, KBool:
		return a.N == b.N
	default:
		return a.S == b.S
	}
}

// compare orders two values of the same kind; ok is false for mismatched
// kinds or unordered kinds.
func compare(a, b Value) (int, bool) {
	if a.K != b.K {
		return 0, false
	}
	switch a.K {
	case KNum, KBool:
		switch {
		case a.N < b.N:
			return -1, true
		case a.N > b.N:
			return 1, true
		}
		return 0, true
	case KStr:
		return strings.Compare(a.S, b.S), true
	}
	return 0, false
}

// appendJSON writes v as JSON.
func appendJSON(b []byte, v Value) []byte {
	switch v.K {
	case KNull:
		return append(b, "null"...)
	case KBool:
		if v.N != 0 {
			return append(b, "true"...)
		}
		return append(b, "false"...)
	case KNum:
		return appendNumber(b, v.N)
	case KStr:
		return appendQuoted(b, v.S)
	case KJSON:
		return append(b, v.S...)
	}
	return b
}

// appendNumber formats like encoding/json (integers without exponent).
func appendNumber(b []byte, f float64) []byte {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return append(b, "null"...)
	}
	if f == math.Trunc(f) && math.Abs(f) < 1e15 {
		return strconv.AppendInt(b, int64(f), 10)
	}
	abs := math.Abs(f)
	fmtc := byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		fmtc = 'e'
	}
	return strconv.AppendFloat(b, f, fmtc, -1, 64)
}

const hexDigits = "0123456789abcdef"

// appendQuoted writes s as a JSON string.
func appendQuoted(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// toString renders a value for string functions and ||.
func toString(v Value) string {
	switch v.K {
	case KStr, KJSON:
		return v.S
	case KNum:
		return string(appendNumber(nil, v.N))
	case KBool:
		if v.N != 0 {
			return "true"
		}
		return "false"
	}
	return ""
}

// MarshalJSON encodes a Value for state snapshots.
func (v Value) MarshalJSON() ([]byte, error) {
	type wire struct {
		K Kind    `json:"k"`
		N float64 `json:"n,omitempty"`
		S string  `json:"s,omitempty"`
	}
	if math.IsNaN(v.N) || math.IsInf(v.N, 0) {
		v.N = 0
	}
	return json.Marshal(wire(v))
}

// UnmarshalJSON decodes a snapshot Value.
func (v *Value) UnmarshalJSON(b []byte) error {
	var w struct {
		K Kind    `json:"k"`
		N float64 `json:"n"`
		S string  `json:"s"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	if w.K > KJSON {
		w.K = KNull
	}
	*v = Value{K: w.K, N: w.N, S: w.S}
	return nil
}
