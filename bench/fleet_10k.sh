#!/usr/bin/env bash
# Fleet scale benchmark (issue 12): one outpost-server process on SQLite
# (profiling on a loopback port) and `outpost-server sim` with N simulated
# gateways (real TLS, HTTP/2, agent-side syncer; another process, its
# connections spread over 127.0.0.2-5). The sim enrolls them, connects
# them, holds them idle for HOLD, then prints the server's RSS, CPU,
# memory per connected gateway and Go memory statistics, saves its heap
# profile, and times CHANGES desired-state changes to all (p50/p99/max).
# Usage: bench/fleet_10k.sh [N [HOLD [CHANGES]]]   (default 10000 30s 2)
# Environment: OUT=DIR keeps the heap profile and logs (default: a temp
# directory, printed); SERVER_GOGC sets the server's GOGC.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
N=${1:-10000}
HOLD=${2:-30s}
CHANGES=${3:-2}
bench_lock
tmp=$(mktemp -d)
OUT=${OUT:-$(mktemp -d /tmp/fleet-scale.XXXXXX)}
mkdir -p "$OUT"
spid=
trap '[ -n "$spid" ] && kill $spid 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
go build -o "$tmp/outpost-server" ./cmd/outpost-server
p=$(port)
pp=$(port)
ulimit -n 20000 2>/dev/null || true
GOGC=${SERVER_GOGC:-100} "$tmp/outpost-server" run --data "$tmp/data" --listen 127.0.0.1:$p --pprof 127.0.0.1:$pp --log-level warn >"$tmp/server.out" 2>"$OUT/server.log" &
spid=$!
wait_port "$p" "$spid" || { cat "$OUT/server.log"; exit 1; }
tok=$(sed -n 's/.*export OUTPOST_SERVER_TOKEN=//p' "$tmp/server.out")
export OUTPOST_SERVER_TOKEN="$tok" OUTPOST_SERVER=https://127.0.0.1:$p OUTPOST_SERVER_CA="$tmp/data/ca.pem"
echo "N=$N hold=$HOLD changes=$CHANGES server GOGC=${SERVER_GOGC:-100} load: $(cut -d' ' -f1-3 /proc/loadavg) commit $(git rev-parse --short HEAD)"
rc=0
timeout 25m "$tmp/outpost-server" sim --gateways "$N" --changes "$CHANGES" --idle "$HOLD" --dir "$tmp/sim" \
	--server-pid "$spid" --server-pprof 127.0.0.1:$pp --source-addrs 127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5 | tee "$OUT/sim.out" || rc=$?
cp "$tmp/sim/server-heap.pprof" "$OUT/" 2>/dev/null && cp "$tmp/outpost-server" "$OUT/outpost-server.bin" || true
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg); heap profile and logs in $OUT"
echo "  go tool pprof -top -sample_index=inuse_space $OUT/outpost-server.bin $OUT/server-heap.pprof"
exit $rc
