package rules

import (
	"fmt"
	"github.com/outpost-edge/outpost/internal/config"
	"math"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/outpost-edge/outpost/internal/rules/parser"
)

// funcSpec describes a scalar function.
type funcSpec struct {
	min, max int // arity; max < 0: variadic
	impl     func(c *evalCtx, a []Value) Value
	// message: reads the current message (metadata, state); such calls are
	// evaluated per message and, in windowed rules, through implicit last().
	message bool
	// volatile: not constant-foldable (now()).
	volatile bool
	// special compiles the call itself (literal-only arguments, state slots).
	special func(cp *compiler, x *parser.Call, args []cexpr, mode exprMode) cexpr
	sig     string // signature for error messages and docs
}

var (
	functionsOnce sync.Once
	functionTable map[string]*funcSpec
)

// functions returns the built-in function table, built on first use: an
// agent with the rule engine off never pays for it (it was an init of some
// 7 KB of code and 80 allocations at every start).
func functions() map[string]*funcSpec {
	functionsOnce.Do(func() { functionTable = buildFunctions() })
	return functionTable
}

func num1(f func(float64) float64) func(*evalCtx, []Value) Value {
	return func(c *evalCtx, a []Value) Value {
		if a[0].K != KNum {
			if a[0].isNull() {
				return null
			}
			return c.fail(reasonTypeMismatch)
		}
		r := f(a[0].N)
		if math.IsNaN(r) {
			return c.fail(reasonBadArgument)
		}
		return num(r)
	}
}

func str1(f func(string) Value) func(*evalCtx, []Value) Value {
	return func(c *evalCtx, a []Value) Value {
		if a[0].K != KStr {
			if a[0].isNull() {
				return null
			}
			return c.fail(reasonTypeMismatch)
		}
		return f(a[0].S)
	}
}

