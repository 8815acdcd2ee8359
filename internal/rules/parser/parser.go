// Package parser reads Outpost's streaming SQL rule language into an AST.
//
// A rule file holds one or more statements:
//
//	CREATE RULE overheat VERSION 3
//	  [FOR DEVICES WHERE labels.canary = 'true']
//	AS SELECT deviceid() AS device, avg(temp) AS avg_temp
//	   FROM 'factory/+/sensors/#' [, 'other/filter']
//	   [FORMAT 'json' | 'raw']
//	   [WHERE expr]
//	   [GROUP BY expr, ..., TUMBLINGWINDOW(ss, 10)
//	      [TIMESTAMP BY expr [LATENESS(ss, 5)]]]
//	   [HAVING expr]
//	DO REPUBLISH 'local/${device}' [WITH (qos = 1, retain = true)],
//	   UPLINK LANE 'alarms' TOPIC 'alerts/overheat',
//	   WEBHOOK 'https://example/hook' WITH (timeout = '2s', retries = 3, HEADER 'Authorization' = 'Bearer ${env:TOKEN}'),
//	   FILE 'alerts', FUNCTION 'enrich';
//
// Errors are *Error values collected into an ErrorList, each rendered like a
// compiler diagnostic: `file:line:col: rule NAME: unexpected X, expected Y`.
// The parser recovers at the next CREATE so one file reports every broken
// statement. Expression nesting is limited to MaxDepth, so parsing time is
// linear in the input and the stack is bounded whatever the input.
package parser

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// MaxDepth bounds expression nesting (parentheses, operators, calls).
const MaxDepth = 100

// MaxSource bounds the size of a rule file.
const MaxSource = 1 << 20

// Error is one diagnostic.
type Error struct {
	File string
	Pos  Pos
	Rule string // "" when the error precedes the rule name
	Msg  string
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		b.WriteByte(':')
	}
	fmt.Fprintf(&b, "%d:%d: ", e.Pos.Line, e.Pos.Col)
	if e.Rule != "" {
		fmt.Fprintf(&b, "rule %s: ", e.Rule)
	}
	b.WriteString(e.Msg)
	return b.String()
}

// ErrorList is every diagnostic of a file, in source order.
type ErrorList []*Error

func (l ErrorList) Error() string {
	s := make([]string, len(l))
	for i, e := range l {
		s[i] = e.Error()
	}
	return strings.Join(s, "\n")
}

// Err returns l as an error, or nil when empty.
func (l ErrorList) Err() error {
	if len(l) == 0 {
		return nil
	}
	return l
}

// bailout is panicked to abandon a statement; Parse recovers it.
type bailout struct{}

type parser struct {
	file  string
	src   string
	lx    *lexer
	tok   token
	peekd *token
	rule  string
	errs  ErrorList
	depth int
}

// Parse parses every statement in src. file is used in diagnostics.
func Parse(file, src string) ([]*Rule, error) {
	if len(src) > MaxSource {
		return nil, ErrorList{{File: file, Pos: Pos{1, 1}, Msg: fmt.Sprintf("file is %d bytes, more than the %d allowed", len(src), MaxSource)}}
	}
	p := &parser{file: file, src: src, lx: newLexer(src)}
	p.next()
	var rules []*Rule
	for p.tok.kind != tEOF {
		if p.isOp(";") {
			p.next()
			continue
		}
		r := p.statement()
		if r != nil {
			rules = append(rules, r)
		}
	}
	return rules, p.errs.Err()
}

// ParseExpr parses a standalone expression (used for ${...} templates and
// YAML selectors). base is the position of its first character.
func ParseExpr(src string, base Pos) (Expr, error) {
	p := &parser{src: src, lx: newLexer(src)}
	p.lx.line, p.lx.col = base.Line, base.Col
	var e Expr
	func() {
		defer func() {
			if r := recover(); r != nil {
				if _, ok := r.(bailout); !ok {
					panic(r)
				}
			}
		}()
		p.next()
		e = p.expr()
		if p.tok.kind != tEOF {
			p.failExpected("end of expression")
		}
	}()
	return e, p.errs.Err()
}

