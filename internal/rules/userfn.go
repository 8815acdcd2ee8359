package rules

import (
	"context"
	"errors"
	"strings"

	"github.com/outpost-edge/outpost/internal/rules/parser"
)

// ScalarFunc is a user function called by fn('name', args...): the
// integrator backs it with a WebAssembly function (internal/function).
// deviceID is the message's device ("" in a window's output without one).
// An error makes the call NULL, counted as reason function_failed.
type ScalarFunc func(ctx context.Context, deviceID string, args []Value) (Value, error)

// FuncEnv is implemented by an Env that offers user functions to rules.
// ScalarFunc is called when a rule is compiled; an error (wrapping
// ErrUnknownTarget for an unknown name) rejects the rule with a position.
type FuncEnv interface {
	ScalarFunc(name string) (ScalarFunc, error)
}

// userFnSpec is fn('name', args...): not constant-folded (the function may
// keep state), evaluated on messages and on window outputs alike.
var userFnSpec = &funcSpec{min: 1, max: -1, volatile: true, sig: "fn('name', args...)", special: compileUserFn}

func compileUserFn(cp *compiler, x *parser.Call, args []cexpr, _ exprMode) cexpr {
	if !args[0].konst || args[0].val.K != KStr {
		cp.errorf(x.Args[0].Position(), "fn: the function name must be a string literal")
		return konst(null)
	}
	name := args[0].val.S
	fe, ok := cp.env.(FuncEnv)
	var f ScalarFunc
	var err error
	if ok {
		f, err = fe.ScalarFunc(name)
	}
	if !ok || errors.Is(err, errNoUserFuncs) {
		cp.errorf(x.P, "fn('%s'): user functions are not available (no functions are configured)", name)
		return konst(null)
	}
	if err != nil {
		cp.errorf(x.Args[0].Position(), "fn('%s'): %s", name, strings.TrimPrefix(stripPrefix(err), "function: "))
		return konst(null)
	}
	rest := make([]fn, len(args)-1)
	for i, a := range args[1:] {
		rest[i] = a.f
	}
	return cexpr{f: func(c *evalCtx) Value {
		return c.callN(rest, func(c *evalCtx, a []Value) Value {
			dev := ""
			if c.msg != nil {
				dev = c.msg.DeviceID
			}
			v, err := f(context.Background(), dev, a)
			if err != nil {
				return c.fail(reasonFunction)
			}
			return v
		})
	}}
}

var errNoUserFuncs = errors.New("rules: the environment has no user functions")

// ScalarFunc passes through the wrapped Env's user functions (the labels
// from rules.devices wrap the integrator's Env).
func (e *labelEnv) ScalarFunc(name string) (ScalarFunc, error) {
	if fe, ok := e.Env.(FuncEnv); ok {
		return fe.ScalarFunc(name)
	}
	return nil, errNoUserFuncs
}
