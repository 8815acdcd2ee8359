package outpostfn

import (
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// JSONNumber returns the number stored under key at the top level of the
// JSON object doc, without allocating and without reflection. In a Go
// guest, encoding/json's reflection costs tens of microseconds per message
// (docs/bench/functions.md); a function that needs a few numbers from a
// flat payload reads them with JSONNumber or, in one pass, JSONNumbers.
//
// ok is false when doc is not a well-formed JSON object, when key is
// absent, or when its value is not a number. A key given twice counts
// with its last value, as with encoding/json.
func JSONNumber(doc []byte, key string) (v float64, ok bool) {
	var out [1]float64
	ok = JSONNumbers(doc, []string{key}, out[:])
	return out[0], ok
}

// JSONNumbers reads several top-level numbers in one pass over doc:
// vals[i] gets the number under keys[i] (len(vals) must be at least
// len(keys)). It reports whether doc is a well-formed JSON object in which
// every key holds a number; otherwise vals holds zeros where a key had no
// number.
func JSONNumbers(doc []byte, keys []string, vals []float64) bool {
	const most = 16
	if len(keys) > most || len(vals) < len(keys) {
		return false
	}
	var nums [most][]byte
	s := jsonScanner{b: doc}
	s.ws()
	if !s.eat('{') {
		return false
	}
	s.ws()
	if s.eat('}') {
		return s.end() && len(keys) == 0
	}
	for {
		s.ws()
		raw, plain, good := s.key()
		if !good {
			return false
		}
		s.ws()
		if !s.eat(':') {
			return false
		}
		s.ws()
		start := s.i
		isNum := s.i < len(s.b) && (s.b[s.i] == '-' || s.b[s.i] >= '0' && s.b[s.i] <= '9')
		if !s.value(0) {
			return false
		}
		for i, want := range keys {
			if plain && string(raw) == want || !plain && unescapedEquals(raw, want) {
				nums[i] = nil
				if isNum {
					nums[i] = s.b[start:s.i]
				}
			}
		}
		s.ws()
		if s.eat('}') {
			break
		}
		if !s.eat(',') {
			return false
		}
	}
	if !s.end() {
		return false
	}
	all := true
	for i := range keys {
		vals[i] = 0
		if nums[i] == nil {
			all = false
			continue
		}
		f, err := strconv.ParseFloat(string(nums[i]), 64)
		if err != nil {
			all = false
			continue
		}
		vals[i] = f
	}
	return all
}

type jsonScanner struct {
	b []byte
	i int
}

func (s *jsonScanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *jsonScanner) eat(c byte) bool {
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// end: only white space is left.
func (s *jsonScanner) end() bool {
	s.ws()
	return s.i == len(s.b)
}

// key reads an object key: its bytes between the quotes, and whether they
// can be compared as they are (no escapes, valid UTF-8).
func (s *jsonScanner) key() (raw []byte, plain, ok bool) {
	start := s.i
	escaped, ok := s.str()
	if !ok {
		return nil, false, false
	}
	raw = s.b[start+1 : s.i-1]
	return raw, !escaped && utf8.Valid(raw), true
}

// str skips a string at s.i, checking its escapes and control bytes.
func (s *jsonScanner) str() (escaped, ok bool) {
	if !s.eat('"') {
		return false, false
	}
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			s.i++
			return escaped, true
		case c < 0x20:
			return false, false
		case c == '\\':
			escaped = true
			if s.i+1 >= len(s.b) {
				return false, false
			}
			switch s.b[s.i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.i += 2
			case 'u':
				if s.i+6 > len(s.b) {
					return false, false
				}
				for _, h := range s.b[s.i+2 : s.i+6] {
					if hexVal(h) < 0 {
						return false, false
					}
				}
				s.i += 6
			default:
				return false, false
			}
		default:
			s.i++
		}
	}
	return false, false
}

// value skips one JSON value; depth bounds nesting.
func (s *jsonScanner) value(depth int) bool {
	if depth > 1000 || s.i >= len(s.b) {
		return false
	}
	switch c := s.b[s.i]; {
	case c == '"':
		_, ok := s.str()
		return ok
	case c == '{' || c == '[':
		closing := byte('}')
		if c == '[' {
			closing = ']'
		}
		s.i++
		s.ws()
		if s.eat(closing) {
			return true
		}
		for {
			s.ws()
			if c == '{' {
				if _, ok := s.str(); !ok {
					return false
				}
				s.ws()
				if !s.eat(':') {
					return false
				}
				s.ws()
			}
			if !s.value(depth + 1) {
				return false
			}
			s.ws()
			if s.eat(closing) {
				return true
			}
			if !s.eat(',') {
				return false
			}
		}
	case c == 't':
		return s.lit("true")
	case c == 'f':
		return s.lit("false")
	case c == 'n':
		return s.lit("null")
	default:
		return s.number()
	}
}

func (s *jsonScanner) lit(w string) bool {
	if len(s.b)-s.i >= len(w) && string(s.b[s.i:s.i+len(w)]) == w {
		s.i += len(w)
		return true
	}
	return false
}

// number skips a number in JSON's grammar: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *jsonScanner) number() bool {
	s.eat('-')
	digits := func() int {
		n := 0
		for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
			s.i++
			n++
		}
		return n
	}
	if s.eat('0') {
	} else if digits() == 0 {
		return false
	}
	if s.eat('.') && digits() == 0 {
		return false
	}
	if s.eat('e') || s.eat('E') {
		if !s.eat('+') {
			s.eat('-')
		}
		if digits() == 0 {
			return false
		}
	}
	return true
}

func hexVal(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

// unescapedEquals compares a string body with escapes (already checked by
// str) to want, decoding as encoding/json does (invalid surrogates become
// U+FFFD).
func unescapedEquals(raw []byte, want string) bool {
	var buf [utf8.UTFMax]byte
	j := 0
	for i := 0; i < len(raw); {
		c := raw[i]
		var piece []byte
		switch {
		case c != '\\':
			r, n := utf8.DecodeRune(raw[i:])
			if r == utf8.RuneError && n == 1 {
				piece = buf[:utf8.EncodeRune(buf[:], utf8.RuneError)]
			} else {
				piece = raw[i : i+n]
			}
			i += n
		case raw[i+1] == 'u':
			r := rune(hex4(raw[i+2:]))
			i += 6
			if utf16.IsSurrogate(r) {
				r2 := utf8.RuneError
				if i+6 <= len(raw) && raw[i] == '\\' && raw[i+1] == 'u' {
					r2 = rune(hex4(raw[i+2:]))
				}
				if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
					r = dec
					i += 6
				} else {
					r = utf8.RuneError
				}
			}
			piece = buf[:utf8.EncodeRune(buf[:], r)]
		default:
			b := raw[i+1]
			switch b {
			case 'b':
				b = '\b'
			case 'f':
				b = '\f'
			case 'n':
				b = '\n'
			case 'r':
				b = '\r'
			case 't':
				b = '\t'
			}
			buf[0] = b
			piece = buf[:1]
			i += 2
		}
		if j+len(piece) > len(want) || string(piece) != want[j:j+len(piece)] {
			return false
		}
		j += len(piece)
	}
	return j == len(want)
}

func hex4(b []byte) int {
	return hexVal(b[0])<<12 | hexVal(b[1])<<8 | hexVal(b[2])<<4 | hexVal(b[3])
}