func buildFunctions() map[string]*funcSpec {
	functions := map[string]*funcSpec{
		// math
		"abs":   {min: 1, max: 1, impl: num1(math.Abs), sig: "abs(x)"},
		"floor": {min: 1, max: 1, impl: num1(math.Floor), sig: "floor(x)"},
		"ceil":  {min: 1, max: 1, impl: num1(math.Ceil), sig: "ceil(x)"},
		"sqrt":  {min: 1, max: 1, impl: num1(math.Sqrt), sig: "sqrt(x)"},
		"exp":   {min: 1, max: 1, impl: num1(math.Exp), sig: "exp(x)"},
		"ln":    {min: 1, max: 1, impl: num1(logOrNaN(math.Log)), sig: "ln(x)"},
		"log": {min: 1, max: 2, sig: "log(x[, base])", impl: func(c *evalCtx, a []Value) Value {
			if !allNum(c, a) {
				return c.fail(reasonTypeMismatch)
			}
			if a[0].N <= 0 {
				return c.fail(reasonBadArgument)
			}
			if len(a) == 1 {
				return num(math.Log10(a[0].N))
			}
			if a[1].N <= 0 || a[1].N == 1 {
				return c.fail(reasonBadArgument)
			}
			return num(math.Log(a[0].N) / math.Log(a[1].N))
		}},
		"pow": {min: 2, max: 2, sig: "pow(x, y)", impl: func(c *evalCtx, a []Value) Value {
			if !allNum(c, a) {
				return c.fail(reasonTypeMismatch)
			}
			r := math.Pow(a[0].N, a[1].N)
			if math.IsNaN(r) {
				return c.fail(reasonBadArgument)
			}
			return num(r)
		}},
		"mod": {min: 2, max: 2, sig: "mod(x, y)", impl: func(c *evalCtx, a []Value) Value {
			if !allNum(c, a) {
				return c.fail(reasonTypeMismatch)
			}
			if a[1].N == 0 {
				return c.fail(reasonDivZero)
			}
			return num(math.Mod(a[0].N, a[1].N))
		}},
		"round": {min: 1, max: 2, sig: "round(x[, digits])", impl: func(c *evalCtx, a []Value) Value {
			if !allNum(c, a) {
				return c.fail(reasonTypeMismatch)
			}
			if len(a) == 1 {
				return num(math.Round(a[0].N))
			}
			d := math.Pow(10, math.Trunc(a[1].N))
			return num(math.Round(a[0].N*d) / d)
		}},
		// strings
		"lower":  {min: 1, max: 1, impl: str1(func(s string) Value { return str(strings.ToLower(s)) }), sig: "lower(s)"},
		"upper":  {min: 1, max: 1, impl: str1(func(s string) Value { return str(strings.ToUpper(s)) }), sig: "upper(s)"},
		"trim":   {min: 1, max: 1, impl: str1(func(s string) Value { return str(strings.TrimSpace(s)) }), sig: "trim(s)"},
		"length": {min: 1, max: 1, impl: str1(func(s string) Value { return num(float64(utf8.RuneCountInString(s))) }), sig: "length(s)"},
		"concat": {min: 1, max: -1, sig: "concat(a, b, ...)", impl: func(c *evalCtx, a []Value) Value {
			var b strings.Builder
			for _, v := range a {
				b.WriteString(toString(v))
			}
			return str(b.String())
		}},
		"substring": {min: 2, max: 3, sig: "substring(s, start[, end])", impl: func(c *evalCtx, a []Value) Value {
			if a[0].isNull() {
				return null
			}
			if a[0].K != KStr || !allNum(c, a[1:]) {
				return c.fail(reasonTypeMismatch)
			}
			r := []rune(a[0].S)
			start, end := int(a[1].N), len(r)
			if len(a) == 3 {
				end = int(a[2].N)
			}
			start, end = max(0, min(start, len(r))), max(0, min(end, len(r)))
			if start >= end {
				return str("")
			}
			return str(string(r[start:end]))
		}},
		"split": {min: 2, max: 2, sig: "split(s, sep)", impl: func(c *evalCtx, a []Value) Value {
			if a[0].isNull() || a[1].isNull() {
				return null
			}
			if a[0].K != KStr || a[1].K != KStr {
				return c.fail(reasonTypeMismatch)
			}
			b := []byte{'['}
			for i, p := range strings.Split(a[0].S, a[1].S) {
				if i > 0 {
					b = append(b, ',')
				}
				b = appendQuoted(b, p)
			}
			return Value{K: KJSON, S: string(append(b, ']'))}
		}},
		"replace": {min: 3, max: 3, sig: "replace(s, old, new)", impl: func(c *evalCtx, a []Value) Value {
			if a[0].isNull() {
				return null
			}
			if a[0].K != KStr || a[1].K != KStr || a[2].K != KStr {
				return c.fail(reasonTypeMismatch)
			}
			return str(strings.ReplaceAll(a[0].S, a[1].S, a[2].S))
		}},
		"startswith":   {min: 2, max: 2, sig: "startswith(s, prefix)", impl: strPred(strings.HasPrefix)},
		"endswith":     {min: 2, max: 2, sig: "endswith(s, suffix)", impl: strPred(strings.HasSuffix)},
		"regexp_match": {min: 2, max: 2, sig: "regexp_match(s, 'pattern')", special: compileRegexp},
		// conversion
		"to_number": {min: 1, max: 1, sig: "to_number(x)", impl: func(c *evalCtx, a []Value) Value { return castNumber(c, a[0]) }},
		"to_string": {min: 1, max: 1, sig: "to_string(x)", impl: func(c *evalCtx, a []Value) Value { return castString(c, a[0]) }},
		"coalesce": {min: 1, max: -1, sig: "coalesce(a, b, ...)", impl: func(c *evalCtx, a []Value) Value {
			for _, v := range a {
				if !v.isNull() {
					return v
				}
			}
			return null
		}},
		// time
		"now": {min: 0, max: 0, volatile: true, sig: "now()", impl: func(c *evalCtx, _ []Value) Value {
			return num(float64(c.now.UnixMilli()))
		}},
		"timestamp": {min: 0, max: 0, message: true, sig: "timestamp()", impl: func(c *evalCtx, _ []Value) Value {
			if c.msg == nil || c.msg.Received.IsZero() {
				return num(float64(c.now.UnixMilli()))
			}
			return num(float64(c.msg.Received.UnixMilli()))
		}},
		"format_time": {min: 2, max: 3, sig: "format_time(ms, layout[, zone])", special: compileFormatTime},
		"parse_time":  {min: 1, max: 2, sig: "parse_time(s[, layout])", special: compileParseTime},
		// message metadata
		"topic": {min: 0, max: 1, message: true, sig: "topic([level])", impl: func(c *evalCtx, a []Value) Value {
			if len(a) == 0 {
				return str(c.msg.Topic)
			}
			if a[0].K != KNum {
				return c.fail(reasonTypeMismatch)
			}
			if l, ok := topicLevel(c.msg.Topic, int(a[0].N)); ok {
				return str(l)
			}
			return null
		}},
		"clientid": {min: 0, max: 0, message: true, sig: "clientid()", impl: func(c *evalCtx, _ []Value) Value { return str(c.msg.ClientID) }},
		"deviceid": {min: 0, max: 0, message: true, sig: "deviceid()", impl: func(c *evalCtx, _ []Value) Value { return str(c.msg.DeviceID) }},
		"qos":      {min: 0, max: 0, message: true, sig: "qos()", impl: func(c *evalCtx, _ []Value) Value { return num(float64(c.msg.QoS)) }},
		"retain":   {min: 0, max: 0, message: true, sig: "retain()", impl: func(c *evalCtx, _ []Value) Value { return boolean(c.msg.Retain) }},
		"payload": {min: 0, max: 0, message: true, sig: "payload()", impl: func(c *evalCtx, _ []Value) Value {
			return str(bytesView(c.msg.Payload))
		}},
		"label": {min: 1, max: 1, message: true, sig: "label('key')", impl: func(c *evalCtx, a []Value) Value {
			if a[0].K != KStr {
				return c.fail(reasonTypeMismatch)
			}
			if v, ok := c.deviceLabels()[a[0].S]; ok {
				return str(v)
			}
			return null
		}},
		"window_start": {min: 0, max: 0, sig: "window_start()", special: compileWindowBound(true)},
		"window_end":   {min: 0, max: 0, sig: "window_end()", special: compileWindowBound(false)},
		// per-device state
		"changed":  {min: 1, max: 1, message: true, sig: "changed(x)", special: compileState("changed")},
		"deadband": {min: 2, max: 2, message: true, sig: "deadband(x, delta)", special: compileState("deadband")},
		"lag":      {min: 1, max: 2, message: true, sig: "lag(x[, default])", special: compileState("lag")},
		"rate":     {min: 1, max: 1, message: true, sig: "rate(x)", special: compileState("rate")},
	}
	functions["power"] = functions["pow"]
	functions["fn"] = userFnSpec
	return functions
}

