package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"text/tabwriter"

	"github.com/outpost-edge/outpost/internal/agent"
	"github.com/outpost-edge/outpost/internal/netpol"
)

func init() {
	register(&command{name: "netpol", summary: "network policy: status, counters, and which rule a packet would hit", run: runNetpol})
}

func runNetpol(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("netpol", flag.ContinueOnError)
	apiF := addAPIFlags(fs) // --config is also the file "test" evaluates
	asJSON := fs.Bool("json", false, "print JSON")
	iface := fs.String("iface", "", "test: interface (default: the only one in the config)")
	src := fs.String("src", "", "test: source address (IPv4 or IPv6)")
	dst := fs.String("dst", "", "test: destination address, of the source's family (default: 0.0.0.0 or ::)")
	proto := fs.String("proto", "tcp", "test: tcp, udp, icmp or icmpv6")
	sport := fs.Uint("sport", 40000, "test: source port")
	dport := fs.Uint("dport", 0, "test: destination port")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), helpText("outpost netpol [flags] status|counters|test",
			`"status" shows which backend enforces the policy (ebpf or nftables, and why
eBPF was not used), "counters" the packets and bytes each rule matched, both
from the running agent's API (/api/v1/netpol). "test" evaluates one packet
against the netpol section of a config file, offline, with the same
first-match logic the kernel programs run, and prints the rule it hits.`,
			"outpost netpol status",
			"outpost netpol counters --json",
			"outpost netpol test --config /etc/outpost/outpost.yaml --src 10.1.2.3 --dport 1883",
			"outpost netpol test --iface eth1 --src 192.168.7.20 --proto udp --dport 502",
			"outpost netpol test --iface eth1 --src fd00:20::7 --dst fd00:20::1 --dport 8883"))
		fs.PrintDefaults()
	}
	var pos []string
	rest := args
	for {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return exitOK
			}
			return exitUsage
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if len(pos) != 1 {
		fs.Usage()
		return exitUsage
	}
	switch pos[0] {
	case "status", "counters":
		c, err := apiF.client()
		if err != nil {
			fmt.Fprintln(os.Stderr, "outpost netpol:", err)
			return exitUsage
		}
		var st netpol.Status
		if err := c.call(ctx, "GET", "/api/v1/netpol", &st); err != nil {
			fmt.Fprintln(os.Stderr, "outpost netpol:", err)
			return exitCode(err)
		}
		if *asJSON {
			return printJSON(st)
		}
		printNetpol(st, pos[0] == "counters")
		return exitOK
	case "test":
		return netpolTest(apiF.config, *iface, *src, *dst, *proto, *sport, *dport)
	}
	fs.Usage()
	return exitUsage
}

func printNetpol(st netpol.Status, counters bool) {
	fmt.Printf("backend: %s\n", orDash(st.Backend))
	if st.Fallback != "" {
		fmt.Printf("eBPF not used: %s\n", st.Fallback)
	}
	if st.Error != "" {
		fmt.Printf("error: %s\n", st.Error)
	}
	names := make([]string, 0, len(st.Interfaces))
	for n := range st.Interfaces {
		names = append(names, n)
	}
	sort.Strings(names)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	for _, n := range names {
		s := st.Interfaces[n]
		if !counters {
			fmt.Fprintf(tw, "%s\t%d rules\trate limited %d\n", n, len(s.Rules)-1, s.Global["rate_limited"].Packets)
			continue
		}
		rules := make([]string, 0, len(s.Rules))
		for r := range s.Rules {
			rules = append(rules, r)
		}
		sort.Strings(rules)
		for _, r := range rules {
			fmt.Fprintf(tw, "%s\t%s\t%d packets\t%d bytes\n", n, r, s.Rules[r].Packets, s.Rules[r].Bytes)
		}
		for _, g := range netpol.GlobalKinds {
			fmt.Fprintf(tw, "%s\t(%s)\t%d packets\t%d bytes\n", n, g, s.Global[g].Packets, s.Global[g].Bytes)
		}
	}
	tw.Flush()
	printEgress(st.Egress)
	printLB(st)
}

// printEgress shows each component's egress counters and, per refused
// destination, how often it was refused.
func printEgress(eg map[string]netpol.EgressStatus) {
	if len(eg) == 0 {
		return
	}
	comps := make([]string, 0, len(eg))
	for c := range eg {
		comps = append(comps, c)
	}
	sort.Strings(comps)
	fmt.Println("egress:")
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	for _, c := range comps {
		e := eg[c]
		fmt.Fprintf(tw, "  %s\tallowed %d\trefused %d\n", c, e.Allowed, e.Denied)
		dests := make([]string, 0, len(e.Destinations))
		for d := range e.Destinations {
			dests = append(dests, d)
		}
		sort.Strings(dests)
		for _, d := range dests {
			fmt.Fprintf(tw, "  %s\trefused %s\t%d\n", c, d, e.Destinations[d])
		}
	}
	tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func netpolTest(cfgPath, iface, src, dst, proto string, sport, dport uint) int {
	cfg, err := agent.Load(cfgPath)
	if err != nil {
		printConfigError(err)
		return exitUsage
	}
	if cfg.Netpol == nil || len(cfg.Netpol.Interfaces) == 0 {
		fmt.Fprintf(os.Stderr, "outpost netpol: %s has no netpol interfaces\n", cfgPath)
		return exitUsage
	}
	var itf *netpol.Interface
	for i := range cfg.Netpol.Interfaces {
		if cfg.Netpol.Interfaces[i].Name == iface || (iface == "" && len(cfg.Netpol.Interfaces) == 1) {
			itf = &cfg.Netpol.Interfaces[i]
		}
	}
	if itf == nil {
		fmt.Fprintf(os.Stderr, "outpost netpol: no interface %q in %s (use --iface)\n", iface, cfgPath)
		return exitUsage
	}
	s, err1 := netip.ParseAddr(src)
	d := netip.IPv4Unspecified()
	if s.Is6() {
		d = netip.IPv6Unspecified()
	}
	var err2 error
	if dst != "" {
		d, err2 = netip.ParseAddr(dst)
	}
	p, err3 := netpol.ParseProto(proto)
	if err1 == nil && err2 == nil && s.Is4() != d.Is4() {
		err2 = fmt.Errorf("--src %s and --dst %s: one is IPv4, the other IPv6", s, d)
	}
	if sport > 65535 || dport > 65535 {
		err3 = errors.Join(err3, fmt.Errorf("ports are 0-65535"))
	}
	if err := errors.Join(err1, err2, err3); err != nil {
		fmt.Fprintf(os.Stderr, "outpost netpol: bad packet: %v (need --src and --dst of one family, --proto, ports 0-65535)\n", err)
		return exitUsage
	}
	dec, err := netpol.Decide(*itf, netpol.Packet{Src: s, Dst: d, Proto: p, SPort: uint16(sport), DPort: uint16(dport)})
	if err != nil {
		fmt.Fprintln(os.Stderr, "outpost netpol:", err)
		return exitFailure
	}
	verdict := "deny"
	if dec.Allow {
		verdict = "allow"
	}
	if dec.Index >= 0 {
		fmt.Printf("%s: rule %q (#%d) on %s\n", verdict, dec.Rule, dec.Index, itf.Name)
	} else {
		fmt.Printf("%s: no rule matches; the default action of %s\n", verdict, itf.Name)
	}
	return exitOK
}
