package parser

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// Pos is a 1-based line and column (in bytes) in the source.
type Pos struct {
	Line, Col int
}

func (p Pos) String() string { return fmt.Sprintf("%d:%d", p.Line, p.Col) }

// tokKind is a token class.
type tokKind int

const (
	tEOF tokKind = iota
	tIdent
	tQuotedIdent
	tString
	tNumber
	tOp // punctuation and operators: ( ) , . [ ] * + - / % = != <> < <= > >= || ;
	tIllegal
)

type token struct {
	kind tokKind
	text string // identifier name, unquoted string, number text, operator
	pos  Pos
	off  int
}

// describe renders a token for "unexpected X" messages.
func (t token) describe() string {
	switch t.kind {
	case tEOF:
		return "end of input"
	case tIdent:
		if keywords[strings.ToUpper(t.text)] {
			return strings.ToUpper(t.text)
		}
		return fmt.Sprintf("identifier %s", t.text)
	case tQuotedIdent:
		return fmt.Sprintf("identifier %q", t.text)
	case tString:
		s := t.text
		if len(s) > 32 {
			s = s[:32] + "..."
		}
		return fmt.Sprintf("string '%s'", s)
	case tNumber:
		return "number " + t.text
	case tIllegal:
		return t.text
	}
	return fmt.Sprintf("%q", t.text)
}

// keywords are reserved: they cannot be bare identifiers (quote them).
var keywords = map[string]bool{
	"CREATE": true, "RULE": true, "VERSION": true, "AS": true, "SELECT": true, "FROM": true,
	"WHERE": true, "GROUP": true, "BY": true, "HAVING": true, "DO": true, "AND": true,
	"OR": true, "NOT": true, "IN": true, "BETWEEN": true, "LIKE": true, "IS": true,
	"NULL": true, "TRUE": true, "FALSE": true, "CASE": true, "WHEN": true, "THEN": true,
	"ELSE": true, "END": true, "CAST": true, "FOR": true, "DEVICES": true, "WITH": true,
	"TIMESTAMP": false, // also a function name; treated contextually
}

type lexer struct {
	src  string
	off  int
	line int
	col  int
}

func newLexer(src string) *lexer { return &lexer{src: src, line: 1, col: 1} }

func (l *lexer) advance(n int) {
	for i := 0; i < n && l.off < len(l.src); i++ {
		if l.src[l.off] == '\n' {
			l.line++
			l.col = 1
		} else {
			l.col++
		}
		l.off++
	}
}

func (l *lexer) skipSpaceAndComments() *token {
	for l.off < len(l.src) {
		c := l.src[l.off]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			l.advance(1)
		case c == '-' && strings.HasPrefix(l.src[l.off:], "--"):
			for l.off < len(l.src) && l.src[l.off] != '\n' {
				l.advance(1)
			}
		case c == '/' && strings.HasPrefix(l.src[l.off:], "/*"):
			p := Pos{l.line, l.col}
			end := strings.Index(l.src[l.off+2:], "*/")
			if end < 0 {
				l.advance(len(l.src) - l.off)
				return &token{kind: tIllegal, text: "unterminated comment", pos: p}
			}
			l.advance(end + 4)
		default:
			return nil
		}
	}
	return nil
}

func isIdentStart(c byte) bool {
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

func isIdentPart(c byte) bool { return isIdentStart(c) || (c >= '0' && c <= '9') }

func (l *lexer) next() token {
	if t := l.skipSpaceAndComments(); t != nil {
		return *t
	}
	p := Pos{l.line, l.col}
	start := l.off
	if l.off >= len(l.src) {
		return token{kind: tEOF, pos: p, off: start}
	}
	c := l.src[l.off]
	switch {
	case isIdentStart(c):
		e := l.off
		for e < len(l.src) && isIdentPart(l.src[e]) {
			e++
		}
		t := token{kind: tIdent, text: l.src[l.off:e], pos: p, off: start}
		l.advance(e - l.off)
		return t
	case c >= '0' && c <= '9' || (c == '.' && l.off+1 < len(l.src) && l.src[l.off+1] >= '0' && l.src[l.off+1] <= '9'):
		e := l.off
		for e < len(l.src) && l.src[e] >= '0' && l.src[e] <= '9' {
			e++
		}
		if e < len(l.src) && l.src[e] == '.' {
			e++
			for e < len(l.src) && l.src[e] >= '0' && l.src[e] <= '9' {
				e++
			}
		}
		if e < len(l.src) && (l.src[e] == 'e' || l.src[e] == 'E') {
			f := e + 1
			if f < len(l.src) && (l.src[f] == '+' || l.src[f] == '-') {
				f++
			}
			if f < len(l.src) && l.src[f] >= '0' && l.src[f] <= '9' {
				for f < len(l.src) && l.src[f] >= '0' && l.src[f] <= '9' {
					f++
				}
				e = f
			}
		}
		t := token{kind: tNumber, text: l.src[l.off:e], pos: p, off: start}
		l.advance(e - l.off)
		return t
	case c == '\'':
		var b strings.Builder
		i := l.off + 1
		for {
			if i >= len(l.src) {
				l.advance(len(l.src) - l.off)
				return token{kind: tIllegal, text: "unterminated string", pos: p, off: start}
			}
			if l.src[i] == '\'' {
				if i+1 < len(l.src) && l.src[i+1] == '\'' {
					b.WriteByte('\'')
					i += 2
					continue
				}
				break
			}
			b.WriteByte(l.src[i])
			i++
		}
		l.advance(i + 1 - l.off)
		return token{kind: tString, text: b.String(), pos: p, off: start}
	case c == '"' || c == '`':
		end := strings.IndexByte(l.src[l.off+1:], c)
		if end < 0 {
			l.advance(len(l.src) - l.off)
			return token{kind: tIllegal, text: "unterminated quoted identifier", pos: p, off: start}
		}
		t := token{kind: tQuotedIdent, text: l.src[l.off+1 : l.off+1+end], pos: p, off: start}
		l.advance(end + 2)
		return t
	}
	for _, op := range []string{"!=", "<>", "<=", ">=", "||", "${"} {
		if strings.HasPrefix(l.src[l.off:], op) {
			l.advance(2)
			return token{kind: tOp, text: op, pos: p, off: start}
		}
	}
	if strings.IndexByte("(),.[]*+-/%=<>;:{}", c) >= 0 {
		l.advance(1)
		return token{kind: tOp, text: string(c), pos: p, off: start}
	}
	r, n := utf8.DecodeRuneInString(l.src[l.off:])
	l.advance(n)
	return token{kind: tIllegal, text: fmt.Sprintf("character %q", r), pos: p, off: start}
}
