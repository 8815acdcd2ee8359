// Package prestack grows the main goroutine's stack to 16 KiB before the
// program's package initialisers run, so that they, and the agent's start on
// the same goroutine, need no stack growth.
//
// Go starts a goroutine on a 2 KiB stack and doubles it when a call needs
// more; each doubling walks every frame on the stack through the binary's
// unwind tables (pctab and the stack maps in pclntab). On the main goroutine
// those walks happened deep inside initialisers (gopkg.in/yaml.v3 compiling
// its regexps) and config decoding, three of them, reading about 1 MB of
// pclntab pages that then stayed resident for the agent's whole life
// (bench/startup.sh, docs/BENCHMARKS.md "Agent start and idle memory").
// Growing once here, with only runtime.main and this package's init on the
// stack, reads a few pages instead. The main goroutine reached 16 KiB anyway,
// so the stack itself costs nothing more; a GC shrinks it if it goes unused.
//
// It has no imports, so it is initialised among the first packages (Go
// initialises, in import-path order, each package whose imports are done);
// import it for its side effect from package main:
//
//	import _ "github.com/outpost-edge/outpost/internal/prestack"
package prestack

func init() { grow(0) }

// grow needs a 12 KiB frame: the runtime sizes the new stack to fit it,
// 16 KiB.
//
//go:noinline
func grow(i int) byte {
	var pad [12 << 10]byte
	return pad[i]
}
