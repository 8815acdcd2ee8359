//go:build !wasip1

package outpostfn

import (
	"errors"
	"time"
)

// Outside WebAssembly (go vet, go test of a function's own logic on the
// host) handlers register as usual and the host calls report
// ErrNotWasm.

// ErrNotWasm is returned by host calls when not built for GOOS=wasip1.
var ErrNotWasm = errors.New("outpostfn: not running as a WebAssembly function")

// Emit reports ErrNotWasm outside WebAssembly.
func Emit(string, []byte) error { return ErrNotWasm }

// Publish reports ErrNotWasm outside WebAssembly.
func Publish(string, []byte, int) error { return ErrNotWasm }

// StateGet finds nothing outside WebAssembly.
func StateGet(string) ([]byte, bool) { return nil, false }

// StatePut reports ErrNotWasm outside WebAssembly.
func StatePut(string, []byte) error { return ErrNotWasm }

// Config finds nothing outside WebAssembly.
func Config(string) (string, bool) { return "", false }

// Log does nothing outside WebAssembly.
func Log(Level, string) {}

// Now is the local clock outside WebAssembly.
func Now() time.Time { return time.Now() }
