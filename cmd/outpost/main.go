// Command outpost is the Outpost gateway agent.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "outpost: under construction")
	os.Exit(1)
}
