package netpol

// The XDP program is compiled by clang through bpf2go; the generated Go and
// the BPF object are committed so a normal `go build` needs no clang.
// scripts/bpf-generate.sh regenerates them and CI fails if they differ.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -no-strip -target bpfel -type rule -type gen_settings -type counter policy bpf/xdp_policy.c -- -I/usr/include/x86_64-linux-gnu -O2 -g -Wall
