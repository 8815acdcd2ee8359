// Package kernel enforces a netpol policy in the kernel: the XDP program
// (eBPF) where BPF programs can be attached, else an nftables netdev
// ingress chain; see package netpol for the model and the invariants both
// keep. It is linked into the agent only with -tags netpol: cilium/ebpf
// and nftables add 1.7 MiB to the binary and about 1 MB to the idle RSS
// of an agent that does not use them.
package kernel

// The XDP program is compiled by clang through bpf2go; the generated Go and
// the BPF object are committed so a normal `go build` needs no clang.
// scripts/bpf-generate.sh regenerates them and CI fails if they differ.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -target bpfel -type rule -type rule6 -type gen_settings -type counter -type trie4_key -type trie6_key -type trie_val policy bpf/xdp_policy.c -- -I/usr/include/x86_64-linux-gnu -O2 -g -Wall

// The L4 load balancer's socket programs (lb.go).
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -target bpfel -type lb_key -type lb_svc -type lb_backend -type lb_ct lb bpf/lb.c -- -I/usr/include/x86_64-linux-gnu -O2 -g -Wall