func (p *parser) next() {
	if p.peekd != nil {
		p.tok = *p.peekd
		p.peekd = nil
		return
	}
	p.tok = p.lx.next()
}

func (p *parser) peek() token {
	if p.peekd == nil {
		t := p.lx.next()
		p.peekd = &t
	}
	return *p.peekd
}

func (p *parser) errorf(pos Pos, format string, args ...any) {
	p.errs = append(p.errs, &Error{File: p.file, Pos: pos, Rule: p.rule, Msg: fmt.Sprintf(format, args...)})
}

func (p *parser) fail(pos Pos, format string, args ...any) {
	p.errorf(pos, format, args...)
	panic(bailout{})
}

func (p *parser) failExpected(what string) {
	if p.tok.kind == tIllegal {
		p.fail(p.tok.pos, "%s, expected %s", p.tok.text, what)
	}
	p.fail(p.tok.pos, "unexpected %s, expected %s", p.tok.describe(), what)
}

func (p *parser) isKw(kw string) bool {
	return p.tok.kind == tIdent && strings.EqualFold(p.tok.text, kw)
}

func (p *parser) isOp(op string) bool { return p.tok.kind == tOp && p.tok.text == op }

func (p *parser) expectKw(kw string) Pos {
	if !p.isKw(kw) {
		p.failExpected(kw)
	}
	pos := p.tok.pos
	p.next()
	return pos
}

func (p *parser) expectOp(op string) Pos {
	if !p.isOp(op) {
		p.failExpected(fmt.Sprintf("%q", op))
	}
	pos := p.tok.pos
	p.next()
	return pos
}

func (p *parser) ident(what string) (string, Pos) {
	switch {
	case p.tok.kind == tQuotedIdent:
	case p.tok.kind == tIdent && !keywords[strings.ToUpper(p.tok.text)]:
	default:
		p.failExpected(what)
	}
	t := p.tok
	p.next()
	return t.text, t.pos
}

func (p *parser) str(what string) (string, Pos) {
	if p.tok.kind != tString {
		p.failExpected(what)
	}
	t := p.tok
	p.next()
	return t.text, t.pos
}

func (p *parser) integer(what string) (int64, Pos) {
	if p.tok.kind != tNumber {
		p.failExpected(what)
	}
	t := p.tok
	n, err := strconv.ParseInt(t.text, 10, 64)
	if err != nil || n < 0 {
		p.fail(t.pos, "%s must be a non-negative integer, got %s", what, t.text)
	}
	p.next()
	return n, t.pos
}

// statement parses one CREATE RULE; on error it records it, skips to the
// next CREATE and returns nil.
func (p *parser) statement() (r *Rule) {
	start := p.tok
	defer func() {
		if rec := recover(); rec != nil {
			if _, ok := rec.(bailout); !ok {
				panic(rec)
			}
			r = nil
			for p.tok.kind != tEOF && !p.isKw("CREATE") {
				p.next()
			}
		}
		p.rule = ""
	}()
	p.rule = ""
	p.depth = 0
	pos := p.expectKw("CREATE")
	p.expectKw("RULE")
	name, _ := p.ident("rule name")
	if !validName(name) {
		p.fail(start.pos, "rule name %q: use letters, digits, '_' and '-' (at most 128)", name)
	}
	p.rule = name
	r = &Rule{P: pos, File: p.file, Name: name, Version: 1, Format: "json"}
	if p.isKw("VERSION") {
		p.next()
		v, vp := p.integer("version number")
		if v < 1 || v > math.MaxInt32 {
			p.fail(vp, "version must be between 1 and %d", math.MaxInt32)
		}
		r.Version = int(v)
	}
	if p.isKw("FOR") {
		p.next()
		p.expectKw("DEVICES")
		p.expectKw("WHERE")
		r.Devices = p.expr()
	}
	p.expectKw("AS")
	p.selectStmt(r)
	p.expectKw("DO")
	for {
		r.Actions = append(r.Actions, p.action())
		if !p.isOp(",") {
			break
		}
		p.next()
	}
	end := p.tok.off
	if p.isOp(";") {
		end = p.tok.off + 1
		p.next()
	} else if p.tok.kind != tEOF && !p.isKw("CREATE") {
		p.failExpected(`",", ";" or end of rule`)
	}
	r.Source = strings.TrimSpace(p.src[start.off:end])
	return r
}

