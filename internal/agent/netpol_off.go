//go:build outpost_nonetpol

package agent

import (
	"context"
	"errors"
	"net/http"

	"github.com/outpost-edge/outpost/internal/module"
)

// newNetpol in a build without netpol (tag outpost_nonetpol): a netpol
// section is refused at start with a message that says so.
func newNetpol(*Agent) (module.Module, func(*http.ServeMux)) {
	return netpolOff{}, func(*http.ServeMux) {}
}

type netpolOff struct{}

var errNoNetpol = errors.New("netpol: this outpost was built without network policy (tag outpost_nonetpol); remove the netpol section or use a full build")

func (netpolOff) Name() string                    { return "netpol" }
func (netpolOff) Init(context.Context, any) error { return errNoNetpol }
func (netpolOff) Start(context.Context) error     { return errNoNetpol }
func (netpolOff) Stop(context.Context) error      { return nil }
func (netpolOff) Health() module.Status {
	return module.Status{State: module.StateFailed, Detail: errNoNetpol.Error()}
}
