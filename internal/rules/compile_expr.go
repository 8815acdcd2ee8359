package rules

import (
	"fmt"
	"math"
	"regexp"
	"strings"

	"github.com/outpost-edge/outpost/internal/rules/jsonpath"
	"github.com/outpost-edge/outpost/internal/rules/parser"
)

// cexpr is a compiled expression with constant-folding information.
type cexpr struct {
	f     fn
	konst bool
	val   Value
}

func konst(v Value) cexpr { return cexpr{f: func(*evalCtx) Value { return v }, konst: true, val: v} }

// exprMode says what an expression may reference.
type exprMode int

const (
	modeMessage  exprMode = iota // per message: fields, metadata, state functions
	modeGroup                    // per window group: aggregates; message data through implicit last()
	modeSelector                 // FOR DEVICES WHERE: labels and deviceid() only
)

type compiler struct {
	r        *parser.Rule
	env      Env
	errs     parser.ErrorList
	paths    []jsonpath.Path
	pathIdx  map[string]int
	aggs     []aggSpec
	aggIdx   map[string]int
	slots    int // state function call sites
	inAgg    bool
	where    string // clause being compiled, for messages
	rowNames map[string]int
	windowed bool
}

func (cp *compiler) errorf(pos parser.Pos, format string, args ...any) {
	cp.errs = append(cp.errs, &parser.Error{File: cp.r.File, Pos: pos, Rule: cp.r.Name, Msg: fmt.Sprintf(format, args...)})
}

func (cp *compiler) fieldIndex(path string, pos parser.Pos) int {
	if i, ok := cp.pathIdx[path]; ok {
		return i
	}
	p, err := jsonpath.Compile(path)
	if err != nil {
		cp.errorf(pos, "%v", err)
		return -1
	}
	cp.pathIdx[path] = len(cp.paths)
	cp.paths = append(cp.paths, p)
	return len(cp.paths) - 1
}

