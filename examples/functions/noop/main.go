// Command noop is the smallest Go function: it returns its first argument
// and ignores messages. The benchmarks use it to measure what a standard-Go
// guest costs per call before any work (docs/BENCHMARKS.md, Functions).
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o noop.wasm .
package main

import "github.com/outpost-edge/outpost/sdk/go/outpostfn"

func main() {}

func init() {
	outpostfn.OnCall(func(c *outpostfn.Call) (outpostfn.Value, error) {
		if len(c.Args) == 0 {
			return outpostfn.Null(), nil
		}
		return c.Args[0], nil
	})
	outpostfn.OnMessage(func(*outpostfn.Message) error { return nil })
}
