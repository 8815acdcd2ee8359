//go:build !functions

package agent

import (
	"fmt"
	"net/http"

	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/module"
	"github.com/outpost-edge/outpost/internal/rules"
)

// This build has no WebAssembly runtime (build with -tags functions);
// Config.Validate refuses an enabled functions section.
const functionsBuilt = false

type functionsModule struct{}

func (a *Agent) newFunctions() func(*http.ServeMux)             { return func(*http.ServeMux) {} }
func (a *Agent) functionModules() []module.Module               { return nil }
func (a *Agent) withFunctionsDep(m module.Module) module.Module { return m }
func (a *Agent) functionsSink() message.Sink                    { return nil }

func (e *rulesEnv) functionAction(name string) (message.Sink, error) {
	return nil, fmt.Errorf("%w: function %q (functions are not available in this build)", rules.ErrUnknownTarget, name)
}
