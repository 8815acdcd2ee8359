// Package delta makes and applies binary patches between two versions of
// the outpost executable.
//
// The format is bsdiff 4 (Colin Percival's algorithm: suffix-sort the old
// file, extend approximate matches, store byte-wise differences, which
// compress very well when code moves by a constant offset) with the three
// streams (control, diff, extra) compressed by zstd instead of bzip2:
//
//	offset 0   "OPBSDZ01"
//	offset 8   new file size       uint64 little-endian
//	offset 16  control stream size uint64 (compressed)
//	offset 24  diff stream size    uint64 (compressed)
//	offset 32  zstd(control) zstd(diff) zstd(extra)
//
// control holds triples of signed varints (add length, extra length, old
// seek). The diff stream, mostly zeros, is stored as runs: uvarint zero
// count, uvarint literal count, literal bytes (25% smaller after zstd). The choice of bsdiff over zstd with the old binary as dictionary
// ("patch-from") was made by measurement on real outpost binaries; see
// docs/BENCHMARKS.md (## OTA) and TestMeasure.
//
// Patch streams: it reads the old file through io.ReaderAt and decodes the
// streams incrementally, so applying a patch to a 15 MB binary costs a few
// MiB of memory. Diff holds everything in memory (about 10× the old size)
// and is meant for the publisher.
//
// Patches are not authenticated here: the caller verifies the patch against
// signed metadata before Patch and the result's hash after it.
package delta