// compile compiles e in mode.
func (cp *compiler) compile(e parser.Expr, mode exprMode) cexpr {
	if f, ok := e.(*parser.Field); ok && !cp.inAgg {
		if i, ok := cp.rowNames[f.Path]; ok {
			// in templates, a name is an output column first
			return cexpr{f: func(c *evalCtx) Value { return c.row[i] }}
		}
	}
	if mode == modeGroup && !cp.inAgg {
		if call, ok := e.(*parser.Call); ok && aggregates[call.Name] != nil {
			return cp.aggregate(call)
		}
		if !containsAgg(e) && dependsOnMessage(e) {
			return cp.implicitLast(e)
		}
	}
	switch x := e.(type) {
	case *parser.Literal:
		switch x.Kind {
		case parser.LitBool:
			return konst(boolean(x.Bool))
		case parser.LitNumber:
			return konst(num(x.Num))
		case parser.LitString:
			return konst(str(x.Str))
		}
		return konst(null)
	case *parser.Field:
		if mode == modeSelector {
			cp.errorf(x.P, "FOR DEVICES WHERE may use labels.KEY and deviceid() only, not payload field %s", x.Path)
			return konst(null)
		}
		if x.Path == "" {
			return cexpr{f: func(c *evalCtx) Value {
				return Value{K: KJSON, S: bytesView(c.payload)}
			}}
		}
		i := cp.fieldIndex(x.Path, x.P)
		if i < 0 {
			return konst(null)
		}
		return cexpr{f: func(c *evalCtx) Value {
			v, ok := fromResult(c.res[i])
			if !ok {
				c.errs |= 1 << reasonMissingField
			}
			return v
		}}
	case *parser.Label:
		key := x.Key
		return cexpr{f: func(c *evalCtx) Value {
			l := c.deviceLabels()
			if v, ok := l[key]; ok {
				return str(v)
			}
			return null
		}}
	case *parser.Unary:
		a := cp.compile(x.X, mode)
		var f fn
		if x.Op == "NOT" {
			af := a.f
			f = func(c *evalCtx) Value {
				v := af(c)
				switch v.K {
				case KNull:
					return null
				case KBool:
					return boolean(v.N == 0)
				}
				return c.fail(reasonTypeMismatch)
			}
		} else {
			af := a.f
			f = func(c *evalCtx) Value {
				v := af(c)
				switch v.K {
				case KNull:
					return null
				case KNum:
					return num(-v.N)
				}
				return c.fail(reasonTypeMismatch)
			}
		}
		return fold(f, a)
	case *parser.Binary:
		return cp.binary(x, mode)
	case *parser.IsNull:
		a := cp.compile(x.X, mode)
		af, not := a.f, x.Not
		return fold(func(c *evalCtx) Value {
			prev := c.errs & (1 << reasonMissingField)
			v := af(c)
			c.errs = c.errs&^(1<<reasonMissingField) | prev // IS NULL is how you test for absence
			return boolean(v.isNull() != not)
		}, a)
	case *parser.In:
		a := cp.compile(x.X, mode)
		list := make([]fn, len(x.List))
		parts := []cexpr{a}
		for i, el := range x.List {
			ce := cp.compile(el, mode)
			list[i] = ce.f
			parts = append(parts, ce)
		}
		af, not := a.f, x.Not
		return fold(func(c *evalCtx) Value {
			v := af(c)
			if v.isNull() {
				return null
			}
			sawNull := false
			for _, lf := range list {
				w := lf(c)
				if w.isNull() {
					sawNull = true
					continue
				}
				if w.K == v.K && equal(v, w) {
					return boolean(!not)
				}
			}
			if sawNull {
				return null
			}
			return boolean(not)
		}, parts...)
	case *parser.Between:
		a, lo, hi := cp.compile(x.X, mode), cp.compile(x.Lo, mode), cp.compile(x.Hi, mode)
		af, lf, hf, not := a.f, lo.f, hi.f, x.Not
		return fold(func(c *evalCtx) Value {
			v, l, h := af(c), lf(c), hf(c)
			if v.isNull() || l.isNull() || h.isNull() {
				return null
			}
			c1, ok1 := compare(v, l)
			c2, ok2 := compare(v, h)
			if !ok1 || !ok2 {
				return c.fail(reasonTypeMismatch)
			}
			return boolean((c1 >= 0 && c2 <= 0) != not)
		}, a, lo, hi)
	case *parser.Like:
		a, p := cp.compile(x.X, mode), cp.compile(x.Pattern, mode)
		af, not := a.f, x.Not
		if p.konst {
			if p.val.K != KStr {
				cp.errorf(x.Pattern.Position(), "LIKE pattern must be a string")
				return konst(null)
			}
			m := likeMatcher(p.val.S)
			return fold(func(c *evalCtx) Value {
				v := af(c)
				if v.isNull() {
					return null
				}
				if v.K != KStr {
					return c.fail(reasonTypeMismatch)
				}
				return boolean(m(v.S) != not)
			}, a)
		}
		pf := p.f
		return cexpr{f: func(c *evalCtx) Value {
			v, pv := af(c), pf(c)
			if v.isNull() || pv.isNull() {
				return null
			}
			if v.K != KStr || pv.K != KStr {
				return c.fail(reasonTypeMismatch)
			}
			return boolean(likeMatcher(pv.S)(v.S) != not)
		}}
	case *parser.Case:
		return cp.caseExpr(x, mode)
	case *parser.Cast:
		a := cp.compile(x.X, mode)
		conv, ok := casts[x.Type]
		if !ok {
			cp.errorf(x.P, "unknown type %q in CAST (number, int, string, bool)", x.Type)
			return konst(null)
		}
		af := a.f
		return fold(func(c *evalCtx) Value { return conv(c, af(c)) }, a)
	case *parser.Index:
		a := cp.compile(x.X, mode)
		p, err := jsonpath.Compile(x.Path)
		if err != nil {
			cp.errorf(x.P, "%v", err)
			return konst(null)
		}
		af := a.f
		return fold(func(c *evalCtx) Value {
			v := af(c)
			if v.isNull() {
				return null
			}
			if v.K != KJSON {
				return c.fail(reasonTypeMismatch)
			}
			r, _ := fromResult(p.Get([]byte(v.S)))
			return r
		}, a)
	case *parser.Call:
		return cp.call(x, mode)
	}
	cp.errorf(e.Position(), "unsupported expression")
	return konst(null)
}