func logOrNaN(f func(float64) float64) func(float64) float64 {
	return func(x float64) float64 {
		if x <= 0 {
			return math.NaN()
		}
		return f(x)
	}
}

func allNum(c *evalCtx, a []Value) bool {
	for _, v := range a {
		if v.K != KNum {
			return false
		}
	}
	return true
}

func strPred(f func(s, t string) bool) func(*evalCtx, []Value) Value {
	return func(c *evalCtx, a []Value) Value {
		if a[0].isNull() || a[1].isNull() {
			return null
		}
		if a[0].K != KStr || a[1].K != KStr {
			return c.fail(reasonTypeMismatch)
		}
		return boolean(f(a[0].S, a[1].S))
	}
}

// topicLevel returns level n (1-based) of topic without allocating.
func topicLevel(topic string, n int) (string, bool) {
	if n < 1 {
		return "", false
	}
	for i := 1; ; i++ {
		j := strings.IndexByte(topic, '/')
		if i == n {
			if j < 0 {
				return topic, true
			}
			return topic[:j], true
		}
		if j < 0 {
			return "", false
		}
		topic = topic[j+1:]
	}
}

var casts = map[string]func(*evalCtx, Value) Value{
	"number": castNumber, "float": castNumber, "double": castNumber,
	"int": func(c *evalCtx, v Value) Value {
		n := castNumber(c, v)
		if n.K == KNum {
			n.N = math.Trunc(n.N)
		}
		return n
	},
	"string": castString, "bool": castBool, "boolean": castBool,
}

