// Package netpol is the model of the gateway's network policy (config,
// validation, and Decide, the first-match evaluation `outpost netpol test`
// uses); package netpol/kernel enforces it. The policy: ordered allow/deny rules
// on named interfaces (source and destination CIDR, protocol, port ranges,
// a default action) and a per-source packet rate limit on chosen
// destination ports, so that one flooding device cannot starve the others.
//
// Two backends in netpol/kernel enforce the same policy:
//
//   - ebpf: an XDP program (bpf/xdp_policy.c) attached to each interface,
//     with per-rule packet and byte counters in BPF maps;
//   - nftables: a netdev-family table with an ingress chain per interface,
//     used where BPF programs cannot be attached (old kernel, no CAP_BPF,
//     a container), with the same first-match semantics and counters.
//
// Invariants:
//
//   - An update is atomic: the ebpf backend fills the inactive generation of
//     its maps and flips one index; the nftables backend replaces the
//     chain's rules in one netlink transaction. No packet is ever checked
//     against half a policy or against none.
//   - A policy is validated as a whole before anything is applied; an
//     invalid one changes nothing (the running policy stays).
//   - Decide (the `outpost netpol test` path) evaluates a packet with the
//     same first-match logic the kernel programs implement.
//
// IPv4 and IPv6 are filtered by the same ordered rules: a rule's addresses
// (or an icmp/icmpv6 proto) make it a rule of one family, a rule naming
// neither applies to both, and a packet only meets the rules it can match.
// ARP, other non-IP frames and IPv6 neighbour discovery and MLD always
// pass (the link must work); an IPv6 packet with an IPv4-mapped address is
// malformed and dropped.
package netpol
