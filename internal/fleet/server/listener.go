package server

import (
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"time"
)

// handshakeListener completes each TLS handshake in a goroutine of its own
// before net/http sees the connection. The handshake (certificate
// verification, key exchange) is the deepest call a connection makes; done
// inside net/http's per-connection goroutine, it grows that goroutine's
// stack, which then lives as long as the connection (a gateway's, for
// days) and only shrinks over several garbage collections. Here the
// handshake's stack goes away with its goroutine, and a client that never
// completes its handshake does not hold up Accept.
type handshakeListener struct {
	net.Listener
	cfg     *tls.Config
	timeout time.Duration
	conns   chan net.Conn
	errc    chan error
	done    chan struct{}
	once    sync.Once
}

func newHandshakeListener(ln net.Listener, cfg *tls.Config, timeout time.Duration) *handshakeListener {
	l := &handshakeListener{Listener: ln, cfg: cfg, timeout: timeout, conns: make(chan net.Conn), errc: make(chan error, 1), done: make(chan struct{})}
	go l.acceptLoop()
	return l
}

func (l *handshakeListener) acceptLoop() {
	var delay time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) { // EMFILE and the like: back off (as net/http does)
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				select {
				case <-time.After(delay):
					continue
				case <-l.done:
					return
				}
			}
			select {
			case l.errc <- err:
			case <-l.done:
			}
			return
		}
		delay = 0
		go l.handshake(c)
	}
}

func (l *handshakeListener) handshake(c net.Conn) {
	tc := tls.Server(c, l.cfg)
	c.SetDeadline(time.Now().Add(l.timeout))
	err := tc.Handshake()
	if err == nil {
		err = c.SetDeadline(time.Time{})
	}
	if err != nil {
		c.Close()
		return
	}
	select {
	case l.conns <- tc:
	case <-l.done:
		tc.Close()
	}
}

// Accept returns the next connection whose handshake completed.
func (l *handshakeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case err := <-l.errc:
		return nil, err
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *handshakeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}
