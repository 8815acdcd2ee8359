package rules

import (
	"math"
	"sort"

	"github.com/outpost-edge/outpost/internal/rules/parser"
)

// aggDef describes an aggregate function.
type aggDef struct {
	min, max int
	sig      string
}

var aggregates = map[string]*aggDef{
	"avg": {1, 1, "avg(x)"}, "min": {1, 1, "min(x)"}, "max": {1, 1, "max(x)"}, "sum": {1, 1, "sum(x)"},
	"count": {0, 1, "count(*) or count(x)"}, "stddev": {1, 1, "stddev(x)"}, "first": {1, 1, "first(x)"},
	"last": {1, 1, "last(x)"}, "percentile": {2, 2, "percentile(x, p) with p in [0, 1]"},
}

// maxPercentileSamples bounds the values percentile() keeps per group.
const maxPercentileSamples = 100_000

// aggSpec is one aggregate call site of a rule.
type aggSpec struct {
	kind string
	arg  fn // nil for count(*)
	p    float64
	text string
}

// aggState is the running state of one aggregate in one group. It is
// serialized in state snapshots.
type aggState struct {
	N    int64     `json:"n,omitempty"`
	Sum  float64   `json:"sum,omitempty"`
	Mean float64   `json:"mean,omitempty"`
	M2   float64   `json:"m2,omitempty"`
	V    Value     `json:"v"` // min, max, first or last
	Set  bool      `json:"set,omitempty"`
	Vals []float64 `json:"vals,omitempty"`
}

func (s *aggState) add(c *evalCtx, kind string, v Value) {
	switch kind {
	case "count":
		if kind == "count" && v.K != KNull {
			s.N++
		}
		return
	case "first":
		if !s.Set {
			s.V, s.Set = v.clone(), true
		}
		return
	case "last":
		if !s.Set || s.V.K != v.K || (v.K != KNull && !equal(s.V, v)) {
			s.V = v.clone()
		}
		s.Set = true
		return
	}
	if v.isNull() {
		return
	}
	if kind == "min" || kind == "max" {
		if v.K != KNum && v.K != KStr {
			c.fail(reasonTypeMismatch)
			return
		}
		if !s.Set {
			s.V, s.Set = v.clone(), true
			return
		}
		n, ok := compare(v, s.V)
		if !ok {
			c.fail(reasonTypeMismatch)
			return
		}
		if (kind == "min" && n < 0) || (kind == "max" && n > 0) {
			s.V = v.clone()
		}
		return
	}
	if v.K != KNum {
		c.fail(reasonTypeMismatch)
		return
	}
	switch kind {
	case "sum":
		s.N++
		s.Sum += v.N
	case "avg", "stddev":
		s.N++
		d := v.N - s.Mean
		s.Mean += d / float64(s.N)
		s.M2 += d * (v.N - s.Mean)
	case "percentile":
		if len(s.Vals) >= maxPercentileSamples {
			c.fail(reasonOverflow)
			return
		}
		s.Vals = append(s.Vals, v.N)
	}
}

func (s *aggState) result(kind string, p float64) Value {
	switch kind {
	case "count":
		return num(float64(s.N))
	case "first", "last", "min", "max":
		return s.V
	case "sum":
		if s.N == 0 {
			return null
		}
		return num(s.Sum)
	case "avg":
		if s.N == 0 {
			return null
		}
		return num(s.Mean)
	case "stddev":
		if s.N == 0 {
			return null
		}
		return num(math.Sqrt(s.M2 / float64(s.N))) // population standard deviation
	case "percentile":
		if len(s.Vals) == 0 {
			return null
		}
		v := append([]float64(nil), s.Vals...)
		sort.Float64s(v)
		// linear interpolation between closest ranks
		r := p * float64(len(v)-1)
		lo := int(math.Floor(r))
		hi := int(math.Ceil(r))
		return num(v[lo] + (v[hi]-v[lo])*(r-float64(lo)))
	}
	return null
}

// aggregate registers an aggregate call site (group mode) and returns the
// reader of its result.
func (cp *compiler) aggregate(x *parser.Call) cexpr {
	def := aggregates[x.Name]
	if x.Star && x.Name != "count" {
		cp.errorf(x.P, "%s(*): only count(*) takes *", x.Name)
		return konst(null)
	}
	if !x.Star && (len(x.Args) < def.min || len(x.Args) > def.max) || x.Name == "count" && !x.Star && len(x.Args) != 1 {
		cp.errorf(x.P, "aggregate %s", def.sig)
		return konst(null)
	}
	spec := aggSpec{kind: x.Name, text: exprString(x)}
	cp.inAgg = true
	if !x.Star {
		spec.arg = cp.compile(x.Args[0], modeMessage).f
		if containsAgg(x.Args[0]) {
			cp.errorf(x.Args[0].Position(), "aggregate %s() cannot be nested in another aggregate", x.Name)
		}
	}
	if x.Name == "percentile" {
		pe := cp.compile(x.Args[1], modeMessage)
		if !pe.konst || pe.val.K != KNum || pe.val.N < 0 || pe.val.N > 1 {
			cp.errorf(x.Args[1].Position(), "percentile: p must be a number literal between 0 and 1")
		}
		spec.p = pe.val.N
	}
	cp.inAgg = false
	return cp.addAgg(spec)
}

// implicitLast wraps a message-dependent expression used outside an
// aggregate in a windowed rule: its value is taken from the last message of
// the group.
func (cp *compiler) implicitLast(e parser.Expr) cexpr {
	cp.inAgg = true
	f := cp.compile(e, modeMessage).f
	cp.inAgg = false
	return cp.addAgg(aggSpec{kind: "last", arg: f, text: "last(" + exprString(e) + ")"})
}

func (cp *compiler) addAgg(spec aggSpec) cexpr {
	i, ok := cp.aggIdx[spec.text]
	if !ok {
		i = len(cp.aggs)
		cp.aggIdx[spec.text] = i
		cp.aggs = append(cp.aggs, spec)
	}
	kind, p := spec.kind, spec.p
	return cexpr{f: func(c *evalCtx) Value { return c.aggs[i].result(kind, p) }}
}
