// Package examples holds the configuration files users copy. They are
// embedded in the outpost binary (`outpost init`, `outpost demo`) and every
// one of them is loaded and validated by the test suite, so they never rot.
package examples

import "embed"

// Files are the example configs (outpost.yaml, demo.yaml, ...).
//
//go:embed *.yaml rules/*.sql demo-rules/*.sql demo-rules/*.sql
var Files embed.FS

// Read returns an embedded example by name.
func Read(name string) ([]byte, error) { return Files.ReadFile(name) }