func validName(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isIdentPart(s[i]) && s[i] != '-' {
			return false
		}
	}
	return true
}

func (p *parser) selectStmt(r *Rule) {
	p.expectKw("SELECT")
	for {
		r.Columns = append(r.Columns, p.column(len(r.Columns)))
		if !p.isOp(",") {
			break
		}
		p.next()
	}
	p.expectKw("FROM")
	for {
		f, fp := p.str("topic filter string")
		if err := ValidFilter(f); err != nil {
			p.fail(fp, "topic filter '%s': %v", f, err)
		}
		r.From = append(r.From, Topic{P: fp, Filter: f})
		if !p.isOp(",") {
			break
		}
		p.next()
	}
	if p.isKw("FORMAT") {
		p.next()
		r.Format, r.FormatP = p.str("format name such as 'json' or 'raw'")
		r.Format = strings.ToLower(r.Format)
	}
	if p.isKw("WHERE") {
		p.next()
		r.Where = p.expr()
	}
	if p.isKw("GROUP") {
		p.next()
		p.expectKw("BY")
		for {
			if w := p.tryWindow(); w != nil {
				if r.Window != nil {
					p.fail(w.P, "only one window per rule")
				}
				r.Window = w
			} else {
				r.GroupBy = append(r.GroupBy, p.expr())
			}
			if !p.isOp(",") {
				break
			}
			p.next()
		}
		if p.isKw("TIMESTAMP") && strings.EqualFold(p.peek().text, "BY") {
			p.next()
			p.next()
			r.TimestampBy = p.expr()
			if p.isKw("LATENESS") {
				p.next()
				p.expectOp("(")
				unit, up := p.unit()
				p.expectOp(",")
				n, np := p.integer("lateness")
				p.expectOp(")")
				_ = up
				r.Lateness = durationOf(p, n, unit, np)
			}
		}
	}
	if p.isKw("HAVING") {
		p.next()
		r.Having = p.expr()
	}
}

func (p *parser) column(i int) Column {
	if p.isOp("*") {
		pos := p.tok.pos
		p.next()
		return Column{P: pos, Star: true, Alias: "*"}
	}
	pos := p.tok.pos
	e := p.expr()
	c := Column{P: pos, Expr: e}
	if p.isKw("AS") {
		p.next()
		c.Alias, _ = p.ident("column alias")
	} else if p.tok.kind == tQuotedIdent || (p.tok.kind == tIdent && !keywords[strings.ToUpper(p.tok.text)]) {
		c.Alias, _ = p.ident("column alias")
	} else {
		c.Alias = deriveName(e, i)
	}
	return c
}

// deriveName names an un-aliased column: a field's last key, a label's key,
// a call's function name, else col_N.
func deriveName(e Expr, i int) string {
	switch x := e.(type) {
	case *Field:
		path := x.Path
		if j := strings.LastIndexAny(path, ".["); j >= 0 {
			if path[j] == '.' {
				return strings.Trim(path[j+1:], `"`)
			}
			return fmt.Sprintf("col_%d", i+1)
		}
		if path == "" {
			return "payload"
		}
		return strings.Trim(path, `"`)
	case *Label:
		return x.Key
	case *Call:
		return x.Name
	}
	return fmt.Sprintf("col_%d", i+1)
}

var windowKinds = map[string]string{
	"tumblingwindow": "tumbling", "hoppingwindow": "hopping", "slidingwindow": "sliding",
	"sessionwindow": "session", "countwindow": "count",
}

