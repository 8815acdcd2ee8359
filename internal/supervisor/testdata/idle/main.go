// Command idle is a tiny static component for benchmarks: it writes
// $OUTPOST_DATA_DIR/ready and sleeps until SIGTERM. "idle -check" exits 0
// when the ready file exists (the exec health check).
package main

import (
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
)

func main() {
	ready := filepath.Join(os.Getenv("OUTPOST_DATA_DIR"), "ready")
	if len(os.Args) > 1 && os.Args[1] == "-check" {
		if _, err := os.Stat(ready); err != nil {
			os.Exit(1)
		}
		return
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	_ = os.WriteFile(ready, nil, 0o644)
	<-term
	_ = os.Remove(ready)
}
