#!/usr/bin/env bash
# XDP drop rate vs nftables vs iptables on the same veth pair in one run
# (issue 15): a UDP flood from a client namespace to a gateway namespace,
# dropped by the agent's XDP program, by its nftables backend, and by a
# plain iptables DROP rule, one after the other; packets/s dropped (each
# rule's own counter), the generator's CPU time and the machine's busy
# CPU. The generator writes raw frames to the client veth (AF_PACKET,
# qdisc bypassed) so that it is cheaper per packet than the filters. Needs root; the
# namespaces are created here and deleted on exit.
#
# Usage: bench/netpol_drop.sh [DURATION per backend, default 5s, at most 60s] [LIST]
#   LIST: a block list of that many source networks (none matching the
#   flood) before the flood's rule, at most 10000 (eBPF keeps it as one LPM
#   trie; nftables and iptables evaluate it rule by rule).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
DUR=${1:-5s}
LIST=${2:-0}
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces, BPF)" >&2; exit 1; }
need iptables iptables
go build -o /tmp/outpost-netpoldrop ./bench/netpoldrop
id=$$
CL=npd-c$id GW=npd-g$id VC=npdc$id VG=npdg$id
trap 'ip netns del $CL 2>/dev/null; ip netns del $GW 2>/dev/null; rm -rf /sys/fs/bpf/outpost-netpoldrop' EXIT
ip netns add "$CL"
ip netns add "$GW"
ip link add "$VC" netns "$CL" type veth peer name "$VG" netns "$GW"
ip -n "$CL" addr add 10.214.0.1/24 dev "$VC"
ip -n "$GW" addr add 10.214.0.2/24 dev "$VG"
for x in "$CL $VC" "$GW $VG" "$CL lo" "$GW lo"; do set -- $x; ip -n "$1" link set "$2" up; done
MAC=$(ip -n "$GW" -o link show "$VG" | grep -o 'link/ether [0-9a-f:]*' | cut -d' ' -f2)
bench_lock
uptime
/tmp/outpost-netpoldrop -client-ns "$CL" -gw-ns "$GW" -iface "$VG" -dst 10.214.0.2:9999 -src 10.214.0.1 -client-iface "$VC" -dst-mac "$MAC" -duration "$DUR" -list "$LIST"
uptime
