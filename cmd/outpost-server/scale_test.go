package main

import (
	"flag"
	"io"
	"strings"
	"testing"
)

// The profiling listener takes only loopback addresses (its endpoints have
// no authentication), and the sim's --source-addrs names a bad item.
func TestPprofLoopbackOnly(t *testing.T) {
	for _, ok := range []string{"127.0.0.1:6060", "[::1]:6060", "localhost:6060", "127.0.0.5:1"} {
		if err := loopbackAddr(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"0.0.0.0:6060", ":6060", "10.0.0.1:6060", "6060", "example.com:6060"} {
		if err := loopbackAddr(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
	if code := runServer(t.Context(), []string{"--data", t.TempDir(), "--pprof", "0.0.0.0:6060"}); code != exitUsage {
		t.Errorf("run --pprof 0.0.0.0:6060: exit %d, want %d", code, exitUsage)
	}
	var x simExtra
	fs := flag.NewFlagSet("sim", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	x.register(fs)
	if err := fs.Parse([]string{"--source-addrs", "127.0.0.2, 127.0.0.3,nope"}); err != nil {
		t.Fatal(err)
	}
	if err := x.check(); err == nil || !strings.Contains(err.Error(), `item 3 "nope"`) {
		t.Fatalf("bad --source-addrs: %v", err)
	}
	x = simExtra{sourceAddrs: "127.0.0.2,127.0.0.3"}
	if err := x.check(); err != nil || x.sourceAddr(0) != "127.0.0.2" || x.sourceAddr(3) != "127.0.0.3" {
		t.Fatalf("source addresses: %v %v", err, x.addrs)
	}
}
