package rules

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/outpost-edge/outpost/internal/rules/parser"
)

// exprString prints an expression in canonical form (used in explain
// output and in state signatures).
func exprString(e parser.Expr) string {
	var b strings.Builder
	printExpr(&b, e)
	return b.String()
}

func printExpr(b *strings.Builder, e parser.Expr) {
	switch x := e.(type) {
	case nil:
		b.WriteString("<nil>")
	case *parser.Literal:
		switch x.Kind {
		case parser.LitNull:
			b.WriteString("NULL")
		case parser.LitBool:
			b.WriteString(strings.ToUpper(strconv.FormatBool(x.Bool)))
		case parser.LitNumber:
			b.WriteString(strconv.FormatFloat(x.Num, 'g', -1, 64))
		case parser.LitString:
			b.WriteString("'" + strings.ReplaceAll(x.Str, "'", "''") + "'")
		}
	case *parser.Field:
		if x.Path == "" {
			b.WriteString("payload")
		} else {
			b.WriteString(x.Path)
		}
	case *parser.Label:
		b.WriteString("labels." + x.Key)
	case *parser.Unary:
		if x.Op == "NOT" {
			b.WriteString("NOT ")
		} else {
			b.WriteString("-")
		}
		printExpr(b, x.X)
	case *parser.Binary:
		b.WriteByte('(')
		printExpr(b, x.L)
		b.WriteString(" " + x.Op + " ")
		printExpr(b, x.R)
		b.WriteByte(')')
	case *parser.IsNull:
		printExpr(b, x.X)
		if x.Not {
			b.WriteString(" IS NOT NULL")
		} else {
			b.WriteString(" IS NULL")
		}
	case *parser.In:
		printExpr(b, x.X)
		if x.Not {
			b.WriteString(" NOT")
		}
		b.WriteString(" IN (")
		for i, l := range x.List {
			if i > 0 {
				b.WriteString(", ")
			}
			printExpr(b, l)
		}
		b.WriteByte(')')
	case *parser.Between:
		printExpr(b, x.X)
		if x.Not {
			b.WriteString(" NOT")
		}
		b.WriteString(" BETWEEN ")
		printExpr(b, x.Lo)
		b.WriteString(" AND ")
		printExpr(b, x.Hi)
	case *parser.Like:
		printExpr(b, x.X)
		if x.Not {
			b.WriteString(" NOT")
		}
		b.WriteString(" LIKE ")
		printExpr(b, x.Pattern)
	case *parser.Case:
		b.WriteString("CASE")
		if x.Operand != nil {
			b.WriteByte(' ')
			printExpr(b, x.Operand)
		}
		for _, w := range x.Whens {
			b.WriteString(" WHEN ")
			printExpr(b, w.Cond)
			b.WriteString(" THEN ")
			printExpr(b, w.Result)
		}
		if x.Else != nil {
			b.WriteString(" ELSE ")
			printExpr(b, x.Else)
		}
		b.WriteString(" END")
	case *parser.Call:
		b.WriteString(x.Name + "(")
		if x.Star {
			b.WriteByte('*')
		}
		for i, a := range x.Args {
			if i > 0 {
				b.WriteString(", ")
			}
			printExpr(b, a)
		}
		b.WriteByte(')')
	case *parser.Cast:
		b.WriteString("CAST(")
		printExpr(b, x.X)
		b.WriteString(" AS " + x.Type + ")")
	case *parser.Index:
		printExpr(b, x.X)
		if !strings.HasPrefix(x.Path, "[") {
			b.WriteByte('.')
		}
		b.WriteString(x.Path)
	default:
		fmt.Fprintf(b, "%T", e)
	}
}

// Plan describes how a compiled rule runs (the explain endpoint).
type Plan struct {
	Name                 string   `json:"name"`
	Version              int      `json:"version"`
	File                 string   `json:"file,omitempty"`
	From                 []string `json:"from"`
	Format               string   `json:"format"`
	Devices              string   `json:"devices,omitempty"`
	Fields               []string `json:"fields"` // payload paths extracted, in one pass
	Where                string   `json:"where,omitempty"`
	Columns              []string `json:"columns"`
	PassThrough          bool     `json:"pass_through,omitempty"` // SELECT *: payload forwarded unchanged
	Window               string   `json:"window,omitempty"`
	EventTime            string   `json:"event_time,omitempty"`
	GroupBy              []string `json:"group_by,omitempty"`
	Aggregates           []string `json:"aggregates,omitempty"`
	Having               string   `json:"having,omitempty"`
	StateSlots           int      `json:"state_slots,omitempty"`
	Actions              []string `json:"actions"`
	StateCarriesOverWhen string   `json:"state_carries_over_when,omitempty"`
}

// Explain returns r's plan.
func (r *Rule) Explain() Plan {
	a := r.ast
	p := Plan{Name: r.Name, Version: r.Version, File: r.File, From: r.Filters, Format: a.Format,
		PassThrough: r.starOnly, StateSlots: r.slots, Fields: []string{}}
	p.Fields = append(p.Fields, r.fieldPaths...)
	p.Devices = r.devicesText
	if a.Where != nil {
		p.Where = exprString(a.Where)
	}
	for _, c := range a.Columns {
		if c.Star {
			p.Columns = append(p.Columns, "*")
			continue
		}
		p.Columns = append(p.Columns, exprString(c.Expr)+" AS "+c.Alias)
	}
	if a.Window != nil {
		p.Window = a.Window.Text
		if a.TimestampBy != nil {
			p.EventTime = fmt.Sprintf("%s, lateness %s", exprString(a.TimestampBy), a.Lateness)
		} else {
			p.EventTime = "processing time"
		}
		for _, g := range a.GroupBy {
			p.GroupBy = append(p.GroupBy, exprString(g))
		}
		for _, ag := range r.aggs {
			p.Aggregates = append(p.Aggregates, ag.text)
		}
		p.StateCarriesOverWhen = "window, GROUP BY, TIMESTAMP BY and aggregates are unchanged: " + r.winSig
	}
	if a.Having != nil {
		p.Having = exprString(a.Having)
	}
	for _, ac := range r.actions {
		p.Actions = append(p.Actions, ac.desc)
	}
	return p
}
