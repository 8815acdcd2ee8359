package broker

import (
	"context"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/message"
)

var (
	fuzzSeq    atomic.Int64
	fuzzOnce   sync.Once
	fuzzBroker *testBroker
)

// FuzzBrokerPackets feeds arbitrary bytes to a running broker over a real TCP
// connection, both as the first bytes of a connection and after a valid
// CONNECT. The broker must never crash and must keep serving other clients.
//
//	go test -run XXX -fuzz FuzzBrokerPackets ./internal/broker
func FuzzBrokerPackets(f *testing.F) {
	f.Add([]byte{0x30, 0xff, 0xff, 0xff, 0xff, 0x7f}, true)                         // bad remaining length
	f.Add(publishPacket("a/b", []byte("x")), true)                                  // valid publish
	f.Add(publishPacket("a/#", []byte("x")), true)                                  // wildcard in topic name
	f.Add([]byte{0x82, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00}, true)                   // subscribe, empty filter
	f.Add(connectPacket("x", "admin", "secret"), false)                             // a second CONNECT
	f.Add([]byte{0x10, 0x0c, 0, 4, 'M', 'Q', 'T', 'T', 5, 0xff, 0, 0, 0xff}, false) // v5 connect, bad props
	f.Add([]byte{0xe0, 0x02, 0x00, 0x80}, true)                                     // disconnect with reason
	f.Fuzz(func(t *testing.T, data []byte, afterConnect bool) {
		fuzzOnce.Do(func() {
			c := baseConfig(nil)
			c.Limits.MaxPacketSize = 64 << 10
			off := false
			c.Login.RateLimit = &off // mutated CONNECTs fail logins: keep the valid one admitted
			fuzzBroker = startSharedBroker(c)
		})
		conn, err := net.DialTimeout("tcp", fuzzBroker.addr, 2*time.Second)
		if err != nil {
			t.Fatalf("broker stopped accepting connections: %v", err)
		}
		defer conn.Close()
		if afterConnect {
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			conn.Write(connectPacket(fmt.Sprintf("fuzz-%d", fuzzSeq.Add(1)), "admin", "secret"))
			buf := make([]byte, 4)
			if _, err := conn.Read(buf); err != nil {
				t.Fatalf("valid CONNECT not answered: %v", err)
			}
		}
		conn.SetDeadline(time.Now().Add(200 * time.Millisecond))
		conn.Write(data)
		buf := make([]byte, 4096)
		for {
			if _, err := conn.Read(buf); err != nil {
				break
			}
		}
	})
}

// startSharedBroker starts a broker that lives for the whole fuzz process.
func startSharedBroker(c *Config) *testBroker {
	c.SetDefaults()
	tb := &testBroker{got: make(chan *message.Message, 1)}
	tb.Broker = New(Options{DataDir: mustTempDir()})
	ctx := context.Background()
	if err := tb.Init(ctx, c); err != nil {
		panic(err)
	}
	if err := tb.Start(ctx); err != nil {
		panic(err)
	}
	tb.addr = tb.Addr(c.Listeners[0].Name)
	return tb
}

func mustTempDir() string {
	d, err := os.MkdirTemp("", "outpost-fuzz")
	if err != nil {
		panic(err)
	}
	return d
}