var units = map[string]time.Duration{
	"ms": time.Millisecond, "ss": time.Second, "mi": time.Minute, "hh": time.Hour, "dd": 24 * time.Hour,
}

func (p *parser) unit() (string, Pos) {
	if p.tok.kind != tIdent || units[strings.ToLower(p.tok.text)] == 0 {
		p.failExpected("time unit (ms, ss, mi, hh, dd)")
	}
	t := p.tok
	p.next()
	return strings.ToLower(t.text), t.pos
}

func durationOf(p *parser, n int64, unit string, pos Pos) time.Duration {
	u := units[unit]
	if n > int64(math.MaxInt64/u) {
		p.fail(pos, "duration too large")
	}
	return time.Duration(n) * u
}

func (p *parser) tryWindow() *Window {
	if p.tok.kind != tIdent {
		return nil
	}
	kind, ok := windowKinds[strings.ToLower(p.tok.text)]
	if !ok || !(p.peek().kind == tOp && p.peek().text == "(") {
		return nil
	}
	startOff := p.tok.off
	w := &Window{P: p.tok.pos, Kind: kind}
	p.next()
	p.expectOp("(")
	var nums []int64
	var poss []Pos
	unit := ""
	if kind != "count" {
		unit, _ = p.unit()
		p.expectOp(",")
	}
	for {
		n, np := p.integer("window size")
		nums = append(nums, n)
		poss = append(poss, np)
		if !p.isOp(",") {
			break
		}
		p.next()
	}
	end := p.expectOp(")")
	_ = end
	w.Text = strings.Join(strings.Fields(p.src[startOff:p.lastEnd()]), " ")
	argc := map[string][2]int{"tumbling": {1, 1}, "hopping": {2, 2}, "sliding": {1, 1}, "session": {1, 2}, "count": {1, 2}}[kind]
	if len(nums) < argc[0] || len(nums) > argc[1] {
		p.fail(w.P, "%sWINDOW takes %s", strings.ToUpper(kind), map[string]string{
			"tumbling": "(unit, size)", "hopping": "(unit, size, hop)", "sliding": "(unit, size)",
			"session": "(unit, gap[, max_length])", "count": "(count[, every])"}[kind])
	}
	for i, n := range nums {
		if n == 0 {
			p.fail(poss[i], "window sizes must be greater than zero")
		}
	}
	switch kind {
	case "count":
		if nums[0] > 1_000_000 {
			p.fail(poss[0], "count window longer than 1000000")
		}
		w.Count = int(nums[0])
		w.Every = w.Count
		if len(nums) == 2 {
			if nums[1] > nums[0] {
				p.fail(poss[1], "count window step must not exceed its length")
			}
			w.Every = int(nums[1])
		}
	case "session":
		w.Hop = durationOf(p, nums[0], unit, poss[0])
		if len(nums) == 2 {
			w.MaxSize = durationOf(p, nums[1], unit, poss[1])
		}
	default:
		w.Size = durationOf(p, nums[0], unit, poss[0])
		w.Hop = w.Size
		if kind == "hopping" {
			w.Hop = durationOf(p, nums[1], unit, poss[1])
			if w.Hop > w.Size {
				p.fail(poss[1], "hop must not exceed the window size")
			}
			if w.Size/w.Hop > 1000 {
				p.fail(poss[1], "a hopping window may overlap at most 1000 windows")
			}
		}
	}
	return w
}

// lastEnd is the byte offset just past the previous token (approximated by
// the current token's start).
func (p *parser) lastEnd() int {
	if p.tok.kind == tEOF {
		return len(p.src)
	}
	return p.tok.off
}

