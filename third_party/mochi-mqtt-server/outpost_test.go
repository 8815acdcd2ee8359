// SPDX-License-Identifier: MIT

package mqtt

import (
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"
)

// TestClientStateOutboundLen: outpost patch 25. The state is built here,
// not with newTestClient, whose write loop drains the queue while the test
// counts it (1 instead of 2, seen once in a full CI run).
func TestClientStateOutboundLen(t *testing.T) {
	s := ClientState{outbound: make(chan *packets.Packet, 3)}
	require.Equal(t, 0, s.OutboundLen())
	s.outbound <- &packets.Packet{}
	s.outbound <- &packets.Packet{}
	require.Equal(t, 2, s.OutboundLen())
	<-s.outbound
	require.Equal(t, 1, s.OutboundLen())

	var zero ClientState
	require.Equal(t, 0, zero.OutboundLen())
}
