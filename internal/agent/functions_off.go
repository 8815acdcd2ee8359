//go:build !functions

package agent

import (
	"context"
	"errors"
	"fmt"

	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/module"
	"github.com/outpost-edge/outpost/internal/rules"
)

// This build has no WebAssembly runtime (build with -tags functions);
// Config.Validate refuses an enabled functions section.
const functionsBuilt = false

// functionsModule is never built: Config.Validate refuses an enabled
// section, and the registry builds the module only when it is enabled.
type functionsModule struct{}

var errNoFunctions = errors.New("functions: this outpost was built without WebAssembly functions (build it with -tags functions)")

func (a *Agent) newFunctions() module.Typed[FunctionsConfig] {
	a.fns = &functionsModule{}
	return a.fns
}
func (a *Agent) provideFunctionSinks() {}

func (*functionsModule) Name() string                                 { return "functions" }
func (*functionsModule) Init(context.Context, *FunctionsConfig) error { return errNoFunctions }
func (*functionsModule) Start(context.Context) error                  { return errNoFunctions }
func (*functionsModule) Stop(context.Context) error                   { return nil }
func (*functionsModule) Health() module.Status {
	return module.Status{State: module.StateFailed, Detail: errNoFunctions.Error()}
}

func (e *rulesEnv) functionAction(name string) (message.Sink, error) {
	return nil, fmt.Errorf("%w: function %q (functions are not available in this build)", rules.ErrUnknownTarget, name)
}