func (p *parser) action() Action {
	pos := p.tok.pos
	if p.tok.kind != tIdent {
		p.failExpected("action (REPUBLISH, UPLINK, WEBHOOK, FILE, FUNCTION)")
	}
	a := Action{P: pos, Kind: strings.ToUpper(p.tok.text)}
	switch a.Kind {
	case "REPUBLISH":
		p.next()
		a.Target, a.TargetP = p.str("topic string")
	case "UPLINK":
		p.next()
		if p.isKw("LANE") {
			p.next()
			a.Lane, a.LaneP = p.str("lane name string")
		}
		p.expectKw("TOPIC")
		a.Topic, a.TopicP = p.str("topic string")
	case "WEBHOOK":
		p.next()
		a.Target, a.TargetP = p.str("URL string")
	case "FILE":
		p.next()
		a.Target, a.TargetP = p.str("file sink name string")
	case "FUNCTION":
		p.next()
		a.Target, a.TargetP = p.str("function name string")
	default:
		p.failExpected("action (REPUBLISH, UPLINK, WEBHOOK, FILE, FUNCTION)")
	}
	if p.isKw("WITH") {
		p.next()
		p.expectOp("(")
		for {
			var o Option
			o.P = p.tok.pos
			if p.isKw("HEADER") {
				p.next()
				o.Key, _ = p.str("header name string")
				o.Header = true
			} else {
				k, _ := p.ident("option name")
				o.Key = strings.ToLower(k)
			}
			p.expectOp("=")
			o.Value = p.literal()
			a.Options = append(a.Options, o)
			if !p.isOp(",") {
				break
			}
			p.next()
		}
		p.expectOp(")")
	}
	return a
}

func (p *parser) literal() Literal {
	t := p.tok
	switch {
	case t.kind == tString:
		p.next()
		return Literal{P: t.pos, Kind: LitString, Str: t.text}
	case t.kind == tNumber:
		p.next()
		f, err := strconv.ParseFloat(t.text, 64)
		if err != nil {
			p.fail(t.pos, "bad number %s", t.text)
		}
		return Literal{P: t.pos, Kind: LitNumber, Num: f}
	case p.isKw("TRUE"), p.isKw("FALSE"):
		p.next()
		return Literal{P: t.pos, Kind: LitBool, Bool: strings.EqualFold(t.text, "TRUE")}
	}
	p.failExpected("literal value")
	return Literal{}
}

// ---- expressions: precedence climbing --------------------------------------

func (p *parser) enter() {
	p.depth++
	if p.depth > MaxDepth {
		p.fail(p.tok.pos, "expression nested more than %d levels deep", MaxDepth)
	}
}

func (p *parser) leave() { p.depth-- }

func (p *parser) expr() Expr {
	p.enter()
	defer p.leave()
	l := p.andExpr()
	for p.isKw("OR") {
		pos := p.tok.pos
		p.next()
		r := p.andExpr()
		l = &Binary{P: pos, Op: "OR", L: l, R: r}
	}
	return l
}

func (p *parser) andExpr() Expr {
	l := p.notExpr()
	for p.isKw("AND") {
		pos := p.tok.pos
		p.next()
		r := p.notExpr()
		l = &Binary{P: pos, Op: "AND", L: l, R: r}
	}
	return l
}

func (p *parser) notExpr() Expr {
	if p.isKw("NOT") {
		pos := p.tok.pos
		p.next()
		p.enter()
		x := p.notExpr()
		p.leave()
		return &Unary{P: pos, Op: "NOT", X: x}
	}
	return p.cmpExpr()
}