func castNumber(c *evalCtx, v Value) Value {
	switch v.K {
	case KNum, KNull:
		return v
	case KBool:
		return num(v.N)
	case KStr:
		f, err := strconv.ParseFloat(strings.TrimSpace(v.S), 64)
		if err != nil {
			return c.fail(reasonBadArgument)
		}
		return num(f)
	}
	return c.fail(reasonTypeMismatch)
}

func castString(c *evalCtx, v Value) Value {
	if v.isNull() || v.K == KStr {
		return v
	}
	return str(toString(v))
}

func castBool(c *evalCtx, v Value) Value {
	switch v.K {
	case KBool, KNull:
		return v
	case KNum:
		return boolean(v.N != 0)
	case KStr:
		b, err := strconv.ParseBool(strings.TrimSpace(v.S))
		if err != nil {
			return c.fail(reasonBadArgument)
		}
		return boolean(b)
	}
	return c.fail(reasonTypeMismatch)
}

func compileRegexp(cp *compiler, x *parser.Call, args []cexpr, _ exprMode) cexpr {
	if !args[1].konst || args[1].val.K != KStr {
		cp.errorf(x.Args[1].Position(), "regexp_match: the pattern must be a string literal")
		return konst(null)
	}
	re, err := regexp.Compile(args[1].val.S)
	if err != nil {
		cp.errorf(x.Args[1].Position(), "regexp_match: %v", err)
		return konst(null)
	}
	s := args[0].f
	return fold(func(c *evalCtx) Value {
		v := s(c)
		if v.isNull() {
			return null
		}
		if v.K != KStr {
			return c.fail(reasonTypeMismatch)
		}
		return boolean(re.MatchString(v.S))
	}, args[0])
}

var namedLayouts = map[string]string{
	"rfc3339": time.RFC3339, "rfc3339nano": time.RFC3339Nano, "iso8601": "2006-01-02T15:04:05.000Z07:00",
	"date": time.DateOnly, "datetime": time.DateTime, "time": time.TimeOnly, "kitchen": time.Kitchen,
}

func layoutArg(cp *compiler, x *parser.Call, args []cexpr, i int) (string, bool) {
	if i >= len(args) {
		return time.RFC3339Nano, true
	}
	if !args[i].konst || args[i].val.K != KStr {
		cp.errorf(x.Args[i].Position(), "%s: the layout must be a string literal", x.Name)
		return "", false
	}
	if l, ok := namedLayouts[strings.ToLower(args[i].val.S)]; ok {
		return l, true
	}
	return args[i].val.S, true
}

func compileFormatTime(cp *compiler, x *parser.Call, args []cexpr, _ exprMode) cexpr {
	layout, ok := layoutArg(cp, x, args, 1)
	if !ok {
		return konst(null)
	}
	loc := time.UTC
	if len(args) == 3 {
		if !args[2].konst || args[2].val.K != KStr {
			cp.errorf(x.Args[2].Position(), "format_time: the zone must be a string literal")
			return konst(null)
		}
		l, err := time.LoadLocation(args[2].val.S)
		if err != nil {
			cp.errorf(x.Args[2].Position(), "format_time: %v", err)
			return konst(null)
		}
		loc = l
	}
	ms := args[0].f
	return fold(func(c *evalCtx) Value {
		v := ms(c)
		if v.isNull() {
			return null
		}
		if v.K != KNum {
			return c.fail(reasonTypeMismatch)
		}
		return str(time.UnixMilli(int64(v.N)).In(loc).Format(layout))
	}, args[0])
}