// fold evaluates f once at compile time when all parts are constant.
func fold(f fn, parts ...cexpr) cexpr {
	for _, p := range parts {
		if !p.konst {
			return cexpr{f: f}
		}
	}
	c := &evalCtx{}
	v := f(c)
	if c.errs != 0 {
		return cexpr{f: f} // keep the run-time error accounting
	}
	return konst(v.clone())
}

func (cp *compiler) binary(x *parser.Binary, mode exprMode) cexpr {
	l, r := cp.compile(x.L, mode), cp.compile(x.R, mode)
	lf, rf := l.f, r.f
	var f fn
	switch x.Op {
	case "AND":
		f = func(c *evalCtx) Value {
			a := lf(c)
			if a.K == KBool && a.N == 0 {
				return vFalse
			}
			b := rf(c)
			if (a.K != KBool && a.K != KNull) || (b.K != KBool && b.K != KNull) {
				return c.fail(reasonTypeMismatch)
			}
			if b.K == KBool && b.N == 0 {
				return vFalse
			}
			if a.isNull() || b.isNull() {
				return null
			}
			return vTrue
		}
	case "OR":
		f = func(c *evalCtx) Value {
			a := lf(c)
			if a.K == KBool && a.N != 0 {
				return vTrue
			}
			b := rf(c)
			if (a.K != KBool && a.K != KNull) || (b.K != KBool && b.K != KNull) {
				return c.fail(reasonTypeMismatch)
			}
			if b.K == KBool && b.N != 0 {
				return vTrue
			}
			if a.isNull() || b.isNull() {
				return null
			}
			return vFalse
		}
	case "+", "-", "*", "/", "%":
		op := x.Op[0]
		if r.konst && r.val.K == KNum && op != '/' && op != '%' {
			k := r.val.N
			f = func(c *evalCtx) Value {
				a := lf(c)
				if a.K != KNum {
					if a.isNull() {
						return null
					}
					return c.fail(reasonTypeMismatch)
				}
				return num(arith(op, a.N, k))
			}
			break
		}
		f = func(c *evalCtx) Value {
			a, b := lf(c), rf(c)
			if a.K != KNum || b.K != KNum {
				if a.isNull() || b.isNull() {
					return null
				}
				return c.fail(reasonTypeMismatch)
			}
			if (op == '/' || op == '%') && b.N == 0 {
				return c.fail(reasonDivZero)
			}
			return num(arith(op, a.N, b.N))
		}
	case "||":
		f = func(c *evalCtx) Value {
			a, b := lf(c), rf(c)
			if a.isNull() || b.isNull() {
				return null
			}
			return str(toString(a) + toString(b))
		}
	case "=", "!=":
		neg := x.Op == "!="
		f = func(c *evalCtx) Value {
			a, b := lf(c), rf(c)
			if a.isNull() || b.isNull() {
				return null
			}
			if a.K != b.K {
				return c.fail(reasonTypeMismatch)
			}
			return boolean(equal(a, b) != neg)
		}
	case "<", "<=", ">", ">=":
		op := x.Op
		if r.konst && r.val.K == KNum {
			k := r.val.N
			f = func(c *evalCtx) Value {
				a := lf(c)
				if a.K != KNum {
					if a.isNull() {
						return null
					}
					return c.fail(reasonTypeMismatch)
				}
				return boolean(cmpOp(op, a.N, k))
			}
			break
		}
		f = func(c *evalCtx) Value {
			a, b := lf(c), rf(c)
			if a.isNull() || b.isNull() {
				return null
			}
			n, ok := compare(a, b)
			if !ok {
				return c.fail(reasonTypeMismatch)
			}
			return boolean(cmpOp(op, float64(n), 0))
		}
	default:
		cp.errorf(x.P, "unknown operator %s", x.Op)
		return konst(null)
	}
	return fold(f, l, r)
}

func cmpOp(op string, a, b float64) bool {
	switch op {
	case "<":
		return a < b
	case "<=":
		return a <= b
	case ">":
		return a > b
	}
	return a >= b
}

func arith(op byte, a, b float64) float64 {
	switch op {
	case '+':
		return a + b
	case '-':
		return a - b
	case '*':
		return a * b
	case '/':
		return a / b
	}
	return math.Mod(a, b)
}