func (p *parser) cmpExpr() Expr {
	l := p.addExpr()
	for {
		pos := p.tok.pos
		switch {
		case p.tok.kind == tOp && (p.tok.text == "=" || p.tok.text == "!=" || p.tok.text == "<>" ||
			p.tok.text == "<" || p.tok.text == "<=" || p.tok.text == ">" || p.tok.text == ">="):
			op := p.tok.text
			if op == "<>" {
				op = "!="
			}
			p.next()
			l = &Binary{P: pos, Op: op, L: l, R: p.addExpr()}
		case p.isKw("IS"):
			p.next()
			not := false
			if p.isKw("NOT") {
				not = true
				p.next()
			}
			p.expectKw("NULL")
			l = &IsNull{P: pos, X: l, Not: not}
		case p.isKw("NOT") || p.isKw("IN") || p.isKw("BETWEEN") || p.isKw("LIKE"):
			not := false
			if p.isKw("NOT") {
				not = true
				p.next()
			}
			switch {
			case p.isKw("IN"):
				p.next()
				p.expectOp("(")
				in := &In{P: pos, X: l, Not: not}
				for {
					in.List = append(in.List, p.expr())
					if !p.isOp(",") {
						break
					}
					p.next()
				}
				p.expectOp(")")
				l = in
			case p.isKw("BETWEEN"):
				p.next()
				lo := p.addExpr()
				p.expectKw("AND")
				hi := p.addExpr()
				l = &Between{P: pos, X: l, Lo: lo, Hi: hi, Not: not}
			case p.isKw("LIKE"):
				p.next()
				l = &Like{P: pos, X: l, Pattern: p.addExpr(), Not: not}
			default:
				p.failExpected("IN, BETWEEN or LIKE")
			}
		default:
			return l
		}
	}
}

func (p *parser) addExpr() Expr {
	l := p.mulExpr()
	for p.tok.kind == tOp && (p.tok.text == "+" || p.tok.text == "-" || p.tok.text == "||") {
		pos, op := p.tok.pos, p.tok.text
		p.next()
		l = &Binary{P: pos, Op: op, L: l, R: p.mulExpr()}
	}
	return l
}

func (p *parser) mulExpr() Expr {
	l := p.unaryExpr()
	for p.tok.kind == tOp && (p.tok.text == "*" || p.tok.text == "/" || p.tok.text == "%") {
		pos, op := p.tok.pos, p.tok.text
		p.next()
		l = &Binary{P: pos, Op: op, L: l, R: p.unaryExpr()}
	}
	return l
}

func (p *parser) unaryExpr() Expr {
	if p.isOp("-") || p.isOp("+") {
		pos, op := p.tok.pos, p.tok.text
		p.next()
		p.enter()
		x := p.unaryExpr()
		p.leave()
		if op == "+" {
			return x
		}
		if lit, ok := x.(*Literal); ok && lit.Kind == LitNumber {
			lit.Num = -lit.Num
			lit.P = pos
			return lit
		}
		return &Unary{P: pos, Op: "-", X: x}
	}
	return p.postfix(p.primary())
}

// postfix applies .key and [n] to a non-field expression.
func (p *parser) postfix(e Expr) Expr {
	var path strings.Builder
	pos := p.tok.pos
	for {
		switch {
		case p.isOp("["):
			p.next()
			n, _ := p.integer("array index")
			p.expectOp("]")
			fmt.Fprintf(&path, "[%d]", n)
		case p.isOp(".") && path.Len() > 0 || p.isOp(".") && isIndexable(e):
			p.next()
			k, _ := p.pathKey()
			if path.Len() > 0 {
				path.WriteByte('.')
			}
			path.WriteString(k)
		default:
			if path.Len() == 0 {
				return e
			}
			if f, ok := e.(*Field); ok {
				sep := "."
				if strings.HasPrefix(path.String(), "[") || f.Path == "" {
					sep = ""
				}
				if f.Path == "" {
					return &Field{P: f.P, Path: path.String()}
				}
				return &Field{P: f.P, Path: f.Path + sep + path.String()}
			}
			return &Index{P: pos, X: e, Path: path.String()}
		}
	}
}

func isIndexable(e Expr) bool {
	switch e.(type) {
	case *Field, *Call, *Index:
		return true
	}
	return false
}

// pathKey reads a key after '.', allowing keywords and quoted names.
func (p *parser) pathKey() (string, Pos) {
	t := p.tok
	switch t.kind {
	case tIdent:
		p.next()
		return t.text, t.pos
	case tQuotedIdent:
		p.next()
		if strings.ContainsAny(t.text, ".[]\"") {
			return `"` + t.text + `"`, t.pos
		}
		return t.text, t.pos
	}
	p.failExpected("field name")
	return "", t.pos
}

