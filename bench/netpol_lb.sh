#!/usr/bin/env bash
# L4 load balancing: connections/s and requests/s through the eBPF load
# balancer (socket: cgroup/connect4; tc: TC DNAT/SNAT for a remote client)
# against HAProxy 2.6 (mode tcp, roundrobin), same client, same 3
# backends, same network namespaces, in one run, interleaved with HAProxy,
# best of two runs each (8 workers; 16 runs of SECONDS_PER_RUN).
#   bench/netpol_lb.sh               # SECONDS_PER_RUN=3 (~60 s)
# Needs root (namespaces, BPF, a cgroup v2) and haproxy
# (apt-get install haproxy; installed here if missing and root).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${SECONDS_PER_RUN:-3}
. bench/lib.sh
bench_lock
need haproxy haproxy
OUTPOST_LB_BENCH=1 OUTPOST_LB_BENCH_SECONDS="$SECONDS_PER_RUN" \
  go test -count=1 -timeout 300s -run '^TestLBBenchVsHAProxy$' -v ./internal/netpol/kernel/ |
  grep -E '^(LB bench|connections/s|requests/s)|FAIL|haproxy is not'
