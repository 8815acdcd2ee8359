//go:build !functions

package agent

import (
	"context"

	"github.com/outpost-edge/outpost/internal/fleet/proto"
)

func (f fleetApplier) applyFunction(context.Context, proto.Desired) error { return errNoFunctions }

func (f fleetApplier) removeFunction(context.Context, string) error { return nil }