func compileParseTime(cp *compiler, x *parser.Call, args []cexpr, _ exprMode) cexpr {
	layout, ok := layoutArg(cp, x, args, 1)
	if !ok {
		return konst(null)
	}
	s := args[0].f
	return fold(func(c *evalCtx) Value {
		v := s(c)
		if v.isNull() {
			return null
		}
		if v.K != KStr {
			return c.fail(reasonTypeMismatch)
		}
		t, err := time.Parse(layout, v.S)
		if err != nil {
			return c.fail(reasonBadArgument)
		}
		return num(float64(t.UnixMilli()))
	}, args[0])
}

func compileWindowBound(start bool) func(*compiler, *parser.Call, []cexpr, exprMode) cexpr {
	return func(cp *compiler, x *parser.Call, _ []cexpr, mode exprMode) cexpr {
		if !cp.windowed || mode != modeGroup {
			cp.errorf(x.P, "%s() is only valid in the SELECT or HAVING of a windowed rule", x.Name)
			return konst(null)
		}
		return cexpr{f: func(c *evalCtx) Value {
			if start {
				return num(float64(c.win.start / 1e6))
			}
			return num(float64(c.win.end / 1e6))
		}}
	}
}

// ---- per-device state functions ---------------------------------------------

// stateSlot is one call site's memory for one device.
type stateSlot struct {
	V   Value `json:"v"`
	T   int64 `json:"t,omitempty"` // unix ns of V (rate)
	Set bool  `json:"set,omitempty"`
}

// devState is a device's state for one rule.
type devState struct {
	Slots []stateSlot `json:"slots"`
}

func compileState(kind string) func(*compiler, *parser.Call, []cexpr, exprMode) cexpr {
	return func(cp *compiler, x *parser.Call, args []cexpr, mode exprMode) cexpr {
		if mode == modeSelector {
			cp.errorf(x.P, "%s() is not allowed in FOR DEVICES WHERE", x.Name)
			return konst(null)
		}
		slot := cp.slots
		cp.slots++
		a := args[0].f
		switch kind {
		case "changed":
			return cexpr{f: func(c *evalCtx) Value {
				v := a(c)
				s := &c.dev.Slots[slot]
				if s.Set && v.K == s.V.K && (v.isNull() || equal(v, s.V)) {
					return vFalse
				}
				s.V, s.Set = v.clone(), true
				return vTrue
			}}
		case "deadband":
			d := args[1].f
			return cexpr{f: func(c *evalCtx) Value {
				v, dv := a(c), d(c)
				if v.isNull() || dv.isNull() {
					return null
				}
				if v.K != KNum || dv.K != KNum {
					return c.fail(reasonTypeMismatch)
				}
				s := &c.dev.Slots[slot]
				if s.Set && math.Abs(v.N-s.V.N) < dv.N {
					return vFalse
				}
				s.V, s.Set = v, true
				return vTrue
			}}
		case "lag":
			def := func(*evalCtx) Value { return null }
			if len(args) == 2 {
				def = args[1].f
			}
			return cexpr{f: func(c *evalCtx) Value {
				v := a(c)
				s := &c.dev.Slots[slot]
				prev := def(c)
				if s.Set {
					prev = s.V
				}
				s.V, s.Set = v.clone(), true
				return prev
			}}
		default: // rate
			return cexpr{f: func(c *evalCtx) Value {
				v := a(c)
				if v.isNull() {
					return null
				}
				if v.K != KNum {
					return c.fail(reasonTypeMismatch)
				}
				s := &c.dev.Slots[slot]
				t := c.evTime
				prev, prevT, had := s.V, s.T, s.Set
				s.V, s.T, s.Set = v, t, true
				if !had || t <= prevT {
					return null
				}
				return num((v.N - prev.N) / (float64(t-prevT) / 1e9))
			}}
		}
	}
}

