package rules

import (
	"time"

	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/rules/jsonpath"
)

// Run-time error reasons. A run-time error never stops a rule: the failing
// expression yields NULL (a WHERE or HAVING that is NULL skips the message)
// and the reason is counted in outpost_rules_errors_total{rule,reason}.
const (
	reasonMissingField = iota // a referenced field is absent from the payload
	reasonTypeMismatch        // operator or function applied to the wrong type
	reasonDivZero             // division or modulo by zero
	reasonBadArgument         // e.g. sqrt(-1), bad time layout, bad cast
	reasonDecode              // payload not decodable in the rule's FORMAT
	reasonLate                // event-time message behind the watermark
	reasonBadTimestamp        // TIMESTAMP BY expression not a time
	reasonAction              // an action's sink returned an error
	reasonOverflow            // a bound was hit (groups, percentile samples)
	reasonLoop                // the message went through MaxHops republishes: a loop
	reasonFunction            // fn(): the user function failed (trap, timeout, error)
	numReasons
)

var reasonNames = [numReasons]string{
	"missing_field", "type_mismatch", "div_by_zero", "bad_argument", "decode",
	"late", "bad_timestamp", "action_failed", "overflow", "loop", "function_failed",
}

// fn is a compiled expression.
type fn func(c *evalCtx) Value

// evalCtx is the per-goroutine scratch space for evaluating rules. It is
// owned by one partition (or the window timer) and reused for every
// message, so steady-state evaluation does not allocate.
type evalCtx struct {
	msg     *message.Message
	payload []byte // the payload as JSON (decoded when the rule's FORMAT is not json)
	res     []jsonpath.Result
	rule    *Rule
	stack   []Value
	errs    uint32
	now     time.Time
	evTime  int64 // event time (unix ns) of the current message
	hops    int   // HopsProperty of the current message (or group)

	labels   map[string]string
	labelsOK bool
	env      Env

	dev  *devState  // per-device state of the current rule
	aggs []aggState // aggregates of the group being emitted (window mode)
	win  winBounds

	row     []Value
	out     []byte
	tmp     []byte
	outMsg  message.Message
	hopProp [1]message.UserProperty
	matched []*entry
	// async, while a message is evaluated by ProcessAsync, collects the
	// durable outputs the message causes.
	async *asyncWait
}

type winBounds struct{ start, end int64 }

func (c *evalCtx) fail(reason int) Value {
	c.errs |= 1 << reason
	return null
}

func (c *evalCtx) deviceLabels() map[string]string {
	if !c.labelsOK {
		c.labelsOK = true
		c.labels = nil
		if c.env != nil && c.msg != nil {
			c.labels = c.env.Labels(c.msg.DeviceID)
		}
	}
	return c.labels
}

// push/pop implement the argument stack used by function calls so that
// calls do not allocate an argument slice.
func (c *evalCtx) callN(args []fn, impl func(*evalCtx, []Value) Value) Value {
	base := len(c.stack)
	for _, a := range args {
		v := a(c)
		c.stack = append(c.stack, v)
	}
	v := impl(c, c.stack[base:len(c.stack):len(c.stack)])
	c.stack = c.stack[:base]
	return v
}
