package rules

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/rules/jsonpath"
	"github.com/outpost-edge/outpost/internal/rules/parser"
	"github.com/outpost-edge/outpost/internal/sink/webhook"
	"github.com/outpost-edge/outpost/internal/topic"
)

// Rule is a compiled rule version. It is immutable once compiled, except
// for the state it points to, which is guarded by the state's lock.
type Rule struct {
	Name    string
	Version int
	File    string
	Source  string
	Filters []string

	ast         *parser.Rule
	selector    fn
	devicesText string
	format      Decoder
	fields      *jsonpath.Set
	nFields     int
	fieldPaths  []string
	where       fn
	cols        []column
	starOnly    bool
	star        bool
	usesNow     bool
	loopLogged  atomic.Bool // a loop was logged (refuseLoop)

	// windows
	win     *windowSpec
	groupBy []fn
	tsBy    fn
	aggs    []aggSpec
	having  fn

	slots   int // per-device state call sites
	actions []*action
	// durableState: the rule keeps state (windows, per-device) and has a
	// durable action, so ProcessAsync makes its state crash-safe before
	// completing (see Engine.SetCheckpointDir).
	durableState bool

	winSig, devSig string
	state          *ruleState
	m              *ruleMetrics
	webhookKeys    []string
}

type column struct {
	name   string
	prefix []byte // `"name":`
	f      fn
}

// action is a compiled DO item.
type action struct {
	kind   string
	desc   string
	sink   message.Sink
	topic  *template // nil: the input topic
	qos    int       // -1: input QoS (0 for windowed rules)
	retain bool
	hops   bool // stamp HopsProperty (REPUBLISH)
	// durable: the sink's acceptance is crash-safe (message.Durable, an
	// uplink lane): ProcessAsync waits for it.
	durable bool
	target  string     // REPUBLISH: the topic template as written
	pos     parser.Pos // of the target
	sent    *metrics.Counter
}

// template is a topic with ${expr} parts.
type template struct {
	konst string
	parts []tplPart
}

type tplPart struct {
	lit string
	f   fn
}

func (t *template) render(c *evalCtx) string {
	if t.parts == nil {
		return t.konst
	}
	c.tmp = c.tmp[:0]
	for _, p := range t.parts {
		if p.f == nil {
			c.tmp = append(c.tmp, p.lit...)
			continue
		}
		v := p.f(c)
		if v.K == KNull {
			continue
		}
		c.tmp = append(c.tmp, toString(v)...)
	}
	return string(c.tmp)
}

// Decoder turns a non-JSON payload into JSON for field extraction. It is
// the hook for binary formats (protobuf, CBOR): register one with
// RegisterFormat and select it with FORMAT 'name'.
type Decoder interface {
	// ToJSON returns the payload as a JSON document. It may allocate.
	ToJSON(payload []byte) ([]byte, error)
}

var formats = map[string]Decoder{"json": nil, "raw": nil}

// RegisterFormat makes FORMAT 'name' available. It panics on a duplicate;
// call it from init().
func RegisterFormat(name string, d Decoder) {
	name = strings.ToLower(name)
	if _, dup := formats[name]; dup {
		panic("rules: duplicate format " + name)
	}
	formats[name] = d
}

// CompileOptions are the dependencies of Compile.
type CompileOptions struct {
	Env Env
	// Webhook builds the sink of a WEBHOOK action; nil uses
	// internal/sink/webhook with a private metrics set.
	Webhook func(cfg webhook.Config) (message.Sink, error)
	// Selectors are device selectors from configuration (the YAML form of
	// FOR DEVICES WHERE), keyed by "name@version". A rule version with both
	// runs on devices matching both.
	Selectors map[string]string
}

