package kernel

// The egress programs (cgroup/connect4, connect6, sendmsg4, sendmsg6) are
// compiled by clang through bpf2go like the XDP program; see gen.go.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -target bpfel -type egress_allow -type egress_component -type egress_denied_key egress bpf/egress.c -- -I/usr/include/x86_64-linux-gnu -O2 -g -Wall
