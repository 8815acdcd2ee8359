// SPDX-License-Identifier: MIT

package mqtt

import (
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"
)

// TestClientStateOutboundLen: outpost patch 25.
func TestClientStateOutboundLen(t *testing.T) {
	cl, _, _ := newTestClient()
	require.Equal(t, 0, cl.State.OutboundLen())
	cl.State.outbound <- &packets.Packet{}
	cl.State.outbound <- &packets.Packet{}
	require.Equal(t, 2, cl.State.OutboundLen())
	<-cl.State.outbound
	require.Equal(t, 1, cl.State.OutboundLen())

	var zero ClientState
	require.Equal(t, 0, zero.OutboundLen())
}
