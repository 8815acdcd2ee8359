// SPDX-License-Identifier: MIT

package listeners

import (
	"net"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestWsConnNetConn: outpost patch 26.
func TestWsConnNetConn(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	var c net.Conn = &wsConn{Conn: a}
	nc, ok := c.(interface{ NetConn() net.Conn })
	require.True(t, ok)
	require.Same(t, a, nc.NetConn())
}