// ---- calls ------------------------------------------------------------------

func (cp *compiler) call(x *parser.Call, mode exprMode) cexpr {
	if ag := aggregates[x.Name]; ag != nil {
		switch {
		case cp.inAgg:
			cp.errorf(x.P, "aggregate %s() cannot be nested in another aggregate", x.Name)
		case cp.where == "WHERE":
			cp.errorf(x.P, "aggregate %s() is not allowed in WHERE; use HAVING", x.Name)
		case cp.where == "GROUP BY":
			cp.errorf(x.P, "aggregate %s() is not allowed in GROUP BY", x.Name)
		case mode == modeSelector:
			cp.errorf(x.P, "aggregate %s() is not allowed in FOR DEVICES WHERE", x.Name)
		default:
			cp.errorf(x.P, "aggregate %s() needs a window: add GROUP BY ..., TUMBLINGWINDOW(ss, 10) (or another window)", x.Name)
		}
		return konst(null)
	}
	f := functions()[x.Name]
	if f == nil {
		if windowKind(x.Name) {
			cp.errorf(x.P, "%s() is only valid in GROUP BY", x.Name)
		} else {
			cp.errorf(x.P, "unknown function %s()%s", x.Name, suggest(x.Name))
		}
		return konst(null)
	}
	if x.Star {
		cp.errorf(x.P, "%s(*): only count(*) takes *", x.Name)
		return konst(null)
	}
	if len(x.Args) < f.min || (f.max >= 0 && len(x.Args) > f.max) {
		cp.errorf(x.P, "%s() takes %s, got %d argument(s): %s", x.Name, arity(f), len(x.Args), f.sig)
		return konst(null)
	}
	if mode == modeSelector && f.message && x.Name != "deviceid" && x.Name != "label" {
		cp.errorf(x.P, "%s() is not allowed in FOR DEVICES WHERE (use labels.KEY and deviceid())", x.Name)
		return konst(null)
	}
	args := make([]cexpr, len(x.Args))
	for i, a := range x.Args {
		args[i] = cp.compile(a, mode)
	}
	if f.special != nil {
		return f.special(cp, x, args, mode)
	}
	fns := make([]fn, len(args))
	for i, a := range args {
		fns[i] = a.f
	}
	impl := f.impl
	var out fn
	switch len(fns) {
	case 0:
		out = func(c *evalCtx) Value { return impl(c, nil) }
	case 1:
		a0 := fns[0]
		out = func(c *evalCtx) Value {
			base := len(c.stack)
			c.stack = append(c.stack, a0(c))
			v := impl(c, c.stack[base:base+1:base+1])
			c.stack = c.stack[:base]
			return v
		}
	default:
		out = func(c *evalCtx) Value { return c.callN(fns, impl) }
	}
	if f.message || f.volatile {
		return cexpr{f: out}
	}
	return fold(out, args...)
}

func arity(f *funcSpec) string {
	switch {
	case f.max < 0:
		return fmt.Sprintf("at least %d argument(s)", f.min)
	case f.min == f.max:
		return fmt.Sprintf("%d argument(s)", f.min)
	}
	return fmt.Sprintf("%d to %d arguments", f.min, f.max)
}

func windowKind(name string) bool {
	switch name {
	case "tumblingwindow", "hoppingwindow", "slidingwindow", "sessionwindow", "countwindow":
		return true
	}
	return false
}

// suggest proposes the closest known function name.
func suggest(name string) string {
	names := make([]string, 0, len(functions())+len(aggregates))
	for n := range functions() {
		names = append(names, n)
	}
	for n := range aggregates {
		names = append(names, n)
	}
	if best := config.Closest(name, names); best != "" {
		return fmt.Sprintf(" (did you mean %s()?)", best)
	}
	return ""
}
