package main

import (
	"fmt"
	"os"
	"sort"
	"text/tabwriter"

	"github.com/outpost-edge/outpost/internal/netpol"
)

// printLB prints the load balancers of `outpost netpol status`.
func printLB(st netpol.Status) {
	if len(st.LoadBalancers) == 0 {
		return
	}
	names := make([]string, 0, len(st.LoadBalancers))
	for n := range st.LoadBalancers {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Println("load balancers:")
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	for _, n := range names {
		s := st.LoadBalancers[n]
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\trefused (no backend) %d\n", n, s.VIP, s.Algorithm, s.Backend, s.NoBackend)
		for _, b := range s.Backends {
			state := "up"
			if !b.Healthy {
				state = "down"
			}
			who := b.Address
			if b.Component != "" {
				who += " (" + b.Component + ")"
			}
			line := fmt.Sprintf("  %s\t%s\t%d connections", who, state, b.Connections)
			if b.LastError != "" {
				line += "\t" + b.LastError
			}
			fmt.Fprintln(tw, line)
		}
	}
	tw.Flush()
}
