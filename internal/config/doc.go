// Package config loads, validates and watches Outpost's single YAML config
// file.
//
// Decoding is strict: an unknown key is an error that names file:line:column
// and the key. Validation covers the whole file and reports every problem at
// once, each located at the line and column of the offending value. Secrets
// can come from the environment (OUTPOST_... overrides). The watcher reloads
// on change (debounced, robust to editors that rename-replace the file); an
// invalid change is rejected and the running config stays in force.
package config
