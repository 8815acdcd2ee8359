// SPDX-License-Identifier: MIT

package listeners

import (
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// waitListening polls until something accepts TCP connections on addr (a
// listener whose Serve binds the socket in its goroutine), or fails the test
// after a deadline.
func waitListening(t *testing.T, addr string) {
	t.Helper()
	require.Eventually(t, func() bool {
		c, err := net.DialTimeout("tcp", "localhost"+addr, 100*time.Millisecond)
		if err != nil {
			return false
		}
		_ = c.Close()
		return true
	}, 5*time.Second, time.Millisecond)
}
