package broker

import (
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Connections before CONNECT. mochi reads a new connection's first packet
// without a deadline and counts a client only once it has authenticated, so
// sockets that never send CONNECT were kept forever and not counted by
// max_connections (300 of them pinned 73 MiB). Every listener is wrapped so
// that a new connection
//
//   - is refused (closed at once, counted as a max_connections refusal) when
//     connected plus pending connections already reach max_connections
//     (except that one pending connection is always read, so that a client
//     refused because connected clients fill the limit gets CONNACK 0x89);
//   - must send its CONNECT, and be authenticated, within
//     limits.connect_timeout (its TLS handshake included): a deadline set at
//     accept, replaced by mochi's keepalive deadline once connected;
//   - counts as pending (outpost_broker_connections_pending) until its login
//     is decided; one closed by the timeout is counted as
//     outpost_broker_disconnects_total{reason="connect_timeout"}.

// connGuard tracks pending connections; it outlives broker restarts.
type connGuard struct {
	b       *Broker
	pending atomic.Int64
	conns   sync.Map // net.Conn -> struct{} while pending
}

// guardedListener wraps a mochi listener's establish function.
type guardedListener struct {
	listeners.Listener
	g *connGuard
}

func (l *guardedListener) Serve(establish listeners.EstablishFn) {
	l.Listener.Serve(func(id string, c net.Conn) error { return l.g.establish(id, c, establish) })
}

func (g *connGuard) establish(id string, c net.Conn, next listeners.EstablishFn) error {
	b := g.b
	cfg := b.conf.Load()
	timeout := 10 * time.Second
	if cfg != nil {
		timeout = cfg.Limits.ConnectTimeout.D()
		// At the limit, one pending connection at a time is still read, so
		// that a client refused for max_connections gets CONNACK 0x89.
		if srv, pending := b.server(), g.pending.Load(); srv != nil && pending > 0 &&
			atomic.LoadInt64(&srv.Info.ClientsConnected)+pending >= int64(cfg.Limits.MaxConnections) {
			b.m.limitRefused("max_connections").Inc()
			if b.logOnce.first("maxconn") {
				b.log.Warn("broker: max_connections reached, refusing new clients",
					"max_connections", cfg.Limits.MaxConnections, "pending", g.pending.Load())
			}
			_ = c.Close()
			return packets.ErrServerBusy
		}
	}
	g.pending.Add(1)
	g.conns.Store(c, struct{}{})
	_ = c.SetDeadline(time.Now().Add(timeout))
	err := next(id, c)
	b.admitted.Delete(c) // in case a later OnConnect hook refused an admitted client
	if g.decided(c) && isTimeout(err) {
		b.m.disconnect("connect_timeout").Inc()
	}
	return err
}

// decided ends c's pending state (its login was decided, or it closed);
// it reports whether c was still pending.
func (g *connGuard) decided(c net.Conn) bool {
	if _, ok := g.conns.LoadAndDelete(c); ok {
		g.pending.Add(-1)
		return true
	}
	return false
}

func isTimeout(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