func (p *parser) primary() Expr {
	t := p.tok
	switch t.kind {
	case tNumber, tString:
		l := p.literal()
		return &l
	case tQuotedIdent:
		p.next()
		key := t.text
		if strings.ContainsAny(key, ".[]\"") {
			key = `"` + key + `"`
		}
		return &Field{P: t.pos, Path: key}
	case tOp:
		if t.text == "(" {
			p.next()
			e := p.expr()
			p.expectOp(")")
			return e
		}
	case tIdent:
		up := strings.ToUpper(t.text)
		switch up {
		case "NULL":
			p.next()
			return &Literal{P: t.pos, Kind: LitNull}
		case "TRUE", "FALSE":
			l := p.literal()
			return &l
		case "CASE":
			return p.caseExpr()
		case "CAST":
			p.next()
			p.expectOp("(")
			x := p.expr()
			p.expectKw("AS")
			typ, _ := p.ident("type name (number, int, string, bool)")
			p.expectOp(")")
			return &Cast{P: t.pos, X: x, Type: strings.ToLower(typ)}
		}
		if nt := p.peek(); nt.kind == tOp && nt.text == "(" {
			if keywords[up] && up != "TIMESTAMP" {
				p.failExpected("expression")
			}
			p.next()
			p.next()
			c := &Call{P: t.pos, Name: strings.ToLower(t.text)}
			if p.isOp("*") {
				c.Star = true
				p.next()
				p.expectOp(")")
				return c
			}
			if !p.isOp(")") {
				for {
					c.Args = append(c.Args, p.expr())
					if !p.isOp(",") {
						break
					}
					p.next()
				}
			}
			p.expectOp(")")
			return c
		}
		if keywords[up] {
			break
		}
		p.next()
		switch strings.ToLower(t.text) {
		case "labels":
			p.expectOp(".")
			k, _ := p.pathKey()
			return &Label{P: t.pos, Key: strings.Trim(k, `"`)}
		case "payload":
			if !p.isOp(".") && !p.isOp("[") {
				return &Field{P: t.pos, Path: ""}
			}
			if p.isOp(".") {
				p.next()
				k, _ := p.pathKey()
				return &Field{P: t.pos, Path: k}
			}
			return &Field{P: t.pos, Path: ""}
		}
		return &Field{P: t.pos, Path: t.text}
	}
	p.failExpected("expression")
	return nil
}

func (p *parser) caseExpr() Expr {
	pos := p.expectKw("CASE")
	c := &Case{P: pos}
	if !p.isKw("WHEN") {
		c.Operand = p.expr()
	}
	for p.isKw("WHEN") {
		p.next()
		cond := p.expr()
		p.expectKw("THEN")
		c.Whens = append(c.Whens, When{Cond: cond, Result: p.expr()})
	}
	if len(c.Whens) == 0 {
		p.failExpected("WHEN")
	}
	if p.isKw("ELSE") {
		p.next()
		c.Else = p.expr()
	}
	p.expectKw("END")
	return c
}

// ValidFilter checks an MQTT topic filter: non-empty, '+' and '#' occupy a
// whole level, '#' only last [MQTT-4.7.1-1], [MQTT-4.7.1-2].
func ValidFilter(f string) error {
	if f == "" {
		return fmt.Errorf("empty filter")
	}
	if len(f) > 65535 {
		return fmt.Errorf("filter longer than 65535 bytes")
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		switch {
		case l == "#":
			if i != len(levels)-1 {
				return fmt.Errorf("'#' must be the last level")
			}
		case l == "+":
		case strings.ContainsAny(l, "+#"):
			return fmt.Errorf("wildcards must occupy a whole level (level %d is %q)", i+1, l)
		}
	}
	if strings.ContainsRune(f, 0) {
		return fmt.Errorf("filter contains a NUL character")
	}
	return nil
}