// Compile parses src (a rule file) and compiles every statement. It returns
// the rules that compiled and a parser.ErrorList with every problem.
func Compile(file, src string, opts CompileOptions) ([]*Rule, error) {
	asts, perr := parser.Parse(file, src)
	var errs parser.ErrorList
	if perr != nil {
		errs = append(errs, perr.(parser.ErrorList)...)
	}
	var out []*Rule
	seen := map[string]bool{}
	for _, a := range asts {
		id := fmt.Sprintf("%s v%d", a.Name, a.Version)
		if seen[id] {
			errs = append(errs, &parser.Error{File: file, Pos: a.P, Rule: a.Name, Msg: fmt.Sprintf("version %d defined twice in this file", a.Version)})
			continue
		}
		seen[id] = true
		r, err := CompileAST(a, opts)
		if err != nil {
			errs = append(errs, err.(parser.ErrorList)...)
			continue
		}
		out = append(out, r)
	}
	sort.SliceStable(errs, func(i, j int) bool {
		if errs[i].Pos.Line != errs[j].Pos.Line {
			return errs[i].Pos.Line < errs[j].Pos.Line
		}
		return errs[i].Pos.Col < errs[j].Pos.Col
	})
	return out, errs.Err()
}

// CompileAST compiles one parsed rule. Errors are a parser.ErrorList.
func CompileAST(a *parser.Rule, opts CompileOptions) (*Rule, error) {
	cp := &compiler{r: a, env: opts.Env, pathIdx: map[string]int{}, aggIdx: map[string]int{}, windowed: a.Window != nil}
	r := &Rule{Name: a.Name, Version: a.Version, File: a.File, Source: a.Source, ast: a}
	for _, t := range a.From {
		r.Filters = append(r.Filters, t.Filter)
	}
	if d, ok := formats[a.Format]; !ok {
		cp.errorf(a.FormatP, "unknown FORMAT '%s' (known: %s)", a.Format, strings.Join(formatNames(), ", "))
	} else {
		r.format = d
	}
	if a.Devices != nil {
		cp.where = "FOR DEVICES"
		r.selector = cp.compile(a.Devices, modeSelector).f
		r.devicesText = exprString(a.Devices)
	}
	if sel := opts.Selectors[fmt.Sprintf("%s@%d", a.Name, a.Version)]; sel != "" {
		e, err := parser.ParseExpr(sel, parser.Pos{Line: 1, Col: 1})
		if err != nil {
			cp.errorf(a.P, "configured selector %q: %v", sel, err)
		} else {
			f := cp.compile(e, modeSelector).f
			if prev := r.selector; prev != nil {
				r.selector = func(c *evalCtx) Value { return boolean(prev(c).truthy() && f(c).truthy()) }
				r.devicesText = "(" + r.devicesText + ") AND (" + exprString(e) + ")"
			} else {
				r.selector = f
				r.devicesText = exprString(e)
			}
		}
	}
	if a.Where != nil {
		cp.where = "WHERE"
		r.where = cp.compile(a.Where, modeMessage).f
	}
	if a.Window == nil {
		if len(a.GroupBy) > 0 {
			cp.errorf(a.GroupBy[0].Position(), "GROUP BY needs a window: add TUMBLINGWINDOW, HOPPINGWINDOW, SLIDINGWINDOW, SESSIONWINDOW or COUNTWINDOW")
		}
		if a.Having != nil {
			cp.errorf(a.Having.Position(), "HAVING needs GROUP BY with a window")
		}
	} else {
		cp.where = "GROUP BY"
		for _, g := range a.GroupBy {
			r.groupBy = append(r.groupBy, cp.compile(g, modeMessage).f)
		}
		if a.TimestampBy != nil {
			cp.where = "TIMESTAMP BY"
			r.tsBy = cp.compile(a.TimestampBy, modeMessage).f
			if a.Window.Kind == "count" {
				cp.errorf(a.TimestampBy.Position(), "TIMESTAMP BY has no effect on COUNTWINDOW")
			}
		}
		r.win = newWindowSpec(a.Window, a.TimestampBy != nil, int64(a.Lateness))
	}
	mode := modeMessage
	if r.win != nil {
		mode = modeGroup
	}
	cp.where = "SELECT"
	names := map[string]bool{}
	for _, col := range a.Columns {
		if col.Star {
			if r.win != nil {
				cp.errorf(col.P, "SELECT * is not allowed in a windowed rule (name the columns)")
				continue
			}
			if r.star {
				cp.errorf(col.P, "* appears twice")
			}
			r.star = true
			continue
		}
		if names[col.Alias] {
			cp.errorf(col.P, "duplicate column name %q (use AS)", col.Alias)
		}
		names[col.Alias] = true
		ce := cp.compile(col.Expr, mode)
		r.cols = append(r.cols, column{name: col.Alias, prefix: appendQuoted(nil, col.Alias), f: ce.f})
	}
	for i := range r.cols {
		r.cols[i].prefix = append(r.cols[i].prefix, ':')
	}
	r.starOnly = r.star && len(r.cols) == 0
	if a.Having != nil && r.win != nil {
		cp.where = "HAVING"
		r.having = cp.compile(a.Having, modeGroup).f
	}
	// templates see the output columns by name
	cp.rowNames = map[string]int{}
	for i, c := range r.cols {
		cp.rowNames[c.name] = i
	}
	cp.where = "DO"
	for _, act := range a.Actions {
		if ac := cp.action(r, act, mode, opts); ac != nil {
			r.actions = append(r.actions, ac)
		}
	}
	r.aggs = cp.aggs
	r.slots = cp.slots
	for _, ac := range r.actions {
		r.durableState = r.durableState || ac.durable && (r.win != nil || r.slots > 0)
	}
	r.fields = jsonpath.NewSet(cp.paths)
	r.nFields = len(cp.paths)
	for _, p := range cp.paths {
		r.fieldPaths = append(r.fieldPaths, p.String())
	}
	r.winSig, r.devSig = signatures(a, cp)
	walkRule(a, func(e parser.Expr) {
		if c, ok := e.(*parser.Call); ok && c.Name == "now" {
			r.usesNow = true
		}
	})
	if len(cp.errs) > 0 {
		return nil, cp.errs
	}
	return r, nil
}