func (cp *compiler) caseExpr(x *parser.Case, mode exprMode) cexpr {
	type arm struct{ cond, res fn }
	var operand fn
	if x.Operand != nil {
		operand = cp.compile(x.Operand, mode).f
	}
	arms := make([]arm, len(x.Whens))
	for i, w := range x.Whens {
		arms[i] = arm{cp.compile(w.Cond, mode).f, cp.compile(w.Result, mode).f}
	}
	els := func(*evalCtx) Value { return null }
	if x.Else != nil {
		els = cp.compile(x.Else, mode).f
	}
	if operand != nil {
		return cexpr{f: func(c *evalCtx) Value {
			v := operand(c)
			for _, a := range arms {
				w := a.cond(c)
				if !v.isNull() && w.K == v.K && equal(v, w) {
					return a.res(c)
				}
			}
			return els(c)
		}}
	}
	return cexpr{f: func(c *evalCtx) Value {
		for _, a := range arms {
			if a.cond(c).truthy() {
				return a.res(c)
			}
		}
		return els(c)
	}}
}

// likeMatcher compiles a LIKE pattern: % any run, _ one rune, \ escapes.
func likeMatcher(p string) func(string) bool {
	var b strings.Builder
	b.WriteString("(?s)^")
	esc := false
	for _, r := range p {
		switch {
		case esc:
			b.WriteString(regexp.QuoteMeta(string(r)))
			esc = false
		case r == '\\':
			esc = true
		case r == '%':
			b.WriteString(".*")
		case r == '_':
			b.WriteString(".")
		default:
			b.WriteString(regexp.QuoteMeta(string(r)))
		}
	}
	b.WriteString("$")
	// fast paths for prefix%, %suffix, %infix% without other wildcards
	if !strings.ContainsAny(p, "_\\") {
		inner := strings.Trim(p, "%")
		if !strings.Contains(inner, "%") {
			pre, suf := strings.HasPrefix(p, "%"), strings.HasSuffix(p, "%")
			switch {
			case pre && suf && len(p) >= 2:
				return func(s string) bool { return strings.Contains(s, inner) }
			case suf:
				return func(s string) bool { return strings.HasPrefix(s, inner) }
			case pre:
				return func(s string) bool { return strings.HasSuffix(s, inner) }
			default:
				return func(s string) bool { return s == inner }
			}
		}
	}
	re := regexp.MustCompile(b.String())
	return re.MatchString
}

// containsAgg reports whether e contains an aggregate call.
func containsAgg(e parser.Expr) bool {
	found := false
	walk(e, func(x parser.Expr) {
		if c, ok := x.(*parser.Call); ok && aggregates[c.Name] != nil {
			found = true
		}
	})
	return found
}

// dependsOnMessage reports whether e reads anything from the current
// message (fields, metadata, per-device state).
func dependsOnMessage(e parser.Expr) bool {
	found := false
	walk(e, func(x parser.Expr) {
		switch n := x.(type) {
		case *parser.Field, *parser.Label:
			found = true
		case *parser.Call:
			if f := functions()[n.Name]; f != nil && f.message {
				found = true
			}
		}
	})
	return found
}

// walk calls fn for e and every sub-expression.
func walk(e parser.Expr, fn func(parser.Expr)) {
	if e == nil {
		return
	}
	fn(e)
	switch x := e.(type) {
	case *parser.Unary:
		walk(x.X, fn)
	case *parser.Binary:
		walk(x.L, fn)
		walk(x.R, fn)
	case *parser.IsNull:
		walk(x.X, fn)
	case *parser.In:
		walk(x.X, fn)
		for _, l := range x.List {
			walk(l, fn)
		}
	case *parser.Between:
		walk(x.X, fn)
		walk(x.Lo, fn)
		walk(x.Hi, fn)
	case *parser.Like:
		walk(x.X, fn)
		walk(x.Pattern, fn)
	case *parser.Case:
		walk(x.Operand, fn)
		for _, w := range x.Whens {
			walk(w.Cond, fn)
			walk(w.Result, fn)
		}
		walk(x.Else, fn)
	case *parser.Call:
		for _, a := range x.Args {
			walk(a, fn)
		}
	case *parser.Cast:
		walk(x.X, fn)
	case *parser.Index:
		walk(x.X, fn)
	}
}
