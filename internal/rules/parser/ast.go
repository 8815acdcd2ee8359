package parser

import "time"

// Expr is an expression node.
type Expr interface {
	Position() Pos
}

// LitKind is the type of a literal.
type LitKind uint8

const (
	LitNull LitKind = iota
	LitBool
	LitNumber
	LitString
)

// Literal is a constant.
type Literal struct {
	P    Pos
	Kind LitKind
	Num  float64
	Str  string
	Bool bool
}

// Field reads a path in the message payload ("a.b[0]"). Path "" is the whole
// payload.
type Field struct {
	P    Pos
	Path string
}

// Label reads a device label (labels.site).
type Label struct {
	P   Pos
	Key string
}

// Unary is -x or NOT x.
type Unary struct {
	P  Pos
	Op string // "-" or "NOT"
	X  Expr
}

// Binary is an infix operation; Op is one of + - * / % || = != < <= > >= AND OR.
type Binary struct {
	P    Pos
	Op   string
	L, R Expr
}

// IsNull is x IS [NOT] NULL.
type IsNull struct {
	P   Pos
	X   Expr
	Not bool
}

// In is x [NOT] IN (list).
type In struct {
	P    Pos
	X    Expr
	List []Expr
	Not  bool
}

// Between is x [NOT] BETWEEN lo AND hi (inclusive).
type Between struct {
	P         Pos
	X, Lo, Hi Expr
	Not       bool
}

// Like is x [NOT] LIKE pattern (% any run, _ one character).
type Like struct {
	P       Pos
	X       Expr
	Pattern Expr
	Not     bool
}

// When is one WHEN ... THEN ... arm.
type When struct {
	Cond, Result Expr
}

// Case is CASE [operand] WHEN ... THEN ... [ELSE ...] END.
type Case struct {
	P       Pos
	Operand Expr // nil for a searched CASE
	Whens   []When
	Else    Expr
}

// Call is a function or aggregate call; Name is lower case. Star is set for
// count(*).
type Call struct {
	P    Pos
	Name string
	Args []Expr
	Star bool
}

// Cast is CAST(x AS type); Type is lower case (number, int, string, bool).
type Cast struct {
	P    Pos
	X    Expr
	Type string
}

// Index applies a path to the JSON value of X: split(s, ',')[0], f(x).a.b.
type Index struct {
	P    Pos
	X    Expr
	Path string
}

func (e *Literal) Position() Pos { return e.P }
func (e *Field) Position() Pos   { return e.P }
func (e *Label) Position() Pos   { return e.P }
func (e *Unary) Position() Pos   { return e.P }
func (e *Binary) Position() Pos  { return e.P }
func (e *IsNull) Position() Pos  { return e.P }
func (e *In) Position() Pos      { return e.P }
func (e *Between) Position() Pos { return e.P }
func (e *Like) Position() Pos    { return e.P }
func (e *Case) Position() Pos    { return e.P }
func (e *Call) Position() Pos    { return e.P }
func (e *Cast) Position() Pos    { return e.P }
func (e *Index) Position() Pos   { return e.P }

// Column is one SELECT item. Star is `*` (the whole payload).
type Column struct {
	P     Pos
	Expr  Expr
	Alias string // explicit or derived name
	Star  bool
}

// Topic is one FROM topic filter.
type Topic struct {
	P      Pos
	Filter string
}

// Window is the window function in GROUP BY.
type Window struct {
	P    Pos
	Kind string // tumbling, hopping, sliding, session, count
	// Size, Hop: durations for time windows; Count, CountHop for count windows.
	Size, Hop    time.Duration // Hop: hopping step; for session: gap
	MaxSize      time.Duration // session windows: max length (0 = unbounded)
	Count, Every int           // count windows: window length and step
	Text         string        // source text, for explain and state compatibility
}

// Option is one item of an action's WITH (...) list.
type Option struct {
	P      Pos
	Key    string // lower case; for HEADER 'X' = ... the key is the header name
	Header bool
	Value  Literal
}

// Action is one DO item.
type Action struct {
	P       Pos
	Kind    string // REPUBLISH, UPLINK, WEBHOOK, FILE, FUNCTION
	Target  string // topic template, URL, file or function name
	TargetP Pos
	Lane    string // UPLINK only
	LaneP   Pos
	Topic   string // UPLINK only (template)
	TopicP  Pos
	Options []Option
}

// Rule is one CREATE RULE statement.
type Rule struct {
	P           Pos
	File        string
	Name        string
	Version     int
	Devices     Expr // FOR DEVICES WHERE ...; nil = all devices
	Columns     []Column
	From        []Topic
	Format      string // FORMAT 'json' (default) | 'raw' | registered decoder
	FormatP     Pos
	Where       Expr
	GroupBy     []Expr
	Window      *Window
	TimestampBy Expr
	Lateness    time.Duration
	Having      Expr
	Actions     []Action
	Source      string // the statement's text
}