func formatNames() []string {
	var n []string
	for k := range formats {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

func walkRule(a *parser.Rule, f func(parser.Expr)) {
	walk(a.Devices, f)
	walk(a.Where, f)
	walk(a.Having, f)
	walk(a.TimestampBy, f)
	for _, g := range a.GroupBy {
		walk(g, f)
	}
	for _, c := range a.Columns {
		walk(c.Expr, f)
	}
}

// signatures identify the state layout: window state carries over a reload
// only when winSig is equal, per-device state only when devSig is equal.
func signatures(a *parser.Rule, cp *compiler) (string, string) {
	var w strings.Builder
	if a.Window != nil {
		w.WriteString(a.Window.Text)
		for _, g := range a.GroupBy {
			w.WriteString("|g:" + exprString(g))
		}
		if a.TimestampBy != nil {
			fmt.Fprintf(&w, "|ts:%s/%d", exprString(a.TimestampBy), a.Lateness)
		}
		for _, ag := range cp.aggs {
			w.WriteString("|a:" + ag.text)
		}
	}
	var d strings.Builder
	walkRule(a, func(e parser.Expr) {
		if c, ok := e.(*parser.Call); ok {
			switch c.Name {
			case "changed", "deadband", "lag", "rate":
				d.WriteString(exprString(c) + "|")
			}
		}
	})
	return w.String(), d.String()
}

func (cp *compiler) template(s string, pos parser.Pos, mode exprMode) *template {
	t := &template{}
	if !strings.Contains(s, "${") {
		t.konst = s
		return t
	}
	rest := s
	col := pos.Col + 1
	for rest != "" {
		i := strings.Index(rest, "${")
		if i < 0 {
			t.parts = append(t.parts, tplPart{lit: rest})
			break
		}
		if i > 0 {
			t.parts = append(t.parts, tplPart{lit: rest[:i]})
		}
		j := strings.IndexByte(rest[i:], '}')
		if j < 0 {
			cp.errorf(pos, "unterminated ${ in '%s'", s)
			return nil
		}
		src := rest[i+2 : i+j]
		e, err := parser.ParseExpr(src, parser.Pos{Line: pos.Line, Col: col + (len(s) - len(rest)) + i + 2})
		if err != nil {
			for _, pe := range err.(parser.ErrorList) {
				cp.errorf(pe.Pos, "in template: %s", pe.Msg)
			}
			return nil
		}
		t.parts = append(t.parts, tplPart{f: cp.compile(e, mode).f})
		rest = rest[i+j+1:]
	}
	return t
}

func (cp *compiler) action(r *Rule, a parser.Action, mode exprMode, opts CompileOptions) *action {
	ac := &action{kind: a.Kind, qos: -1}
	env := opts.Env
	var err error
	opt := map[string]parser.Option{}
	var headers []parser.Option
	for _, o := range a.Options {
		if o.Header {
			headers = append(headers, o)
			continue
		}
		opt[o.Key] = o
	}
	allowed := map[string][]string{
		"REPUBLISH": {"qos", "retain"}, "UPLINK": {"qos", "retain"}, "FILE": nil, "FUNCTION": nil,
		"WEBHOOK": {"timeout", "retries", "method", "backoff", "max_backoff", "queue"},
	}[a.Kind]
	for _, o := range a.Options {
		if o.Header {
			if a.Kind != "WEBHOOK" {
				cp.errorf(o.P, "HEADER is only valid for WEBHOOK")
			}
			continue
		}
		ok := false
		for _, k := range allowed {
			ok = ok || k == o.Key
		}
		if !ok {
			cp.errorf(o.P, "unknown option %s for %s (valid: %s)", o.Key, a.Kind, strings.Join(allowed, ", "))
		}
	}
	if o, ok := opt["qos"]; ok {
		if o.Value.Kind != parser.LitNumber || (o.Value.Num != 0 && o.Value.Num != 1 && o.Value.Num != 2) {
			cp.errorf(o.P, "qos must be 0, 1 or 2")
		}
		ac.qos = int(o.Value.Num)
	}
	if o, ok := opt["retain"]; ok {
		if o.Value.Kind != parser.LitBool {
			cp.errorf(o.P, "retain must be true or false")
		}
		ac.retain = o.Value.Bool
	}
	if env == nil {
		cp.errorf(a.P, "no environment to resolve actions")
		return nil
	}
	switch a.Kind {
	case "REPUBLISH":
		ac.sink = env.Republish()
		ac.hops, ac.target, ac.pos = true, a.Target, a.TargetP
		ac.topic = cp.template(a.Target, a.TargetP, mode)
		if ac.topic != nil && ac.topic.parts == nil {
			if err := validTopic(a.Target); err != nil {
				cp.errorf(a.TargetP, "REPUBLISH topic '%s': %v", a.Target, err)
			}
			for _, f := range r.Filters {
				if matchFilter(f, a.Target) {
					cp.errorf(a.TargetP, "REPUBLISH topic '%s' matches this rule's own FROM '%s' (a loop)", a.Target, f)
				}
			}
		} else if ac.topic != nil {
			pat := topicPattern(a.Target)
			for _, f := range r.Filters {
				if topic.Intersects(pat, f) {
					cp.errorf(a.TargetP, "REPUBLISH topic '%s' can match this rule's own FROM '%s' (a loop: a ${...} level may take any value)", a.Target, f)
				}
			}
		}
		ac.desc = "REPUBLISH " + a.Target
	case "UPLINK":
		ac.sink, err = env.Uplink(a.Lane)
		if err != nil {
			cp.errorf(a.LaneP, "unknown lane '%s' (lanes: %s)", a.Lane, strings.Join(env.Lanes(), ", "))
		}
		ac.topic = cp.template(a.Topic, a.TopicP, mode)
		if ac.topic != nil && ac.topic.parts == nil {
			if err := validTopic(a.Topic); err != nil {
				cp.errorf(a.TopicP, "UPLINK topic '%s': %v", a.Topic, err)
			}
		}
		ac.desc = fmt.Sprintf("UPLINK lane=%s topic=%s", a.Lane, a.Topic)
	case "FILE":
		ac.sink, err = env.File(a.Target)
		if err != nil {
			cp.errorf(a.TargetP, "%v", stripPrefix(err))
		}
		ac.desc = "FILE " + a.Target
	case "FUNCTION":
		ac.sink, err = env.Function(a.Target)
		if err != nil {
			cp.errorf(a.TargetP, "%v", stripPrefix(err))
		}
		ac.desc = "FUNCTION " + a.Target
	case "WEBHOOK":
		u, err := url.Parse(a.Target)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			cp.errorf(a.TargetP, "WEBHOOK needs an http:// or https:// URL, got '%s'", a.Target)
			return nil
		}
		cfg := webhook.Config{URL: a.Target, Headers: map[string]string{}}
		for _, h := range headers {
			if h.Value.Kind != parser.LitString {
				cp.errorf(h.P, "header value must be a string")
			}
			cfg.Headers[h.Key] = h.Value.Str
		}
		if o, ok := opt["timeout"]; ok {
			cfg.Timeout = cp.durationOpt(o)
		}
		if o, ok := opt["backoff"]; ok {
			cfg.Backoff = cp.durationOpt(o)
		}
		if o, ok := opt["max_backoff"]; ok {
			cfg.MaxBackoff = cp.durationOpt(o)
		}
		if o, ok := opt["retries"]; ok {
			if o.Value.Kind != parser.LitNumber || o.Value.Num < 0 || o.Value.Num > 100 {
				cp.errorf(o.P, "retries must be a number between 0 and 100")
			}
			cfg.Retries = int(o.Value.Num)
			cfg.RetriesSet = true
		}
		if o, ok := opt["queue"]; ok {
			if o.Value.Kind != parser.LitNumber || o.Value.Num < 0 || o.Value.Num > 1e6 {
				cp.errorf(o.P, "queue must be a number between 0 and 1000000")
			}
			cfg.Queue = int(o.Value.Num)
		} else {
			cfg.Queue = 256
		}
		if o, ok := opt["method"]; ok {
			cfg.Method = strings.ToUpper(o.Value.Str)
		}
		cfg.SetDefaults()
		if err := cfg.Validate(); err != nil {
			cp.errorf(a.P, "WEBHOOK: %v", err)
			return nil
		}
		if len(cp.errs) > 0 {
			return nil
		}
		mk := opts.Webhook
		if mk == nil {
			mk = func(cfg webhook.Config) (message.Sink, error) { return webhook.New(cfg, nil, nil) }
		}
		s, err := mk(cfg)
		if err != nil {
			cp.errorf(a.P, "WEBHOOK: %v", err)
			return nil
		}
		ac.sink = s
		r.webhookKeys = append(r.webhookKeys, cfg.Key())
		ac.desc = "WEBHOOK " + webhook.Redact(a.Target)
	}
	if d, ok := ac.sink.(message.Durable); ok && d.Durable() {
		ac.durable = true
	}
	return ac
}

func stripPrefix(err error) string {
	s := err.Error()
	if errors.Is(err, ErrUnknownTarget) {
		s = strings.TrimPrefix(s, ErrUnknownTarget.Error()+": ")
		return "unknown " + s
	}
	return s
}

func (cp *compiler) durationOpt(o parser.Option) time.Duration {
	if o.Value.Kind == parser.LitString {
		d, err := time.ParseDuration(o.Value.Str)
		if err == nil && d > 0 {
			return d
		}
	}
	cp.errorf(o.P, "%s must be a duration string such as '2s'", o.Key)
	return 0
}

// validTopic checks a concrete topic name (no wildcards).
func validTopic(t string) error {
	if t == "" {
		return fmt.Errorf("empty topic")
	}
	if strings.ContainsAny(t, "+#") {
		return fmt.Errorf("wildcards are not allowed in a topic name")
	}
	return nil
}

// CheckWebhook is a CompileOptions.Webhook that creates no sink (offline
// checks).
func CheckWebhook(cfg webhook.Config) (message.Sink, error) { return noopWebhook(cfg) }

// noopWebhook validates a webhook configuration without creating a sink
// (explain, rules check).
func noopWebhook(cfg webhook.Config) (message.Sink, error) {
	return nopSink{"webhook:" + webhook.Redact(cfg.URL)}, nil
}

type nopSink struct{ name string }

func (s nopSink) Name() string                                    { return s.name }
func (s nopSink) Deliver(context.Context, *message.Message) error { return nil }
