package rules

import "unsafe"

// bytesView returns a string sharing b's memory. The caller guarantees b is
// not modified while the string is in use (payloads are read-only).
func bytesView(b []byte) string {
	return unsafe.String(unsafe.SliceData(b), len(b))
}
